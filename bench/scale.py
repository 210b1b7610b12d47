"""Real-scale readiness: both phases of ``training.distill`` on full-size SD1.5, SDXL and PixArt-Sigma.

``python -m bench.scale`` builds each family at full size from its config with random weights
(SD1.5 UNet at 512 px, SDXL UNet at 1024 px, PixArt-Sigma XL-2 transformer at 1024 px; text
encoders at real size where they fit, PixArt's T5-XXL replaced by a one-layer stand-in of its
width that gives embeddings of the real shape), saves it as a diffusers folder in a temporary
directory, and runs ``training.distill.run`` on it: phase 1 (a short teacher trajectory per
prompt), phase 2 (a few LoRA steps of the default recipe) and the export. Every memory option is a
separate run (``--variants``): the frozen base in fp32 or bf16 (``--base-precision``), gradient
checkpointing, bitsandbytes' 8-bit AdamW (``--optimizer adamw8bit``). Each run is its own
subprocess, so its peak RSS is its own; a watchdog stops a run above ``--max-rss-gib`` and
records that instead of a number. The exported full-size LoRA is then loaded in diffusers and
mapped with ComfyUI's ``comfy.lora.model_lora_keys_unet`` (a ComfyUI source through
``--comfyui``), and the matched / total modules are recorded.

Results go to ``--out`` (default ``docs/results/scale_<device>.json``) after every run, so an
interrupted benchmark keeps what it measured. ``--tiny`` runs the same code path on the tiny
models of ``training/tiny.py`` in seconds (the tests use it). ``--table FILE`` prints the README's
tables from a results file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from rayflow.atomic_write import write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "training", "configs")
FAMILIES = ("sd15", "sdxl", "pixart")
ARCH = {"sd15": "sd15", "sdxl": "sdxl", "pixart": "pixart_sigma"}
RESOLUTION = {"sd15": 512, "sdxl": 1024, "pixart": 1024}
TINY_RESOLUTION = 16
# memory options, one training run each: the frozen base's dtype, gradient checkpointing, the optimizer
VARIANTS = {
    "fp32": dict(base_precision="fp32", gradient_checkpointing=False, optimizer="adamw"),
    "fp32-gc": dict(base_precision="fp32", gradient_checkpointing=True, optimizer="adamw"),
    "bf16": dict(base_precision="bf16", gradient_checkpointing=False, optimizer="adamw"),
    "bf16-gc": dict(base_precision="bf16", gradient_checkpointing=True, optimizer="adamw"),
    "bf16-gc-adamw8bit": dict(base_precision="bf16", gradient_checkpointing=True, optimizer="adamw8bit"),
}
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
PROMPTS = ["a photo of a red cat on a house", "a small green tree with a blue dog", "a large house in the tree"]
# PixArt-Sigma-XL-2-1024-MS (diffusers transformer config)
PIXART_SIGMA_XL = dict(sample_size=128, num_layers=28, patch_size=2, attention_head_dim=72, num_attention_heads=16,
                       caption_channels=4096, in_channels=4, out_channels=8, cross_attention_dim=1152,
                       attention_bias=True, activation_fn="gelu-approximate", norm_type="ada_norm_single",
                       norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000,
                       use_additional_conditions=False, interpolation_scale=2)
# T5-XXL (PixArt's text encoder) has 24 layers of this width; the stand-in keeps one
T5_XXL_WIDTH = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64, feed_forward_proj="gated-gelu")
T5_TOKENS = 300
GIB = 1024 ** 3


def _default(name: str):
    from training.config import DistillConfig

    return {f.name: f.default for f in dataclasses.fields(DistillConfig)}[name]


# ---------------------------------------------------------------- building the models
def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_family(family: str, out_dir: str, tiny: bool = False) -> Dict:
    """Write ``family`` with random weights as a diffusers folder ``out_dir``; returns what was built
    (parameter counts, stand-ins). Full size: weights drawn in bf16 (torch's default init), stored
    in bf16; the trainer loads them in ``--base-precision``."""
    import torch

    if tiny:
        from training.tiny import build_tiny_pixart, build_tiny_sd15, build_tiny_sdxl

        {"sd15": lambda: build_tiny_sd15(out_dir, width=32), "sdxl": lambda: build_tiny_sdxl(out_dir, width=32),
         "pixart": lambda: build_tiny_pixart(out_dir, sigma=True)}[family]()
        return {"stand_ins": ["tiny models of training/tiny.py"], **_count(out_dir)}
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)        # a full-size fp32 SDXL would not fit while it is built
    try:
        stand_ins = _build_full(family, out_dir)
    finally:
        torch.set_default_dtype(previous)
    return {"stand_ins": stand_ins, **_count(out_dir)}


def _save(model, out_dir: str, sub: str) -> None:
    model.save_pretrained(os.path.join(out_dir, sub))
    del model


def _build_full(family: str, out_dir: str) -> List[str]:
    from diffusers import AutoencoderKL, DDIMScheduler, PixArtTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from training.tiny import WORDS, write_t5_tokenizer
    from training.tokenizers import write_clip_tokenizer

    os.makedirs(out_dir, exist_ok=True)
    stand_ins = ["random weights (torch's default initialisation), drawn and stored in bf16"]
    if family in ("sd15", "sdxl"):
        src = os.path.join(CONFIGS, family)
        shutil.copy(os.path.join(src, "model_index.json"), out_dir)
        shutil.copytree(os.path.join(src, "scheduler"), os.path.join(out_dir, "scheduler"))
        _save(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(os.path.join(src, "unet"))), out_dir, "unet")
        _save(AutoencoderKL.from_config(AutoencoderKL.load_config(os.path.join(src, "vae"))), out_dir, "vae")
        encoders = [("text_encoder", CLIPTextModel, "tokenizer")]
        if family == "sdxl":
            encoders.append(("text_encoder_2", CLIPTextModelWithProjection, "tokenizer_2"))
        for sub, cls, tok in encoders:
            _save(cls(CLIPTextConfig.from_pretrained(os.path.join(src, sub))), out_dir, sub)
            write_clip_tokenizer(WORDS, os.path.join(out_dir, tok), 77)
        stand_ins.append("CLIP tokenizer: a word-level stand-in with the real 77-token length (the text encoders are real size)")
        return stand_ins
    _save(PixArtTransformer2DModel(**PIXART_SIGMA_XL), out_dir, "transformer")
    _save(AutoencoderKL.from_config(AutoencoderKL.load_config(os.path.join(CONFIGS, "sdxl", "vae"))), out_dir, "vae")
    write_t5_tokenizer(WORDS, os.path.join(out_dir, "tokenizer"), T5_TOKENS)
    _save(T5EncoderModel(T5Config(vocab_size=len(WORDS) + 8, num_layers=1, decoder_start_token_id=0, pad_token_id=0,
                                  eos_token_id=1, **T5_XXL_WIDTH)), out_dir, "text_encoder")
    DDIMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                  clip_sample=False).save_pretrained(os.path.join(out_dir, "scheduler"))
    with open(os.path.join(out_dir, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump({"_class_name": "PixArtSigmaPipeline", "transformer": ["diffusers", "PixArtTransformer2DModel"],
                   "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
                   "scheduler": ["diffusers", "DDIMScheduler"], "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)
    stand_ins += [f"text encoder: a 1-layer stand-in of T5-XXL's width (d_model 4096, 64 heads, d_ff 10240; the real "
                  f"encoder has 24 layers, 4.8e9 parameters, too large for this machine's RAM) giving embeddings of the "
                  f"real shape [B, {T5_TOKENS}, 4096]; phase 1 with the real T5-XXL needs about 9.5 GB more in bf16",
                  f"T5 tokenizer: a word-level stand-in with the real {T5_TOKENS}-token length",
                  "VAE: the SDXL VAE config (PixArt-Sigma uses an SDXL-architecture VAE)"]
    return stand_ins


def _count(model_dir: str) -> Dict:
    """Parameter counts of the saved components, read from the safetensors headers."""
    from safetensors import safe_open

    out = {}
    for sub in sorted(os.listdir(model_dir)):
        folder = os.path.join(model_dir, sub)
        files = [f for f in os.listdir(folder) if f.endswith(".safetensors")] if os.path.isdir(folder) else []
        n = 0
        for name in files:
            with safe_open(os.path.join(folder, name), framework="pt") as f:
                for k in f.keys():
                    shape = f.get_slice(k).get_shape()
                    size = 1
                    for s in shape:
                        size *= s
                    n += size
        if files:
            out[sub] = n
    return {"params": out}


# ---------------------------------------------------------------- one training run
def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux reports KiB


def run_variant(family: str, model_dir: str, variant: str, work: str, steps: int, teacher_steps: int,
                prompts: int, batch_size: int, tiny: bool = False, grid: bool = False) -> Dict:
    """Run ``training.distill.run`` on ``model_dir`` with ``VARIANTS[variant]`` and return its
    timings, LoRA size and peak RSS (of this process). Writes ``work/progress.json`` as it goes."""
    import torch

    import training.data
    import training.export
    import training.trainer
    from training import distill
    from training.config import DistillConfig

    os.makedirs(work, exist_ok=True)
    progress_path = os.path.join(work, "progress.json")
    rec: Dict = {"phase": "loading"}

    def mark(**kw):
        rec.update(kw)
        write_json(progress_path, rec)

    mark()
    prompt_file = os.path.join(work, "prompts.txt")
    with open(prompt_file, "w", encoding="utf-8") as f:
        f.write("\n".join(PROMPTS[:prompts]) + "\n")
    cfg = DistillConfig(model=model_dir, prompts=prompt_file, output=os.path.join(work, "lora.safetensors"),
                        resolution=TINY_RESOLUTION if tiny else RESOLUTION[family], teacher_steps=teacher_steps,
                        train_steps=steps, batch_size=batch_size, log_every=1, checkpoint_every=max(1, steps),
                        **VARIANTS[variant])
    traj, step_times, state = [], [], {}
    orig_traj, orig_step = training.data.teacher_trajectory, training.trainer.Trainer.train_step
    orig_init, orig_grid = training.trainer.Trainer.__init__, training.trainer.Trainer.validation_grid
    orig_write, orig_load = training.export.write_lora, training.data.load_cache

    def timed_traj(model, z, *a, **kw):
        t0 = time.perf_counter()
        out = orig_traj(model, z, *a, **kw)
        traj.append((time.perf_counter() - t0, int(z.shape[0])))
        return out

    def timed_load_cache(folder):
        mark(phase="phase 2", rss_phase1_peak=_maxrss_bytes(), trajectories=[list(x) for x in traj])
        return orig_load(folder)

    def init(self, *a, **kw):
        t0 = time.perf_counter()
        orig_init(self, *a, **kw)
        state["trainer_setup_s"] = time.perf_counter() - t0
        state["lora_params"] = sum(p.numel() for p in self.params)
        state["lora_modules"] = sum(1 for n, _ in self.unet.named_modules() if n.endswith("lora_A.default"))

    def timed_step(self):
        t0 = time.perf_counter()
        out = orig_step(self)
        step_times.append(time.perf_counter() - t0)
        mark(steps_done=len(step_times), step_times=step_times)
        return out

    def timed_grid(self, path, *a, **kw):
        if not grid:
            return None
        t0 = time.perf_counter()
        orig_grid(self, path, *a, **kw)
        state["validation_grid_s"] = time.perf_counter() - t0

    def timed_write(path, *a, **kw):
        t0 = time.perf_counter()
        orig_write(path, *a, **kw)
        state["export_s"] = time.perf_counter() - t0

    training.data.teacher_trajectory = timed_traj
    training.data.load_cache = timed_load_cache
    training.trainer.Trainer.__init__ = init
    training.trainer.Trainer.train_step = timed_step
    training.trainer.Trainer.validation_grid = timed_grid
    training.export.write_lora = timed_write
    mark(phase="phase 1")
    load_start = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    try:
        distill.run(cfg, progress=False)
    finally:
        training.data.teacher_trajectory, training.data.load_cache = orig_traj, orig_load
        training.trainer.Trainer.__init__, training.trainer.Trainer.train_step = orig_init, orig_step
        training.trainer.Trainer.validation_grid, training.export.write_lora = orig_grid, orig_write
    total = time.perf_counter() - t0
    items = sum(n for _, n in traj)
    cfg_factor = 2 if cfg.teacher_cfg != 1 else 1
    later = step_times[1:] or step_times
    out = {
        "options": dict(VARIANTS[variant]), "batch_size": batch_size, "train_steps": steps,
        "teacher_steps": teacher_steps, "trajectories": items, "teacher_cfg": cfg.teacher_cfg,
        "phase1_s_per_trajectory": sum(t for t, _ in traj) / items,
        "phase1_s_per_teacher_step": sum(t for t, _ in traj) / items / teacher_steps,
        "phase1_denoiser_batch": cfg_factor,
        "phase2_step_times_s": step_times,
        "phase2_s_per_step": sum(later) / len(later),
        "phase2_s_per_step_note": "mean over the steps after the first (the first, with warm-up, is in phase2_step_times_s)"
                                  if len(step_times) > 1 else "one step",
        "trainer_setup_s": state["trainer_setup_s"], "export_s": state["export_s"],
        "validation_grid": (f"{state['validation_grid_s']:.1f} s" if grid else
                            "skipped (bench.scale --grid runs it: 7 denoiser passes and up to 4 VAE decodes)"),
        "run_total_s": total, "load_average_start_end": [load_start, [round(x, 2) for x in os.getloadavg()]],
        "peak_rss_bytes": _maxrss_bytes(), "peak_rss_phase1_bytes": rec.get("rss_phase1_peak"),
        "lora_params": state["lora_params"], "lora_modules": state["lora_modules"],
        "lora_file_bytes": os.path.getsize(cfg.output), "lora_file_precision": cfg.save_precision,
        "lora": cfg.output,
    }
    out["peak_rss_gib"] = round(out["peak_rss_bytes"] / GIB, 2)
    state.clear()
    mark(phase="done")
    return out


def export_untrained_lora(family: str, model_dir: str, path: str) -> Dict:
    """A LoRA file with the keys ``training.distill`` exports, without training: the default targets
    injected by ``training.trainer.add_lora`` into the denoiser (loaded in bf16), ``lora_B`` drawn
    from N(0, 1e-3) instead of trained, written by ``training.export``. For the key match when no
    training run finished."""
    import torch

    from training.config import DistillConfig
    from training.export import export_state_dict, write_lora
    from training.models import load_base_model
    from training.trainer import add_lora, lora_state

    cfg = DistillConfig()
    model = load_base_model(model_dir, dtype=torch.bfloat16)
    torch.manual_seed(0)
    add_lora(model.unet, cfg, pixart=model.architecture.startswith("pixart"))
    with torch.no_grad():              # lora_B starts at zero, and an all-zero file is refused as damaged
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    state = lora_state(model.unet)
    write_lora(path, export_state_dict(model.architecture, state, cfg.lora_rank, cfg.lora_alpha),
               {"rayflow.architecture": model.architecture})
    return {"lora": path, "lora_params": sum(v.numel() for v in state.values()),
            "lora_modules": sum(1 for k in state if k.endswith("lora_A.weight")), "lora_file_bytes": os.path.getsize(path),
            "lora_file_precision": cfg.save_precision}


# ---------------------------------------------------------------- key match
def _lora_modules(tensors: Dict) -> List[str]:
    """Module names of a LoRA file's tensors (kohya ``lora_unet_*`` or peft ``transformer.*``), sorted."""
    from rayflow.lora_file import lora_module_names

    return sorted(lora_module_names(tensors))


def keymatch_diffusers(family: str, model_dir: str, lora_path: str) -> Dict:
    """Load the LoRA file into the family's denoiser with diffusers (``lora_state_dict`` +
    ``load_lora_adapter``; PixArt: ``training.export.load_transformer_lora`` with peft) and count the
    file's modules whose weights arrived unchanged in the model's adapter."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    tensors = load_file(lora_path)
    modules = _lora_modules(tensors)
    if family == "pixart":
        from diffusers import PixArtTransformer2DModel

        from training.export import load_transformer_lora

        net = PixArtTransformer2DModel.from_pretrained(model_dir, subfolder="transformer", torch_dtype=torch.bfloat16)
        load_transformer_lora(net, lora_path)
        adapter, how = "default", "peft through training.export.load_transformer_lora (diffusers has no PixArt load_lora_weights)"
        name, parts = (lambda m: "transformer." + m), (".lora_A.weight", ".lora_B.weight")
    else:
        import diffusers

        cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
        net = diffusers.UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=torch.bfloat16)
        state, alphas = cls.lora_state_dict(lora_path)
        net.load_lora_adapter(state, prefix="unet", network_alphas=alphas, adapter_name="rayflow")
        adapter, how = "rayflow", f"diffusers {cls.__name__}.lora_state_dict + UNet2DConditionModel.load_lora_adapter"
        name, parts = (lambda m: "lora_unet_" + m.replace(".", "_")), (".lora_down.weight", ".lora_up.weight")
    got = get_peft_model_state_dict(net, adapter_name=adapter)
    # a file module is matched when the model's adapter holds its down and up weights unchanged
    matched = set()
    for key in got:
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            f = name(module)
            ok = all(f + part in tensors and torch.equal(got[module + mine].float(),
                                                           tensors[f + part].to(got[module + mine].dtype).float())
                     for part, mine in zip(parts, (".lora_A.weight", ".lora_B.weight")))
            if ok:
                matched.add(f)
    return {"matched": len(matched & set(modules)), "total": len(modules), "adapter_modules": len(got) // 2, "how": how}


def comfy_unet_config(arch: str, config: Dict) -> Dict:
    """ComfyUI's ``unet_config`` for a diffusers UNet2DConditionModel / PixArtTransformer2DModel
    config (the keys ComfyUI's model classes are built from)."""
    if arch.startswith("pixart"):
        return dict(image_model=arch, input_size=config["sample_size"], patch_size=config["patch_size"],
                    in_channels=config["in_channels"],
                    hidden_size=config["num_attention_heads"] * config["attention_head_dim"], depth=config["num_layers"],
                    num_heads=config["num_attention_heads"], caption_channels=config["caption_channels"],
                    model_max_length=T5_TOKENS, micro_condition=arch == "pixart_alpha",
                    pe_interpolation=config.get("interpolation_scale") or 1)
    chans = list(config["block_out_channels"])
    n, layers = len(chans), config["layers_per_block"]
    depth = config.get("transformer_layers_per_block", 1)
    depth = [depth] * n if isinstance(depth, int) else list(depth)
    down = [depth[i] if "CrossAttn" in t else 0 for i, t in enumerate(config["down_block_types"])]
    up = [depth[n - 1 - i] if "CrossAttn" in t else 0 for i, t in enumerate(config["up_block_types"])]
    heads = config.get("attention_head_dim", 8)
    out = dict(use_checkpoint=False, image_size=32, in_channels=config["in_channels"], out_channels=config["out_channels"],
               model_channels=chans[0], num_res_blocks=[layers] * n, channel_mult=[c // chans[0] for c in chans],
               transformer_depth=[d for d in down for _ in range(layers)],
               # ComfyUI pops the output depths from the end: the last entries are the deepest level's
               transformer_depth_output=[d for d in reversed(up) for _ in range(layers + 1)],
               transformer_depth_middle=depth[-1], use_spatial_transformer=True, legacy=False,
               use_linear_in_transformer=bool(config.get("use_linear_projection")),
               context_dim=config["cross_attention_dim"], adm_in_channels=None)
    if isinstance(heads, int):
        out.update(num_heads=heads, num_head_channels=-1)
    else:
        out.update(num_heads=-1, num_head_channels=chans[0] // heads[0])
    if config.get("addition_embed_type") == "text_time":
        out.update(num_classes="sequential", adm_in_channels=config["projection_class_embeddings_input_dim"])
    return out


def keymatch_comfyui(family: str, model_dir: str, lora_path: str) -> Dict:
    """Map the LoRA file with ComfyUI's stock code (``comfy.lora.model_lora_keys_unet`` of the
    family's ComfyUI model, built on the meta device, then ``comfy.lora.load_lora``); run with
    ComfyUI importable (``COMFYUI_PATH`` on ``sys.path``)."""
    import torch

    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True
    import comfy.lora
    import comfy.lora_convert
    import comfy.supported_models
    from safetensors.torch import load_file

    arch = ARCH[family]
    sub = "transformer" if family == "pixart" else "unet"
    with open(os.path.join(model_dir, sub, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    cls = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL,
           "pixart_sigma": comfy.supported_models.PixArtSigma}[arch]
    model = cls(comfy_unet_config(arch, config)).get_model({}, device=torch.device("meta"))
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    tensors = load_file(lora_path)
    modules = _lora_modules(tensors)
    patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(tensors), key_map)
    unmatched = [m for m in modules if m not in key_map]
    return {"matched": len(modules) - len(unmatched), "total": len(modules), "patches": len(patches),
            "unmatched": unmatched[:5],
            "how": f"ComfyUI {cls.__name__} model (meta device) + comfy.lora.model_lora_keys_unet + comfy.lora.load_lora"}


# ---------------------------------------------------------------- subprocesses and the watchdog
def _child(args: List[str], out_json: str, max_rss: float, timeout: float, python: str = sys.executable,
           env: Optional[Dict] = None, comfyui: str = "") -> Dict:
    """Run ``python -m bench.scale --child ...`` writing ``out_json``; stop it above ``max_rss``
    bytes of RSS or after ``timeout`` s. Returns its JSON, or ``{"status": why}``."""
    import psutil

    cmd = [python, "-m", "bench.scale", "--child", *args, "--child-out", out_json]
    if comfyui:
        cmd += ["--comfyui", comfyui]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps, peak, why = psutil.Process(proc.pid), 0, None
    lines: List[str] = []
    import threading

    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            pass
        if peak > max_rss:
            why = f"stopped: RSS passed the {max_rss / GIB:.0f} GiB limit (--max-rss-gib)"
        elif time.time() - t0 > timeout:
            why = f"stopped: did not finish within {timeout:.0f} s (--timeout)"
        if why:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.2)
    reader.join(5)
    wall = time.time() - t0
    if why is None and proc.returncode == 0 and os.path.isfile(out_json):
        with open(out_json, encoding="utf-8") as f:
            res = json.load(f)
        res["status"] = "measured"
        res["wall_s"] = round(wall, 1)
        return res
    progress = os.path.join(os.path.dirname(out_json), "progress.json")
    where = {}
    if os.path.isfile(progress):
        with open(progress, encoding="utf-8") as f:
            where = json.load(f)
    tail = "".join(lines[-3:]).strip().splitlines()
    res = {"status": why or f"failed (exit {proc.returncode}): {tail[-1] if tail else 'no output'}",
           "stopped_in": where.get("phase"), "steps_done": where.get("steps_done", 0),
           "step_times_s": where.get("step_times", []), "watchdog_peak_rss_gib": round(peak / GIB, 2),
           "wall_s": round(wall, 1)}
    if where.get("trajectories"):         # what a stopped run measured before it was stopped
        res["phase1_s_per_trajectory"] = sum(t for t, _ in where["trajectories"]) / sum(n for _, n in where["trajectories"])
    if where.get("rss_phase1_peak"):
        res["peak_rss_phase1_gib"] = round(where["rss_phase1_peak"] / GIB, 2)
    return res


def find_comfyui(given: str) -> str:
    """A ComfyUI source folder: ``given``, ``$COMFYUI_PATH`` or ``../shared/comfyui`` beside the repository."""
    for cand in (given, os.environ.get("COMFYUI_PATH", ""), os.path.join(os.path.dirname(REPO), "shared", "comfyui")):
        if cand and os.path.isfile(os.path.join(cand, "comfy", "lora.py")):
            return cand
    return ""


def comfy_python(given: str) -> str:
    if given:
        return given
    venv = os.path.join(REPO, ".venv-comfyui", "bin", "python")
    return venv if os.path.isfile(venv) else sys.executable


def device_info(threads: int) -> Dict:
    """The machine a run measures on; ``run_threads``: OMP_NUM_THREADS of the measuring subprocesses
    (this process's own torch threads are not theirs)."""
    import torch

    info = {"kind": "cpu", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "run_threads": threads}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), info["cpu"])
    except OSError:
        pass
    try:
        import psutil

        info["ram_gib"] = round(psutil.virtual_memory().total / GIB, 1)
    except ImportError:
        pass
    info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    info["niceness"] = os.nice(0)
    return info


def estimates(res: Dict) -> Dict:
    """Hours for the default recipe's budget at the measured speed (linear in batch size and steps)."""
    steps, batch, tsteps = _default("train_steps"), _default("batch_size"), _default("teacher_steps")
    p2 = res["phase2_s_per_step"] * batch / res["batch_size"] * steps / 3600
    p1 = res["phase1_s_per_teacher_step"] * tsteps * 1000 / 3600
    return {"phase2_hours_default_recipe": round(p2, 2), "phase1_hours_per_1000_prompts": round(p1, 2),
            "how": f"phase 2: s/step x {batch} / {res['batch_size']} (default --batch-size over the measured one) x "
                   f"{steps} default --train-steps; phase 1: s per teacher step per trajectory x {tsteps} default "
                   f"--teacher-steps x 1000 prompts (x --seeds-per-prompt); both assume time linear in batch and steps"}


def _write(out: str, results: Dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_json(out, results)


def bench_family(family: str, args, results: Dict, out: str) -> Dict:
    max_rss, env = args.max_rss_gib * GIB, dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                                               MKL_NUM_THREADS=str(args.threads))
    old = results.get(family) if isinstance(results.get(family), dict) else {}
    rec: Dict = {**old, "architecture": ARCH[family], "resolution": TINY_RESOLUTION if args.tiny else RESOLUTION[family],
                 "variants": dict(old.get("variants", {}))}      # the variants of earlier runs not rerun now are kept
    results[family] = rec
    tmp = tempfile.mkdtemp(prefix=f"rayflow-scale-{family}-")
    try:
        model_dir = os.path.join(tmp, "model")
        built = _child(["build", family, model_dir] + (["--tiny"] if args.tiny else []),
                       os.path.join(tmp, "build.json"), max_rss, args.timeout, env=env)
        if built.get("status") != "measured":
            rec["status"] = f"not built: {built['status']}"
            _write(out, results)
            return rec
        den = built["params"].get("unet", built["params"].get("transformer"))
        rec.update(params=built["params"], denoiser_params=den, stand_ins=built["stand_ins"],
                   build_s=built["wall_s"])
        enc = sum(v for k, v in built["params"].items() if k.startswith("text_encoder"))
        lora_path = ""
        if args.keys_first and not args.no_keymatch:
            path, facts, source = _untrained(family, model_dir, tmp, args, env)
            if path:
                rec["lora"] = rec.get("lora") or _lora_record(facts)
                _key_match(rec, family, model_dir, path, source, tmp, args, env, results, out)
        for variant in args.variants:
            opts = VARIANTS[variant]
            base_bytes = (den + enc + built["params"].get("vae", 0)) * BYTES[opts["base_precision"]]
            if base_bytes > max_rss:
                rec["variants"][variant] = {**_row_header(args, opts), "status": (
                    f"not run: the frozen base weights alone take {base_bytes / GIB:.1f} GiB in "
                    f"{opts['base_precision']}, more than the {args.max_rss_gib:g} GiB limit (--max-rss-gib)")}
                _write(out, results)
                continue
            if opts["optimizer"] == "adamw8bit" and not _has_bitsandbytes(env):
                rec["variants"][variant] = {**_row_header(args, opts),
                                            "status": "not run: bitsandbytes is not installed"}
                _write(out, results)
                continue
            work = os.path.join(tmp, variant)
            os.makedirs(work, exist_ok=True)
            child_args = ["run", family, model_dir, "--variant", variant, "--work", work, "--steps", str(args.steps),
                          "--teacher-steps", str(args.teacher_steps), "--prompts", str(args.prompts),
                          "--batch-size", str(args.batch_size)] + (["--tiny"] if args.tiny else []) + \
                         (["--grid"] if args.grid else [])
            res = _child(child_args, os.path.join(work, "result.json"), max_rss, args.timeout, env=env)
            res.update(_row_header(args, opts))     # also on a stopped run, whose result has only what it measured
            if res["status"] == "measured":
                res["estimates"] = estimates(res)
                lora_path = lora_path or res["lora"]
                rec["lora"] = _lora_record(res)
                res.pop("lora")
            rec["variants"][variant] = res
            _write(out, results)
        if not args.no_keymatch and not args.keys_first:
            source = "the LoRA of the first measured variant"
            if not lora_path:
                lora_path, facts, source = _untrained(family, model_dir, tmp, args, env)
                if lora_path:
                    rec["lora"] = rec.get("lora") or _lora_record(facts)
            if lora_path:
                _key_match(rec, family, model_dir, lora_path, source, tmp, args, env, results, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rec


def _lora_record(res: Dict) -> Dict:
    return {"rank": _default("lora_rank"), "params": res["lora_params"], "modules": res["lora_modules"],
            "file_bytes": res["lora_file_bytes"], "file_mib": round(res["lora_file_bytes"] / 2 ** 20, 1),
            "file_precision": res["lora_file_precision"]}


def _untrained(family: str, model_dir: str, tmp: str, args, env: Dict):
    """``(path, facts, source)`` of an untrained LoRA exported from the full-size model, or
    ``("", {}, why)``."""
    path = os.path.join(tmp, "untrained.safetensors")
    res = _child(["lora", family, model_dir, "--lora", path] + (["--tiny"] if args.tiny else []),
                 os.path.join(tmp, "lora.json"), args.max_rss_gib * GIB, args.timeout, env=env)
    if res.get("status") != "measured":
        return "", {}, res["status"]
    return path, res, ("an untrained LoRA with the default targets (training.trainer.add_lora on the full-size denoiser "
                  "in bf16, lora_B drawn from N(0, 1e-3), written by training.export: the keys a trained file has)")


def _key_match(rec: Dict, family: str, model_dir: str, lora: str, source: str, tmp: str, args, env: Dict,
               results: Dict, out: str) -> None:
    rec["key_match"] = {"command": args.command, "lora": source,
                        "diffusers": _keys("diffusers", family, model_dir, lora, tmp, args, env)}
    _write(out, results)
    comfy = find_comfyui(args.comfyui)
    if comfy:
        rec["key_match"]["comfyui"] = _keys("comfyui", family, model_dir, lora, tmp, args, env, comfy)
    else:
        rec["key_match"]["comfyui"] = {"status": "not run: no ComfyUI source (--comfyui DIR or COMFYUI_PATH)"}
    _write(out, results)


def _has_bitsandbytes(env: Dict) -> bool:
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('bitsandbytes') is None)"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO).returncode == 0


def _keys(kind: str, family: str, model_dir: str, lora: str, tmp: str, args, env: Dict, comfy: str = "") -> Dict:
    out_json = os.path.join(tmp, f"keys_{kind}.json")
    child = ["keys-" + kind, family, model_dir, "--lora", lora] + (["--tiny"] if args.tiny else [])
    if kind == "diffusers":
        return _child(child, out_json, args.max_rss_gib * GIB, args.timeout, env=env)
    copy = os.path.join(tmp, "ComfyUI")            # the source may be read-only: import a copy
    if not os.path.isdir(copy):
        shutil.copytree(comfy, copy, ignore=shutil.ignore_patterns(".git", "custom_nodes", "models", "output", "input"))
    return _child(child, out_json, args.max_rss_gib * GIB, args.timeout, python=comfy_python(args.comfyui_python),
                  env=dict(env, COMFYUI_PATH=copy), comfyui=copy)


# ---------------------------------------------------------------- README tables
def _gib(n) -> str:
    return f"{n / GIB:.1f}" if n else "-"


def table(results: Dict) -> str:
    """Markdown tables, one per family, of a results file: the README's "Hardware and cost" tables
    (``tests/test_bench_scale.py`` checks that the README carries this text for the committed file).
    Variants in ``VARIANTS`` order; below each table, the commands that measured its rows."""
    lines = []
    names = {"sd15": "SD1.5", "sdxl": "SDXL", "pixart": "PixArt-Σ XL-2"}
    for family in FAMILIES:
        rec = results.get(family)
        if not rec:
            continue
        lora, km = rec.get("lora", {}), rec.get("key_match", {})
        match = ", ".join(f"{k} {v['matched']}/{v['total']}" for k, v in km.items() if isinstance(v, dict) and "matched" in v)
        lines += [f"**{names[family]}** ({rec['architecture']}, {rec['resolution']} px; denoiser "
                  f"{rec.get('denoiser_params', 0) / 1e6:.0f} M parameters; LoRA rank {lora.get('rank', '-')}: "
                  f"{lora.get('params', 0) / 1e6:.1f} M parameters, {lora.get('file_mib', '-')} MiB in "
                  f"{lora.get('file_precision', '-')}; keys matched: {match or 'not checked'})", "",
                  "| memory option | peak RSS, CPU (phase 1) | s/trajectory, phase 1 | s/step, phase 2 (batch 1) | "
                  "est. hours, phase 2 of the default recipe (CPU) | GPU |", "|---|---|---|---|---|---|"]
        variants = rec.get("variants", {})
        commands: List[str] = []
        for name in sorted(variants, key=lambda n: list(VARIANTS).index(n) if n in VARIANTS else len(VARIANTS)):
            v = variants[name]
            if v.get("command") and v["command"] not in commands:
                commands.append(v["command"])
            if v.get("status") != "measured":
                reached = f"; RSS reached {v['watchdog_peak_rss_gib']:.1f} GiB" if v.get("watchdog_peak_rss_gib") else ""
                p1 = v.get("phase1_s_per_trajectory")
                lines.append(f"| `{name}` | {v.get('status', '-')}{reached} | {f'{p1:.1f}' if p1 else '-'} | "
                             f"{', '.join(f'{t:.0f}' for t in v.get('step_times_s', [])) or '-'} | - | not measured on a GPU |")
                continue
            steps = len(v.get("phase2_step_times_s", [])) or v.get("train_steps")
            lines.append(f"| `{name}` | {v['peak_rss_gib']:.1f} GiB ({_gib(v.get('peak_rss_phase1_bytes'))}) | "
                         f"{v['phase1_s_per_trajectory']:.1f} ({v['teacher_steps']} teacher steps) | "
                         f"{v['phase2_s_per_step']:.1f}{'' if steps and steps > 1 else ' (one step)'} | "
                         f"{v['estimates']['phase2_hours_default_recipe']:.0f} | not measured on a GPU |")
        km_cmd = km.get("command")
        if km_cmd and km_cmd not in commands:
            commands.append(km_cmd)
        lines += [""] + [f"`{c}`  " for c in commands[:-1]] + [f"`{c}`" for c in commands[-1:]] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0] + " Writes "
                                "peak memory, s/trajectory, s/step, LoRA size and key-match counts per family.")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"memory options to run, comma-separated, of {', '.join(VARIANTS)} (fp32/bf16: --base-precision; "
                        f"gc: --gradient-checkpointing; adamw8bit: --optimizer adamw8bit)")
    p.add_argument("--steps", type=int, default=2, help="phase-2 LoRA steps per run (default: 2)")
    p.add_argument("--teacher-steps", type=int, default=2, help="teacher solver steps of phase 1 (default: 2)")
    p.add_argument("--prompts", type=int, default=1, help=f"prompts (trajectories) in phase 1, at most {len(PROMPTS)} (default: 1)")
    p.add_argument("--batch-size", type=int, default=1, help="phase-2 batch size (default: 1)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the runs (default: 2)")
    p.add_argument("--max-rss-gib", type=float, default=12.0, help="stop a run whose RSS passes this (default: 12)")
    p.add_argument("--timeout", type=float, default=3600.0, help="stop a run after this many seconds (default: 3600)")
    p.add_argument("--grid", action="store_true", help="also time the final validation grid (skipped by default)")
    p.add_argument("--no-keymatch", action="store_true", help="skip the diffusers / ComfyUI key-match checks")
    p.add_argument("--keys-first", action="store_true",
                   help="run the key match before the training runs, on an untrained LoRA exported from the full-size "
                        "model (the same keys; without it: on the first measured run's LoRA, or that one when none finished)")
    p.add_argument("--comfyui", default="", help="ComfyUI source folder for the key match (default: $COMFYUI_PATH, "
                                                  "else ../shared/comfyui beside the repository)")
    p.add_argument("--comfyui-python", default="", help="Python that runs ComfyUI (default: .venv-comfyui/bin/python "
                                                         "when present, else this one)")
    p.add_argument("--tiny", action="store_true", help="the tiny models of training/tiny.py (seconds; the test path)")
    p.add_argument("--out", default="", help="results JSON (default: docs/results/scale_cpu.json; with --tiny: required)")
    p.add_argument("--table", default="", metavar="FILE", help="print the README tables of a results file and exit")
    # internal: one measurement in a subprocess
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--lora", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for f in args.families:
        if f not in FAMILIES:
            p.error(f"--families: unknown family {f!r} (one of {', '.join(FAMILIES)})")
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"--variants: unknown variant {v!r} (one of {', '.join(VARIANTS)})")
    if not 1 <= args.prompts <= len(PROMPTS):
        p.error(f"--prompts must be in [1, {len(PROMPTS)}]")
    for name in ("steps", "batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.teacher_steps < 2:      # one prediction has no Theorem-1 spread, and --sigma auto needs one
        p.error("--teacher-steps must be >= 2")
    if args.tiny and not args.out and not args.table and not args.child:
        p.error("--tiny needs --out (the committed results file is for the full-size run)")
    return args


def _run_child(args) -> int:
    kind, family, model_dir = args.child
    if kind.startswith("keys-comfyui") and args.comfyui:
        sys.path.insert(0, args.comfyui)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    if kind == "build":
        res = build_family(family, model_dir, tiny=args.tiny)
    elif kind == "run":
        res = run_variant(family, model_dir, args.variant, args.work, args.steps, args.teacher_steps, args.prompts,
                          args.batch_size, tiny=args.tiny, grid=args.grid)
    elif kind == "lora":
        res = export_untrained_lora(family, model_dir, args.lora)
    elif kind == "keys-diffusers":
        res = keymatch_diffusers(family, model_dir, args.lora)
    else:
        res = keymatch_comfyui(family, model_dir, args.lora)
    res["peak_rss_gib"] = res.get("peak_rss_gib", round(_maxrss_bytes() / GIB, 2))
    _write(args.child_out, res)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return _run_child(args)
    if args.table:
        with open(args.table, encoding="utf-8") as f:
            print(table(json.load(f)))
        return 0
    out = args.out or os.path.join(REPO, "docs", "results", "scale_cpu.json")
    results: Dict = {}
    if os.path.isfile(out):                  # families measured before (another --families run) are kept
        with open(out, encoding="utf-8") as f:
            results = json.load(f)
    import shlex

    shown = list(sys.argv[1:] if argv is None else argv)
    # what one invocation ran with belongs to the rows it measured (a file gathers several --families runs);
    # only the default recipe that the estimates scale to is the file's own
    for key in ("command", "measured", "device", "bitsandbytes"):
        results.pop(key, None)
    results["recipe"] = {k: _default(k) for k in ("lora_rank", "lora_alpha", "lora_targets", "teacher_solver",
                                                  "teacher_cfg", "train_steps", "batch_size", "teacher_steps",
                                                  "save_precision")}
    args.command = "python -m bench.scale " + shlex.join(shown)
    args.device = device_info(args.threads)
    args.bitsandbytes = _bnb_version(args)
    for family in args.families:
        print(f"bench.scale: {family} ...", flush=True)
        rec = bench_family(family, args, results, out)
        _write(out, results)
        for name, v in rec.get("variants", {}).items():
            print(f"  {name}: {v.get('status')}" + (f", peak RSS {v['peak_rss_gib']} GiB, {v['phase2_s_per_step']:.2f} s/step"
                                                     if v.get("status") == "measured" else ""), flush=True)
    print(f"bench.scale: wrote {out}")
    return 0


def _row_header(args, opts: Dict) -> Dict:
    """What every row of a variant carries, run or not: its memory options, the command, the machine and,
    for the 8-bit optimizer, the bitsandbytes version."""
    row = {"options": dict(opts), "command": args.command, "device": args.device}
    if opts["optimizer"] == "adamw8bit":
        row["bitsandbytes"] = args.bitsandbytes
    return row


def _bnb_version(args) -> str:
    code = "import bitsandbytes; print(bitsandbytes.__version__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    return f"{r.stdout.strip()} installed (pip install bitsandbytes; not a project dependency)" if r.returncode == 0 \
        else "not installed (pip install bitsandbytes to run the adamw8bit variant)"


if __name__ == "__main__":
    raise SystemExit(main())
