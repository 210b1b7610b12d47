"""Ray SIGMAS for a ComfyUI model: its own noise-level table, trailing Ray timesteps, and denoise."""

from __future__ import annotations

import torch

from ..rayflow import EPS, FlowSchedule, Interpolation, NoiseSchedule


def ray_sigmas_for(model_sigmas: torch.Tensor, steps: int, denoise: float = 1.0,
                   interpolation: Interpolation = EPS) -> torch.Tensor:
    """Noise-level schedule ``[steps + 1]`` (float32, CPU) from a model's table of noise levels
    (``model_sampling.sigmas``: sigma-form levels of an EPS model, flow levels in (0, 1] of a CONST
    model, ``interpolation`` says which; docs/method.md section 1 and eq. 10.9).

    As ComfyUI's stock schedulers do for ``denoise < 1``, a schedule of ``round(steps / denoise)``
    steps is built and its last ``steps + 1`` levels are kept; ``denoise <= 0`` gives an empty
    schedule (nothing to do).
    """
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be in [0, 1], got {denoise}")
    if denoise <= 0.0:
        return torch.zeros(0)
    schedule = FlowSchedule.from_sigmas(model_sigmas) if interpolation.name == "flow" \
        else NoiseSchedule.from_sigmas(model_sigmas)
    total = min(schedule.num_timesteps, max(steps, int(round(steps / denoise))))
    return schedule.ray_sigmas(total)[-(steps + 1):].clone()
