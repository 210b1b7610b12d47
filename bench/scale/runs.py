"""One measured run in this process: ``training.distill.run`` with a memory option, or an untrained
LoRA export.

:func:`run_variant` times phase 1 per trajectory, phase 2 per step, the trainer's setup and the
export by wrapping the trainer's own functions for the length of the run (and restoring them
after), and reads this process's peak RSS; it writes ``progress.json`` in its work folder as it
goes, so that a run the watchdog stops still tells where it was. Each run is meant to be its own
subprocess (``python -m bench.scale.child``), so that the peak RSS is the run's alone.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Dict

import torch

import training.data
import training.export
import training.trainer
from rayflow.atomic_write import write_json, write_text
from training import distill
from training.config import DistillConfig
from training.export import export_state_dict, write_lora
from training.models import load_base_model
from training.trainer import add_lora, lora_state

from .families import REGISTRY
from .recipe import GIB, MEMORY_OPTIONS, PROMPTS, TINY_RESOLUTION


def maxrss_bytes() -> int:
    """This process's peak resident set size so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux reports KiB


def run_variant(family: str, model_dir: str, variant: str, work: str, steps: int, teacher_steps: int,
                prompts: int, batch_size: int, tiny: bool = False, grid: bool = False) -> Dict:
    """Run ``training.distill.run`` on ``model_dir`` with the memory option ``variant`` (of
    ``MEMORY_OPTIONS``) and return its timings, LoRA size and peak RSS (of this process). Writes
    ``work/progress.json`` as it goes."""
    os.makedirs(work, exist_ok=True)
    progress_path = os.path.join(work, "progress.json")
    rec: Dict = {"phase": "loading"}

    def mark(**kw):
        rec.update(kw)
        write_json(progress_path, rec)

    mark()
    prompt_file = os.path.join(work, "prompts.txt")
    write_text(prompt_file, "\n".join(PROMPTS[:prompts]) + "\n")
    cfg = DistillConfig(model=model_dir, prompts=prompt_file, output=os.path.join(work, "lora.safetensors"),
                        resolution=TINY_RESOLUTION if tiny else REGISTRY[family].resolution,
                        teacher_steps=teacher_steps, train_steps=steps, batch_size=batch_size, log_every=1,
                        checkpoint_every=max(1, steps), **MEMORY_OPTIONS[variant])
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
        mark(phase="phase 2", rss_phase1_peak=maxrss_bytes(), trajectories=[list(x) for x in traj])
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
        "options": dict(MEMORY_OPTIONS[variant]), "batch_size": batch_size, "train_steps": steps,
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
        "peak_rss_bytes": maxrss_bytes(), "peak_rss_phase1_bytes": rec.get("rss_phase1_peak"),
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
    cfg = DistillConfig()
    model = load_base_model(model_dir, dtype=torch.bfloat16)
    torch.manual_seed(0)
    add_lora(model.unet, cfg, pixart=REGISTRY[family].lora_in_blocks_only)
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
