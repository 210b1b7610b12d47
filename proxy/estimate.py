"""What a demo run will do and roughly how long it takes on a 2-core CPU (an estimate, not a promise).

The unit costs come from one measurement (``docs/experiments.md``, "Proxy demo, seed 0": the full
demo with the default preset on 2 CPU cores with nothing else running, whole run 624 s), read off its
work folder's file times and ``log.csv``:

* phase 1: 54 s for 576 trajectories of 25 CFG steps (28 800 evaluations), 1.9 ms per denoiser
  evaluation of one item;
* phase 2: 388 s of training for 1200 steps of batch 32 (the median logged rate, 98 samples/s, over
  the intervals without an evaluation), 10.1 ms per sample and step;
* evaluation: 181 s over 432 images x (121 + 3 x 7) evaluations: the rows without the LoRA once
  (teacher reference 25 x 2, teacher DDIM 25 x 2, DDIM (1+2+4) x 2), the RayFlow rows (1+2+4) at each
  of the 3 snapshots and at the end; 2.9 ms per image and evaluation, loading and metrics included.

A busy machine is slower by whatever share of the cores other work takes.
"""

from __future__ import annotations

from typing import Dict

PHASE1_S_PER_EVAL = 54.1 / (576 * 50)
PHASE2_S_PER_SAMPLE = 388.0 / (1200 * 32)
SNAPSHOT_NFE = 1 + 2 + 4                              # a snapshot's evaluation redoes only the RayFlow rows
FIXED_NFE = 25 * 2 + 25 * 2 + (1 + 2 + 4) * 2         # the rows without the LoRA, computed once per run
EVAL_NFE = FIXED_NFE + SNAPSHOT_NFE                   # the first evaluation, per image
EVAL_S_PER_EVAL = 180.7 / (432 * (EVAL_NFE + 3 * SNAPSHOT_NFE))


def estimate_seconds(trajectories: int, teacher_steps: int, teacher_cfg: float, train_steps: int,
                     batch_size: int, eval_images: int, snapshot_evals: int = 0) -> Dict[str, float]:
    """Estimated seconds of each part of a demo run on an idle 2-core CPU: ``phase1``, ``phase2``
    (with ``snapshot_evals`` evaluations of LoRA snapshots), ``eval`` and their ``total``."""
    evals = trajectories * teacher_steps * (2 if teacher_cfg != 1 else 1)
    parts = {"phase1": evals * PHASE1_S_PER_EVAL,
             "phase2": train_steps * batch_size * PHASE2_S_PER_SAMPLE
             + snapshot_evals * eval_images * SNAPSHOT_NFE * EVAL_S_PER_EVAL,
             "eval": eval_images * EVAL_NFE * EVAL_S_PER_EVAL}
    parts["total"] = sum(parts.values())
    return parts


def human_duration(seconds: float) -> str:
    """``about 40 s``, ``about 1 minute`` or ``about 13 minutes``."""
    if seconds < 45:
        return f"about {max(1, round(seconds / 5) * 5)} s"
    minutes = max(1, round(seconds / 60))
    return f"about {minutes} minute{'s' if minutes > 1 else ''}"


def plan_line(mode: str, trajectories: int, teacher_steps: int, teacher_cfg: float, train_steps: int,
              batch_size: int, eval_images: int, work_dir: str, snapshot_evals: int = 0) -> str:
    """One line saying what the run will do and its estimated duration on 2 CPU cores."""
    t = estimate_seconds(trajectories, teacher_steps, teacher_cfg, train_steps, batch_size, eval_images, snapshot_evals)
    return (f"proxy demo ({mode}): phase 1 runs the teacher on {trajectories} noise seeds ({teacher_steps} steps, "
            f"CFG {teacher_cfg:g}), phase 2 trains the LoRA {train_steps} steps of batch {batch_size}, then "
            f"{eval_images} images per sampler are evaluated; estimate for 2 idle CPU cores: "
            f"{human_duration(t['total'])} (phase 1 {human_duration(t['phase1'])}, phase 2 {human_duration(t['phase2'])}, "
            f"evaluation {human_duration(t['eval'])}; longer on a busy machine); work folder {work_dir}")
