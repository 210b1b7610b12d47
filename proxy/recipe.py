"""The proxy recipes: the committed teachers and classifier, and the ``DistillConfig`` factory that the
demo and every benchmark distil with.

Two proxy families, each a :class:`ProxyRecipe` (``RECIPES``; ``bench.quality --proxy vp|flow``):

* ``vp`` (``VP``): the SD-shaped epsilon teacher (``proxy/teacher.py``), a pixel-space UNet at 16 x 16;
  its phase-1 data are 25 DPM-Solver++ steps with CFG 3 on the 72 proxy captions. Phase 2 trains a
  rank-16 LoRA (alpha 16) at batch 32 with AdamW at lr 1e-3 (20 warm-up steps, cosine decay) and the
  Ray process with sigma 0.1 -- what ``proxy_config`` returns unless told otherwise.
* ``flow`` (``FLOW``): the SD3-shaped rectified-flow teacher (``proxy/teacher_flow.py``), a pixel-space
  ``SD3Transformer2DModel`` at 16 x 16 with CLIP-L, CLIP-G and T5, distilled by the same
  ``training.distill`` code path as SD3 / SD3.5 (the family's Euler solver, here 25 steps, with CFG 3);
  phase 2 is the VP recipe's (``PHASE2``), so that the two verdicts differ in the teacher only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from rayflow.atomic_write import write_text
from training.config import DistillConfig

from .data import all_labels, caption_of

HERE = os.path.dirname(os.path.abspath(__file__))
TEACHER = os.path.join(HERE, "weights", "teacher")
FLOW_TEACHER = os.path.join(HERE, "weights", "flow_teacher")
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
SOLVER_NAMES = {"ddim": "DDIM", "dpmsolver++": "DPM-Solver++", "euler": "Euler"}


@dataclass(frozen=True)
class ProxyRecipe:
    """One proxy family: its ``teacher`` folder, the phase-1 ``solver`` / ``steps`` / ``cfg`` (the
    distillation target, and the reference of every FD to the teacher), the teacher's two benchmark
    ``solvers`` (first order, then higher order) and the phase-2 options ``phase2``."""
    name: str
    teacher: str
    solver: str
    steps: int
    cfg: float
    solvers: Tuple[str, str]
    phase2: Dict[str, object] = field(default_factory=dict)

    def config(self, output: str, work_dir: str, prompts: str, **options) -> DistillConfig:
        """The ``DistillConfig`` of this recipe writing ``output`` from ``work_dir`` for the prompts file
        ``prompts``: the teacher, 16 x 16, the phase-1 solver, steps and CFG, shards of 64, ``phase2``,
        then ``options`` (any ``DistillConfig`` field). Not yet validated."""
        fields = dict(model=self.teacher, prompts=prompts, output=output, work_dir=work_dir, resolution=RESOLUTION,
                      teacher_solver=self.solver, teacher_steps=self.steps, teacher_cfg=self.cfg, shard_size=64,
                      **self.phase2)
        return DistillConfig(**{**fields, **options})

    def describe(self) -> str:
        """``<teacher folder>, <solver> <steps> steps, CFG <cfg>``: the distillation target, in words."""
        return f"proxy/weights/{os.path.basename(self.teacher)}, {self.target()} steps, CFG {self.cfg:g}"

    def target(self) -> str:
        """``<solver> <steps>`` of the phase-1 cache, e.g. ``DPM-Solver++ 25``."""
        return f"{SOLVER_NAMES[self.solver]} {self.steps}"

    def load(self):
        """The teacher as ``training.distill`` loads it at the proxy's resolution (``BaseModel`` or ``FlowModel``)."""
        from training.models import load_base_model

        return load_base_model(self.teacher, resolution=RESOLUTION)


VP = ProxyRecipe("vp", TEACHER, TEACHER_SOLVER, TEACHER_STEPS, TEACHER_CFG, ("ddim", "dpmsolver++"), PHASE2)
# the flow teacher's phase 1: SD3's default solver (flow Euler) at the VP recipe's 25 steps and CFG; phase 2 the
# VP recipe's (sigma 0.1 included): one recipe, two teachers
FLOW = ProxyRecipe("flow", FLOW_TEACHER, "euler", 25, TEACHER_CFG, ("euler", "dpmsolver++"), PHASE2)
RECIPES = {r.name: r for r in (VP, FLOW)}


def proxy_config(output: str, work_dir: str, prompts: str, **options) -> DistillConfig:
    """The ``DistillConfig`` of the VP proxy recipe (``VP.config``): the demo's and the VP benchmark's."""
    return VP.config(output, work_dir, prompts, **options)


def captions() -> List[str]:
    """Every proxy caption, in the order of ``proxy.data.all_labels``."""
    return [caption_of(label) for label in all_labels().tolist()]


def write_prompts(path: str, count: Optional[int] = None) -> str:
    """Write every proxy caption (or the first ``count``), one per line, to ``path`` (the prompts file
    of a proxy run)."""
    write_text(path, "".join(c + "\n" for c in captions()[:count]))
    return path
