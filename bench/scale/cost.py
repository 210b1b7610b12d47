"""Hours of the default recipe from a CPU run's measured speed."""

from __future__ import annotations

from typing import Dict

from .recipe import default


def cpu_estimates(res: Dict) -> Dict:
    """Hours for the default recipe's budget at a CPU run's measured speed (linear in batch size and steps)."""
    steps, batch, tsteps = default("train_steps"), default("batch_size"), default("teacher_steps")
    p2 = res["phase2_s_per_step"] * batch / res["batch_size"] * steps / 3600
    p1 = res["phase1_s_per_teacher_step"] * tsteps * 1000 / 3600
    return {"phase2_hours_default_recipe": round(p2, 2), "phase1_hours_per_1000_prompts": round(p1, 2),
            "how": f"phase 2: s/step x {batch} / {res['batch_size']} (default --batch-size over the measured one) x "
                   f"{steps} default --train-steps; phase 1: s per teacher step per trajectory x {tsteps} default "
                   f"--teacher-steps x 1000 prompts (x --seeds-per-prompt); both assume time linear in batch and steps"}
