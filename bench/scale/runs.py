"""One measured run in this process: ``training.distill.run`` with a memory option, or an untrained
LoRA export.

:func:`run_variant` times phase 1 per trajectory, phase 2 per step, the trainer's setup and the
export by wrapping the trainer's own functions for the length of the run (and restoring them
after), and reads this process's peak RSS, whole and per phase (loading the model, phase 1, phase 2
with the export: on Linux the peak is restarted at each phase's start); it writes ``progress.json``
in its work folder as it goes, so that a run the watchdog stops still tells where it was. Each run
is meant to be its own subprocess (``python -m bench.scale.child``), so that the peak RSS is the
run's alone. :func:`export_untrained_lora` writes a LoRA with the keys a trained file has without
any weights of the model: its denoiser is built on the meta device.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Dict

import torch

import training.data
import training.export
import training.models
import training.trainer
from rayflow.atomic_write import write_json, write_text
from training import distill
from training.export import export_state_dict, write_lora
from training.trainer import add_lora, lora_state

from .cost import cpu_estimates
from .families import REGISTRY, denoiser
from .recipe import GIB, MEMORY_OPTIONS, PROMPTS, TINY_RESOLUTION

PHASES = ("load", "phase 1", "phase 2")


def maxrss_bytes() -> int:
    """This process's peak resident set size so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux reports KiB


def restart_peak() -> bool:
    """Restart this process's peak RSS from its current RSS (Linux: ``5`` to ``/proc/self/clear_refs``, a
    kernel control, not a file); False where that cannot be done (the peak then keeps counting)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as control:
            control.write("5")
        return True
    except OSError:
        return False


def run_variant(family: str, model_dir: str, variant: str, work: str, steps: int, teacher_steps: int,
                prompts: int, batch_size: int, tiny: bool = False, grid: bool = False) -> Dict:
    """Run ``training.distill.run`` on ``model_dir`` with the family's recipe and the memory option
    ``variant`` (of ``MEMORY_OPTIONS``) and return its timings, LoRA size and peak RSS (of this process,
    whole and per phase), with the hours of the family's recipe at these speeds. Writes
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
    fam = REGISTRY[family]
    cfg = fam.distill_config(TINY_RESOLUTION if tiny else None, model=model_dir, prompts=prompt_file,
                             output=os.path.join(work, "lora.safetensors"), teacher_steps=teacher_steps,
                             train_steps=steps, batch_size=batch_size, log_every=1, checkpoint_every=max(1, steps),
                             **MEMORY_OPTIONS[variant])
    traj, step_times, state, peaks = [], [], {}, {}
    orig_traj, orig_step = training.data.teacher_trajectory, training.trainer.Trainer.train_step
    orig_init, orig_grid = training.trainer.Trainer.__init__, training.trainer.Trainer.validation_grid
    orig_write, orig_load = training.export.write_lora, training.data.load_cache
    orig_model = training.models.load_base_model
    per_phase = restart_peak()

    def loaded(*a, **kw):
        model = orig_model(*a, **kw)
        peaks["load"] = maxrss_bytes()
        restart_peak()
        return model

    def timed_traj(model, z, *a, **kw):
        t0 = time.perf_counter()
        out = orig_traj(model, z, *a, **kw)
        traj.append((time.perf_counter() - t0, int(z.shape[0])))
        return out

    def timed_load_cache(folder):
        peaks["phase 1"] = maxrss_bytes()
        restart_peak()
        mark(phase="phase 2", rss_phase1_peak=max(peaks.values()), trajectories=[list(x) for x in traj])
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

    training.models.load_base_model = loaded
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
        training.models.load_base_model = orig_model
    total = time.perf_counter() - t0
    peaks["phase 2"] = maxrss_bytes()
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
        "peak_rss_bytes": max(peaks.values()), "peak_rss_phase1_bytes": rec.get("rss_phase1_peak"),
        "peak_rss_by_phase_bytes": peaks if per_phase else None,
        "peak_rss_by_phase_note": ("each phase's own peak: the peak was restarted at its start (phase 2 includes the "
                                   "export)" if per_phase else "not measured: the peak RSS could not be restarted here"),
        "lora_params": state["lora_params"], "lora_modules": state["lora_modules"],
        "lora_file_bytes": os.path.getsize(cfg.output), "lora_file_precision": cfg.save_precision,
        "lora": cfg.output,
    }
    out["peak_rss_gib"] = round(out["peak_rss_bytes"] / GIB, 2)
    out["estimates"] = cpu_estimates(out, fam.options())
    state.clear()
    mark(phase="done")
    return out


def export_untrained_lora(family: str, path: str, tiny: bool = False) -> Dict:
    """A LoRA file with the keys ``training.distill`` exports from the full-size model (``tiny``: the
    tiny one), without training and without its weights: the family's targets injected by
    ``training.trainer.add_lora`` into the denoiser built on the meta device (on its blocks, its unused
    layers excluded, as the trainer does), the adapters then drawn (``lora_A`` from N(0, 1e-2),
    ``lora_B`` from N(0, 1e-3): an all-zero file is refused as damaged) instead of trained, written by
    ``training.export``. For the key match, which needs every module of the full-size model."""
    cfg = REGISTRY[family].distill_config()
    model = denoiser(family, tiny=tiny).model(torch.device("meta"), torch.bfloat16)
    add_lora(model.unet, cfg, blocks=model.lora_blocks, exclude=model.lora_exclude)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) * (1e-3 if "lora_B" in k else 1e-2)
             for k, v in lora_state(model.unet).items()}
    write_lora(path, export_state_dict(model.architecture, state, cfg.lora_rank, cfg.lora_alpha),
               {"rayflow.architecture": model.architecture})
    return {"lora": path, "lora_params": sum(v.numel() for v in state.values()),
            "lora_modules": sum(1 for k in state if k.endswith("lora_A.weight")), "lora_file_bytes": os.path.getsize(path),
            "lora_file_precision": cfg.save_precision}
