"""The proxy benchmark's variants: each changes one thing of the proxy recipe, and how one is trained.

The recipe every RayFlow variant shares is the proxy family's (``proxy.recipe``: VP, the demo's: sigma
0.1, truncated-SNR loss weighting, the Time Sampler, the default LoRA targets, rank 16, lr 1e-3, batch
32; ``FLOW``: the same phase 2 on the flow teacher, through the SD3 family's code path). A variant is a
dict of ``DistillConfig`` options on top of it; ``lcm`` is the LCM-LoRA baseline trained on the same
phase-1 cache, LoRA shape and budget (``bench/lcm_baseline.py``; on the flow teacher its flow-ODE form,
``bench/lcm_flow.py``).
"""

from __future__ import annotations

import os

from rayflow import RayProcess
from training.config import ATTENTION_TARGETS, PRESETS, DistillConfig
from training.distill import run

from proxy.recipe import PHASE2, RESOLUTION, TEACHER_CFG, VP, ProxyRecipe
from proxy.sampling import rayflow_samples

from .lcm_baseline import distil_lcm, lcm_samples
from .lcm_flow import distil_lcm_flow, flow_lcm_samples

VARIANTS = {              # each changes one thing of the proxy recipe (proxy.recipe.PHASE2, Time Sampler on)
    "ray": dict(),
    "no_ts": dict(no_time_sampler=True),
    "no_ray": dict(no_ray=True),
    "sigma0.03": dict(sigma=0.03),
    "sigma0.3": dict(sigma=0.3),
    "sigma0.5": dict(sigma=0.5),
    "linear": dict(ray_path="linear"),
    "eps_loss": dict(loss_weighting="eps"),
    # LoRA on the attention and feed-forward projections only (no convolutions)
    "attn_lora": dict(lora_targets=",".join(ATTENTION_TARGETS)),
    # the top of the Ray process centred on the seeded start (docs/method.md eq. 7.3), over the top 10 % / 50 %
    "anchor0.1": dict(start_anchor=0.1),
    "anchor0.5": dict(start_anchor=0.5),
    # four times the LoRA rank (64 instead of 16, alpha scaled with it: the same initial update scale)
    "rank64": dict(lora_rank=64, lora_alpha=64.0),
    # eq. 7.4: start anchoring with the Ray noise tapered to the exact start point at T - 1; and half (three
    # quarters) of every batch at T - 1, the one-step sampler's timestep
    "taper_anchor0.5": dict(start_anchor=0.5, anchor_taper=True),
    "top50": dict(top_share=0.5),
    "top75": dict(top_share=0.75),
    # the Time Sampler's weak points: a gradient-norm target, half the proposal uniform,
    # 300 uniform warm-up steps, the biased objective (sampled timesteps at weight 1), one density for all
    "ts_grad": dict(time_sampler_target="grad"),
    "ts_mix50": dict(time_sampler_uniform=0.5),
    "ts_warmup": dict(time_sampler_warmup=300),
    "ts_biased": dict(time_sampler_biased=True),
    "ts_static": dict(time_sampler_input="none"),
    # the one-step preset of training.distill (--preset one-step), as the CLI applies it
    "one_step": {k: v for k, v in PRESETS["one-step"].items() if k != "recommended_steps"},
    # the learning-rate sweep of the fair benchmark: every arm at 3e-4 besides the recipe's 1e-3
    "ray_lr3e-4": dict(learning_rate=3e-4),
}
# the LCM-LoRA baseline (bench/lcm_baseline.py) on the same cache: the published recipe (LCM_RECIPE: lr 1e-4)
# and the sweep of its learning rate, and the LCM paper's EMA target (0.95) measured once
# (and below it: at 1e-4 every seed's 8-step FD is lowest at the 300-step snapshot and rises after, with the EMA
# target too on seed 0, and at 3e-5 after 600 steps on seed 0: the L2 loss trades the low noise levels for the
# top one, bench/lcm_diagnosis.py; docs/experiments.md)
LCM_VARIANTS = {"lcm": dict(), "lcm_lr3e-4": dict(learning_rate=3e-4), "lcm_lr1e-3": dict(learning_rate=1e-3),
                "lcm_lr3e-5": dict(learning_rate=3e-5), "lcm_lr1e-5": dict(learning_rate=1e-5),
                "lcm_ema": dict(ema_target=0.95),
                # the loss and LoRA rank of diffusers' README examples of LCM-LoRA (pseudo-Huber; rank 64)
                "lcm_huber": dict(loss="huber"), "lcm_rank64": dict(lora_rank=64, lora_alpha=64.0),
                # the pseudo-Huber loss stops the rise (seed 0, docs/experiments.md): its learning rate swept too
                "lcm_huber_lr3e-4": dict(loss="huber", learning_rate=3e-4),
                "lcm_huber_lr1e-3": dict(loss="huber", learning_rate=1e-3)}
