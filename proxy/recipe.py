"""The proxy recipe: the committed teacher and classifier, and the one ``DistillConfig`` factory
that the demo and every benchmark distil with.

The proxy teacher (``proxy/teacher.py``) is an SD-shaped pixel-space model at 16 x 16; its phase-1
data are 25 DPM-Solver++ steps with CFG 3 on the 72 proxy captions. Phase 2 trains a rank-16 LoRA
(alpha 16) at batch 32 with AdamW at lr 1e-3 (20 warm-up steps, cosine decay) and the Ray process
with sigma 0.1 — what ``proxy_config`` returns unless told otherwise.
"""

from __future__ import annotations

import os
from typing import List

from rayflow.atomic_write import write_text
from training.config import DistillConfig

from .data import all_labels, caption_of

HERE = os.path.dirname(os.path.abspath(__file__))
TEACHER = os.path.join(HERE, "weights", "teacher")
CLASSIFIER = os.path.join(HERE, "weights", "classifier.safetensors")
RESOLUTION = 16
TEACHER_SOLVER, TEACHER_STEPS, TEACHER_CFG = "dpmsolver++", 25, 3.0
# Ray variance coefficient: the Theorem-1 spread of this teacher's trajectories is about 0.1 (what
# --sigma auto picks, 0.0988 on the benchmark cache); over 3 seeds 0.1 beat 0.03 at 4-8 steps and
# 0.3 at 1-2 steps (docs/benchmarks.md, "Recipe defaults")
SIGMA = 0.1
# phase 2 of the proxy recipe: every option ``proxy_config`` sets unless the caller overrides it
PHASE2 = dict(batch_size=32, learning_rate=1e-3, lr_warmup=20, lora_rank=16, lora_alpha=16.0, sigma=SIGMA,
              loss_weighting="truncated-snr")


def proxy_config(output: str, work_dir: str, prompts: str, **options) -> DistillConfig:
    """The ``DistillConfig`` of the proxy recipe writing ``output`` from ``work_dir`` for the prompts
    file ``prompts``: the committed teacher, 16 x 16, its phase-1 solver, steps and CFG, shards of
    64, ``PHASE2``, then ``options`` (any ``DistillConfig`` field). Not yet validated."""
    fields = dict(model=TEACHER, prompts=prompts, output=output, work_dir=work_dir, resolution=RESOLUTION,
                  teacher_solver=TEACHER_SOLVER, teacher_steps=TEACHER_STEPS, teacher_cfg=TEACHER_CFG, shard_size=64,
                  **PHASE2)
    return DistillConfig(**{**fields, **options})


def captions() -> List[str]:
    """Every proxy caption, in the order of ``proxy.data.all_labels``."""
    return [caption_of(label) for label in all_labels().tolist()]


def write_prompts(path: str) -> str:
    """Write every proxy caption, one per line, to ``path`` (the prompts file of a proxy run)."""
    write_text(path, "".join(c + "\n" for c in captions()))
    return path
