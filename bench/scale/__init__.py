"""Real-scale readiness: both phases of ``training.distill`` on every family the trainer distils, at
full size: SD1.5, SDXL, PixArt-Sigma, SD3.5 Medium and FLUX.1-dev.

``python -m bench.scale`` builds each family at full size from its config with random weights
(SD1.5 UNet at 512 px, SDXL UNet and the PixArt-Sigma XL-2, SD3.5 Medium and FLUX.1-dev transformers
at 1024 px; text encoders at real size where they fit, T5-XXL replaced by a one-layer stand-in of its
width that gives embeddings of the real shape), saves it as a diffusers folder in a temporary
directory, and runs ``training.distill.run`` on it: phase 1 (a short teacher trajectory per
prompt), phase 2 (a few LoRA steps of the family's recipe) and the export. Every memory option is a
separate run (``--variants``): the frozen base in fp32 or bf16, or quantized to nf4 / int8 for the
flow families (``--base-precision``), gradient checkpointing, bitsandbytes' 8-bit AdamW (``--optimizer
adamw8bit``). Each run is its own subprocess, so its peak RSS is its own; a watchdog stops a run
above ``--max-rss-gib`` and records that instead of a number. A model too large for this machine
(FLUX.1-dev, 12 B parameters) is measured at full width with fewer blocks at two depths
(``--blocks``) and extrapolated to its full depth, labelled as such. A LoRA with the full-size model's
keys is then loaded in diffusers and mapped with ComfyUI's ``comfy.lora.model_lora_keys_unet`` (a
ComfyUI source through ``--comfyui``), both on the denoiser built without weights, and the matched /
total modules are recorded.

Results go to ``--out`` (default ``docs/results/scale_cpu.json``) after every run, so an
interrupted benchmark keeps what it measured. ``--tiny`` runs the same code path on the tiny
models of ``training/tiny.py`` in seconds (the tests use it).

No GPU needed for the GPU columns' estimates: ``--flops`` counts each family's FLOPs (a teacher
step with guidance, a phase-2 step with the LoRA, forward and backward) and the memory a phase-2
step holds, on the meta device through the trainer's own code, and turns them into hours of the
default recipe on named GPUs at a stated utilisation (``docs/results/scale_flops.json``). Where a
GPU is at hand, ``--gpu-measure`` times the same steps on it (``docs/results/scale_gpu.json``).
``--table FILE [FILE ...]`` prints the README's tables from the results files.

The modules, each importing only those above it in this list:

* ``recipe``: the default recipe and the memory options;
* ``flow_builds``: what is built for the flow families (SD3.5 Medium, FLUX.1-dev);
* ``families``: the registry of model families and how each is built;
* ``cost``: hours of the default recipe from measured speeds, and on named GPUs from counted FLOPs;
* ``depth``: a family measured with fewer blocks, extrapolated to its full depth;
* ``runs``: one measured run in this process (``training.distill.run`` timed, an untrained LoRA);
* ``keys``: the key match of an exported LoRA in diffusers and in ComfyUI;
* ``watchdog``: a measurement in its own subprocess under a memory and time limit; the machine;
* ``child``: the entry point of that subprocess (``python -m bench.scale.child``);
* ``count``: FLOPs and memory counted on the meta device;
* ``gpu``: the same steps timed on a GPU;
* ``harness``: one family's CPU benchmark, run from the parent process;
* ``table``: the README's tables;
* ``cli``: the command line (``__main__`` runs it).
"""
