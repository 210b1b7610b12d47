"""Statistics over training seeds: t-intervals of a mean and of paired differences.

A quality claim in ``docs/benchmarks.md`` is a mean over training seeds with its 95 % confidence
interval (Student's t, ``n - 1`` degrees of freedom); two variants are compared by the mean of
their per-seed differences over the seeds both have (the same seed gives both the same batches,
timesteps and evaluation noise, so the difference cancels what they share), and one is "better"
only where that interval excludes zero. A family of comparisons that makes one claim (the headline:
RayFlow against each baseline at 1, 2, 4 and 8 steps) is judged on Holm-adjusted paired t-tests.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

from scipy.stats import t as t_dist


def t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom."""
    return float(t_dist.ppf(p, dof))


def mean_ci(values: Sequence[Optional[float]], level: float = 0.95) -> Dict[str, object]:
    """``{"mean", "ci95": [lo, hi] or None, "n", "per_seed"}`` of the non-missing ``values``.

    ``per_seed`` keeps ``values`` as given (``None`` for a seed not measured yet); the interval
    needs two or more values and is ``mean ± t_{(1+level)/2, n-1} * s / sqrt(n)``.
    """
    xs = [float(v) for v in values if v is not None]
    out: Dict[str, object] = {"mean": None, "ci95": None, "n": len(xs), "per_seed": list(values)}
    if not xs:
        return out
    m = sum(xs) / len(xs)
    out["mean"] = m
    if len(xs) >= 2:
        s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
        half = t_quantile((1 + level) / 2, len(xs) - 1) * s / math.sqrt(len(xs))
        out["ci95"] = [m - half, m + half]
    return out


def paired_difference(a: Sequence[Optional[float]], b: Sequence[Optional[float]], level: float = 0.95) -> Dict[str, object]:
    """Mean and CI of ``a[i] - b[i]`` over the seeds ``i`` where both are measured."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds, got {len(a)} and {len(b)} entries")
    return mean_ci([x - y if x is not None and y is not None else None for x, y in zip(a, b)], level)


def verdict(diff: Dict[str, object], lower_is_better: bool = True) -> str:
    """``"better"``, ``"worse"`` or ``"no difference shown"`` for a paired difference ``a - b``
    (``a`` better where the whole interval lies on the good side of zero)."""
    ci: Optional[List[float]] = diff.get("ci95")  # type: ignore[assignment]
    if not ci:
        return "no difference shown"
    lo, hi = ci
    if (hi < 0) if lower_is_better else (lo > 0):
        return "better"
    if (lo > 0) if lower_is_better else (hi < 0):
        return "worse"
    return "no difference shown"


def paired_p_value(diff: Dict[str, object]) -> Optional[float]:
    """Two-sided p-value of the paired t-test that the mean of the per-seed differences in ``diff``
    (:func:`paired_difference`) is zero; ``None`` with fewer than two seeds. Zero spread with a
    nonzero mean gives 0.0."""
    xs = [float(v) for v in diff["per_seed"] if v is not None]
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    if s == 0:
        return 0.0 if m != 0 else 1.0
    return float(2 * t_dist.sf(abs(m) / (s / math.sqrt(len(xs))), len(xs) - 1))


def holm(p_values: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm's step-down adjustment of a family of p-values (``None`` entries are left out of the
    family and come back as ``None``): the k-th smallest of m is multiplied by ``m - k + 1``, and the
    adjusted values are made non-decreasing in that order (capped at 1)."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    out: List[Optional[float]] = [None] * len(p_values)
    running = 0.0
    for k, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - k) * p))
        out[i] = running
    return out


def holm_verdict(mean_diff: Optional[float], adjusted_p: Optional[float], lower_is_better: bool = True,
                 level: float = 0.05) -> str:
    """``better`` / ``worse`` where the Holm-adjusted p-value is below ``level`` (direction from the
    mean difference ``a - b``), else ``no difference shown``."""
    if mean_diff is None or adjusted_p is None or adjusted_p >= level or mean_diff == 0:
        return "no difference shown"
    return "better" if (mean_diff < 0) == lower_is_better else "worse"