COMBINED = {"rank64_anchor0.5": ("rank64", "anchor0.5"),      # variants that combine two of the above
            "top50_taper_anchor0.5": ("top50", "taper_anchor0.5"),
            "top75_taper_anchor0.5": ("top75", "taper_anchor0.5"),
            # the one-step preset with uniform timesteps: the Time Sampler's share in the one-step claim
            "one_step_no_ts": ("one_step", "no_ts"),
            "no_ray_lr3e-4": ("no_ray", "ray_lr3e-4"), "anchor0.5_lr3e-4": ("anchor0.5", "ray_lr3e-4")}
VARIANTS.update({name: {k: v for part in parts for k, v in VARIANTS[part].items()} for name, parts in COMBINED.items()})
ALL_VARIANTS = (*VARIANTS, *LCM_VARIANTS)
# the learning rates swept per arm (the fair benchmark: every arm tuned with the same care, on held-out noise);
# LCM's candidates are both published losses (L2, pseudo-Huber) at each of their learning rates
LR_SWEEP = {"ray": ("ray", "ray_lr3e-4"), "no_ray": ("no_ray", "no_ray_lr3e-4"),
            "anchor0.5": ("anchor0.5", "anchor0.5_lr3e-4"),
            "lcm": ("lcm_lr1e-5", "lcm_lr3e-5", "lcm", "lcm_lr3e-4", "lcm_lr1e-3",
                    "lcm_huber", "lcm_huber_lr3e-4", "lcm_huber_lr1e-3")}
MULTISEED_VARIANTS = ("ray", "no_ts", "no_ray", "lcm")      # the --seeds default: the recipe and its baselines
SNAPSHOT_EVERY = 300        # every job also saves its LoRA every SNAPSHOT_EVERY steps: FD vs training steps
# how the benchmark's phase-2 step runs (recorded in every job's record): torch.compile, 1.15-1.2x faster
# than eager on the 2-core CPU (docs/benchmarks.md, "Proxy step time")
PROXY_STEP = "torch.compile (inductor), fp32"
EAGER_STEP = "eager, fp32"  # bench.quality --no-compile (the LCM-LoRA trainer is eager either way)
SAVE_PRECISION = "fp16"     # the jobs' LoRA files (evaluated as saved, and archived: 1.1 MB each)


def is_lcm(variant: str) -> bool:
    """Whether ``variant`` is an LCM-LoRA baseline (trained by ``bench/lcm_baseline.py``)."""
    return variant in LCM_VARIANTS


def lcm_methods(recipe: ProxyRecipe):
    """The LCM-LoRA trainer and sampler of the proxy family ``recipe``: the published epsilon recipe
    (``bench/lcm_baseline.py``), or its flow-ODE form (``bench/lcm_flow.py``, docs/method.md eq. 10.10)."""
    return (distil_lcm, lcm_samples) if recipe.name == "vp" else (distil_lcm_flow, flow_lcm_samples)


def config_of(variant: str, recipe: ProxyRecipe = VP):
    """The variant's ``DistillConfig`` (no files named): what its LoRA is trained with."""
    return recipe.config("", "", "", **VARIANTS[variant])


def process_of(variant: str, recipe: ProxyRecipe = VP) -> RayProcess:
    """The process the variant's LoRA is trained with, and sampled with."""
    return config_of(variant, recipe).training_process()


