"""Argument checks shared by the kernels.

Every public kernel validates its inputs with these helpers so that bad input fails early with a
``ValueError`` that names the argument and the allowed range, instead of producing NaNs or a
silently wrong image several steps later.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or +-inf."""
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf); all entries must be finite")


def check_scalar(name: str, value: float, low: float, high: float, *, low_open: bool = False,
                 high_open: bool = False) -> float:
    """Check ``low <= value <= high`` (``<`` on an open end); return ``value`` as a float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    lo_ok = v > low if low_open else v >= low
    hi_ok = v < high if high_open else v <= high
    if not (math.isfinite(v) and lo_ok and hi_ok):
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lb}{low}, {high}{hb}, got {value!r}")
    return v


def check_int(name: str, value: int, low: int, high: int | None = None) -> int:
    """Check that ``value`` is an integer in ``[low, high]`` (``high=None``: unbounded)."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = "inf" if high is None else str(high)
        raise ValueError(f"{name} must be an integer in [{low}, {upper}], got {value}")
    return value


def check_same_shape(names: Sequence[str], *tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` unless all tensors share one shape."""
    shapes = [tuple(t.shape) for t in tensors]
    if any(s != shapes[0] for s in shapes[1:]):
        listed = ", ".join(f"{n}{list(s)}" for n, s in zip(names, shapes))
        raise ValueError(f"shape mismatch: {listed}; these must have the same shape")
