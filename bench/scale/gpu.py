"""Measuring phase 1 and phase 2 on a GPU, in minutes: ``python -m bench.scale --gpu-measure``.

Per family (SD1.5 and SDXL unless ``--families`` says otherwise) the full-size denoiser is built on
the GPU with random weights (no download, no folder) in bf16, or in the memory option's base dtype
for phase 2, then timed through the trainer's own code: ``training.data.teacher_trajectory`` for a few teacher steps of several trajectories at once
(phase 1 batches a whole cache shard), and ``training.trainer.Trainer.train_step`` for a few
phase-2 steps at the recipe's batch, on a cache of random tensors of the real shapes, once per
memory option (bf16 and bf16 with gradient checkpointing unless ``--variants`` says otherwise).
Each timing is bracketed by ``torch.cuda.synchronize``; after a warm-up step the peak is read with
``torch.cuda.max_memory_allocated``. A memory option that does not fit is recorded as out of
memory. With ``--tiny`` the same code runs the tiny models on the CPU (the tests' path).
"""

from __future__ import annotations

import dataclasses
import gc
import platform
import tempfile
import time
from typing import Dict, List

import torch
from accelerate import Accelerator

from training.config import DistillConfig
from training.data import Cache, teacher_trajectory
from training.model_parts import ModelParts
from training.quantize import quantize_linears
from training.trainer import Trainer

from .families import REGISTRY, Denoiser, denoiser
from .recipe import COMPUTE, DTYPES, GIB, MEMORY_OPTIONS, compute_precision

GPU_FAMILIES = ("sd15", "sdxl")
GPU_OPTIONS = ("bf16", "bf16-gc")
WARMUP_STEPS, TIMED_STEPS = 1, 3
TEACHER_STEPS, TEACHER_TRAJECTORIES = 3, 8
TINY = dict(batch_size=2, timed_steps=1, teacher_steps=2, trajectories=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def random_cache(den: Denoiser, n: int) -> Cache:
    """A phase-1 cache of ``n`` items of random tensors with the real shapes (the trainer reads it on the CPU)."""
    shape = (n, den.latent_channels, den.latent_size, den.latent_size)
    cpu = torch.device("cpu")
    return Cache(torch.randn(shape), torch.randn(shape), torch.randn(shape), den.conditioning(n, cpu),
                 torch.full((n,), 0.1), ["a prompt"] * n)


def base_model(den: Denoiser, device: torch.device, base_precision: str) -> ModelParts:
    """The family's denoiser with random weights in ``base_precision`` on ``device`` (nf4 / int8: built in
    bf16, its linear layers then quantized as ``training.quantize`` does for the trainer), as a base
    model without text encoders or VAE."""
    model = den.model(device, DTYPES[compute_precision(base_precision)])
    if base_precision in COMPUTE:
        quantize_linears(model.unet, base_precision, DTYPES[COMPUTE[base_precision]])
    return model


def time_teacher(den: Denoiser, cfg: DistillConfig, device: torch.device, steps: int, trajectories: int) -> Dict:
    """Seconds per teacher step per trajectory of ``teacher_trajectory`` with the recipe's solver and
    guidance, ``trajectories`` at once in bf16, after one warm-up step."""
    model = base_model(den, device, "bf16")
    z = torch.randn(trajectories, den.latent_channels, den.latent_size, den.latent_size, device=device)
    cond, uncond = den.conditioning(trajectories, device), den.conditioning(trajectories, device)

    def run(k):
        return teacher_trajectory(model, z, cond, uncond, cfg.teacher_solver, k, cfg.teacher_cfg, den.resolution)

    run(1)
    seconds = _timed(lambda: run(steps), device)
    del model
    return {"teacher_steps": steps, "trajectories": trajectories, "seconds": round(seconds, 4),
            "s_per_teacher_step_per_trajectory": seconds / steps / trajectories}


def time_phase2(den: Denoiser, cfg: DistillConfig, device: torch.device, timed_steps: int) -> Dict:
    """Seconds per ``Trainer.train_step`` at ``cfg.batch_size`` and the peak memory allocated, or
    that the step ran out of memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    out_of_memory, times, model = False, [], None
    with tempfile.TemporaryDirectory(prefix="rayflow-gpu-") as work:
        try:
            model = base_model(den, device, cfg.base_precision)
            trainer = Trainer(dataclasses.replace(cfg, work_dir=work), model, random_cache(den, cfg.batch_size),
                              Accelerator())
            times = [_timed(trainer.train_step, device) for _ in range(WARMUP_STEPS + timed_steps)]
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
    trainer = model = None
    gc.collect()
    if out_of_memory:
        torch.cuda.empty_cache()
        return {"status": f"out of memory at batch {cfg.batch_size}", "batch_size": cfg.batch_size}
    out = {"status": "measured", "batch_size": cfg.batch_size, "step_times_s": [round(t, 4) for t in times],
           "s_per_step": sum(times[WARMUP_STEPS:]) / timed_steps,
           "s_per_step_note": f"mean of {timed_steps} steps after {WARMUP_STEPS} warm-up"}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
    else:
        out["peak_memory_gib"] = None
        out["peak_memory_note"] = "not measured on the CPU (torch.cuda.max_memory_allocated is the GPU's)"
    return out


def device_record(device: torch.device) -> Dict:
    """The machine a GPU measurement ran on."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"kind": "cuda", "name": props.name, "memory_gib": round(props.total_memory / GIB, 1),
                "torch": torch.__version__, "cuda": torch.version.cuda}
    return {"kind": "cpu", "name": f"the CPU ({platform.processor() or platform.machine()})", "torch": torch.__version__}


def measure(families: List[str], options: List[str], tiny: bool = False) -> Dict:
    """Time ``families`` with the memory ``options`` on this machine's GPU (``tiny``: the tiny
    models, on the CPU where there is no GPU). Returns the results record without the command."""
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif tiny:
        device = torch.device("cpu")
    else:
        raise RuntimeError("--gpu-measure needs a CUDA GPU (or --tiny, which runs the tiny models on the CPU)")
    out: Dict = {"kind": "gpu measurement", "device": device_record(device), "families": {}}
    for family in families:
        fam, den = REGISTRY[family], denoiser(family, tiny=tiny)
        # no phase 1 runs here: --sigma is given (the Ray process needs one; its value changes no cost)
        base = dict(model="-", prompts="-", output="-", sigma=0.1, **({"batch_size": TINY["batch_size"]} if tiny else {}))
        torch.manual_seed(0)
        rec = {"architecture": fam.architecture, "resolution": den.resolution,
               "teacher": time_teacher(den, fam.distill_config(den.resolution, **base), device,
                                       TINY["teacher_steps"] if tiny else TEACHER_STEPS,
                                       TINY["trajectories"] if tiny else TEACHER_TRAJECTORIES),
               "options": {}}
        for option in options:
            cfg = fam.distill_config(den.resolution, **base, **MEMORY_OPTIONS[option])
            rec["options"][option] = {"options": dict(MEMORY_OPTIONS[option]),
                                      **time_phase2(den, cfg, device, TINY["timed_steps"] if tiny else TIMED_STEPS)}
        out["families"][family] = rec
        print(f"bench.scale: {family} on {device}: " + ", ".join(
            f"{k} {v['s_per_step']:.3f} s/step" if v["status"] == "measured" else f"{k} {v['status']}"
            for k, v in rec["options"].items()), flush=True)
    return out
