"""A family too large for this machine's memory measured with fewer blocks, and extrapolated to all.

FLUX.1-dev's transformer is 12 B parameters, 24 GB in bf16, and the trainer loads it in bf16 even for
a quantized base, so the whole model does not fit this machine. ``python -m bench.scale --blocks A,B``
measures it at full width with ``A`` and then ``B`` units of depth (``Family.block_unit``: FLUX's
unit is 1 double-stream and 2 single-stream blocks, 19 of them in the full model; everything else is
the full model's) and extrapolates each figure linearly in the number of units: per-unit figure =
(figure at B - figure at A) / (B - A), full-depth figure = figure at A + (units - A) x per-unit. The
peak RSS is extrapolated phase by phase (loading, phase 1, phase 2: each run restarts its peak at
each phase), and the whole run's is the largest of the three, since the phase that peaks can change
with depth. Both runs are kept in the row beside the extrapolation, which is labelled as one
wherever it is shown.
"""

from __future__ import annotations

from typing import Dict, List

from .cost import cpu_estimates
from .recipe import GIB

EXTRAPOLATED = "extrapolated"
PHASES = ("load", "phase 1", "phase 2")
# figures of a measured run that are linear in depth, and what is copied from the deeper run
LINEAR = ("phase1_s_per_trajectory", "phase1_s_per_teacher_step", "phase2_s_per_step")
COPIED = ("options", "batch_size", "train_steps", "teacher_steps", "trajectories", "teacher_cfg", "phase1_denoiser_batch")


def _line(a: int, fa: float, b: int, fb: float, units: int) -> Dict[str, float]:
    per = (fb - fa) / (b - a)
    return {"per_unit": per, "full": fa + (units - a) * per}


def extrapolate(runs: Dict[int, Dict], units: int, recipe: Dict) -> Dict:
    """The row of a memory option measured at two depths (``runs``: units of depth -> the run's
    result, both measured), extrapolated to ``units``; its CPU hours at the family's ``recipe``."""
    (a, ra), (b, rb) = sorted(runs.items())
    if not (ra.get("peak_rss_by_phase_bytes") and rb.get("peak_rss_by_phase_bytes")):
        raise ValueError("extrapolating the peak RSS needs each phase's peak (not measured on this system)")
    out: Dict = {k: rb[k] for k in COPIED if k in rb}
    per_unit: Dict = {}
    for key in LINEAR:
        line = _line(a, ra[key], b, rb[key], units)
        out[key], per_unit[key] = line["full"], line["per_unit"]
    by_phase: Dict[str, float] = {}
    for phase in PHASES:
        line = _line(a, ra["peak_rss_by_phase_bytes"][phase], b, rb["peak_rss_by_phase_bytes"][phase], units)
        by_phase[phase], per_unit[f"peak_rss_{phase.replace(' ', '')}_bytes"] = round(line["full"]), line["per_unit"]
    out.update(
        status=EXTRAPOLATED, units_measured=[a, b], units_full=units,
        peak_rss_by_phase_bytes=by_phase, peak_rss_bytes=max(by_phase.values()),
        peak_rss_phase1_bytes=max(by_phase["load"], by_phase["phase 1"]),
        peak_rss_gib=round(max(by_phase.values()) / GIB, 2), per_unit=per_unit,
        phase2_step_times_s=[], phase2_s_per_step_note=f"extrapolated from the measured runs' s/step ({a} and {b} units)",
        how=(f"measured at {a} and {b} units of depth at full width, each figure extrapolated linearly to {units} "
             f"units: figure at {a} + ({units} - {a}) x (figure at {b} - figure at {a}) / {b - a}; the peak RSS per "
             f"phase (loading, phase 1, phase 2), the whole run's the largest"),
        measured={str(u): r for u, r in sorted(runs.items())})
    out["estimates"] = cpu_estimates(out, recipe)
    return out


def measured_points(row: Dict) -> List[str]:
    """The measured runs of an extrapolated row, one phrase each: depth, peak RSS per phase, speeds."""
    out = []
    for u, r in row["measured"].items():
        peaks = r.get("peak_rss_by_phase_bytes") or {}
        out.append(f"{u} unit{'s' if u != '1' else ''}: peak RSS {r['peak_rss_gib']:.1f} GiB (" +
                   ", ".join(f"{p} {peaks[p] / GIB:.1f}" for p in PHASES if p in peaks) +
                   f"), {r['phase1_s_per_trajectory']:.1f} s/trajectory, {r['phase2_s_per_step']:.1f} s/step")
    return out