def distil(variant: str, out: str, teacher: str, prompts: str, train_steps: int, seeds: int, seed: int,
           train_seed: int = -1, cache: str = "", save_every: int = -1, recipe: ProxyRecipe = VP,
           device="cpu", compile: bool = True) -> str:
    """Train ``variant`` of the proxy family ``recipe`` (its teacher at ``teacher``) into
    ``<out>/lora_<variant>.safetensors`` (reused when it exists) and return its path. ``seed`` makes the
    phase-1 data, ``train_seed`` phase 2 (-1: ``seed``); ``cache`` is a phase-1 cache to share (default:
    the ``ray`` variant's in ``out``); ``save_every`` the snapshot interval (-1: ``SNAPSHOT_EVERY``).
    ``device`` is the LCM-LoRA trainer's (``training.distill`` trains where accelerate puts it, which
    ``bench.device.choose`` keeps the same); ``compile`` runs the RayFlow step through torch.compile."""
    path = os.path.join(out, f"lora_{variant}.safetensors")
    if os.path.isfile(path):
        return path
    shared = cache or os.path.join(out, "work_ray", "cache")
    if save_every < 0:
        save_every = SNAPSHOT_EVERY
    if is_lcm(variant):
        if not os.path.isdir(shared):
            raise SystemExit("the lcm variants train on the phase-1 cache of the ray variant: list ray before them")
        train_lcm = lcm_methods(recipe)[0]
        return train_lcm(teacher, shared, path, train_steps=train_steps, cfg_scale=TEACHER_CFG,
                         seed=seed if train_seed < 0 else train_seed, resolution=RESOLUTION, progress=False,
                         checkpoint_dir=os.path.join(out, f"work_{variant}", "checkpoint"), save_every=save_every,
                         save_precision=SAVE_PRECISION, device=device,    # the same LoRA and batch unless the variant says
                         **{**{k: PHASE2[k] for k in ("batch_size", "lora_rank", "lora_alpha")}, **LCM_VARIANTS[variant]})
    cfg = distil_config(variant, out, teacher, prompts, train_steps, seeds, seed, train_seed, save_every, recipe, compile)
    # every sigma-path variant reads the same phase-1 cache (same teacher, prompts, seeds): equal data and budget
    if (variant != "ray" or cache) and cfg.ray_path == "sigma" and os.path.isdir(shared) \
            and not os.path.isdir(os.path.join(cfg.work_dir, "cache")):
        os.makedirs(cfg.work_dir, exist_ok=True)
        os.symlink(os.path.abspath(shared), os.path.join(cfg.work_dir, "cache"))
    run(cfg, progress=False)
    return path


def distil_config(variant: str, out: str, teacher: str, prompts: str, train_steps: int, seeds: int, seed: int,
                  train_seed: int = -1, save_every: int = 0, recipe: ProxyRecipe = VP,
                  compile: bool = True) -> DistillConfig:
    """The validated ``DistillConfig`` that :func:`distil` trains ``variant`` with (work dir
    ``<out>/work_<variant>``; resumes when a checkpoint is there)."""
    path = os.path.join(out, f"lora_{variant}.safetensors")
    work_dir = os.path.join(out, f"work_{variant}")
    return recipe.config(path, work_dir, prompts, model=teacher, seeds_per_prompt=seeds, seed=seed, train_seed=train_seed,
                        train_steps=train_steps, checkpoint_every=200, log_every=50, save_every=save_every,
                        compile=compile, save_precision=SAVE_PRECISION,
                        # an interrupted run continues from its last checkpoint, exactly (training.distill --resume)
                        resume=os.path.isdir(os.path.join(work_dir, "checkpoint")), overwrite=True,   # the bench owns its --out
                        **VARIANTS[variant]).validate()


def lora_samples(model, unet, variant: str, labels, seeds, steps: int, mu_mode: str = "noise", eta: float = 0.0,
                 recipe: ProxyRecipe = VP):
    """``(images, model evaluations per image)`` of the LoRA ``unet`` of ``variant`` of the proxy family
    ``recipe`` in ``steps`` steps, for captions ``labels`` ``[N, 4]`` from the noise of ``seeds`` ``[N]``:
    LCM's multistep sampling for ``lcm`` (:func:`lcm_methods`), else the Ray sampler of the teacher ``model`` with the variant's
    process, target-mean mode ``mu_mode`` and ``eta`` (``proxy.sampling.rayflow_samples``)."""
    if is_lcm(variant):
        return lcm_methods(recipe)[1](model, unet, labels, seeds, steps)
    return rayflow_samples(model, unet, labels, seeds, steps, process_of(variant, recipe), mu_mode, eta, recipe.cfg)
