"""Target-mean estimation from any denoiser (Theorem 1 applied to a probe trajectory).

``docs/method.md`` section 5.3: run a short deterministic (DDIM / Euler) probe of the *base*
model from the seeded start point, record the noise it attributes to every probe point, and feed
the trajectory to :meth:`RayProcess.theorem1`. Costs ``probe_steps`` model evaluations (times
two with classifier-free guidance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .process import RayProcess, compute_dtype
from .samplers import denoiser_from_eps
from .schedule import EPS, Interpolation, NoiseSchedule, alpha_bar_from_sigma
from .validation import check_finite, check_int


@dataclass
class TargetMean:
    """Result of a probe.

    Attributes:
        eps_mu: ``[B, ...]`` target mean in VP noise units.
        sigma: ``[B]`` Theorem-1 spread of the noise predictions around it.
        nfe: model evaluations spent (per sample, before CFG doubling).
        sample: ``[B, ...]`` end point of the probe (a ``P``-step DDIM sample when the probe
            schedule ends at 0), in the space of the input ``x``.
    """

    eps_mu: torch.Tensor
    sigma: torch.Tensor
    nfe: int
    sample: torch.Tensor


@torch.no_grad()
def estimate_target_mean(model, x: torch.Tensor, sigmas: torch.Tensor, process: Optional[RayProcess] = None,
                         extra_args: Optional[dict] = None,
                         callback: Optional[Callable[[dict], None]] = None,
                         interpolation: Interpolation = EPS) -> TargetMean:
    """Probe the trajectory from ``x`` over ``sigmas`` and apply Theorem 1.

    At every probe point the attributed noise is ``n = (x - alpha(s) x0) / beta(s)`` in
    ``interpolation``'s space (eq. 1.3; flow: ``x + (1 - t) v``, eq. 10.4, 10.6), and the next point is
    the deterministic step ``alpha(s') x0 + beta(s') n`` (DDIM / flow Euler).

    Args:
        model: denoiser ``(x [B, ...], sigma [B], **extra_args) -> x0``.
        x: start point ``[B, ...]`` in ``interpolation``'s space (ComfyUI: the scaled seeded noise).
        sigmas: probe schedule ``[P + 1]``, decreasing, ending in 0 (P probe evaluations).
        process: supplies the path coefficients ``c(a)``; default ``RayProcess()``.
        interpolation: :data:`rayflow.schedule.EPS` (sigma form) or :data:`rayflow.schedule.FLOW`.
    Returns:
        :class:`TargetMean` with ``eps_mu`` in ``x``'s dtype.
    """
    process = RayProcess() if process is None else process
    extra_args = {} if extra_args is None else extra_args
    check_finite("x", x)
    sig = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)
    if sig.ndim != 1 or sig.numel() < 2 or bool((sig[:-1] <= 0).any()):
        raise ValueError("sigmas must be a 1-D probe schedule of >= 2 entries, > 0 except the last")
    dt = compute_dtype(x)
    s_in = x.new_ones([x.shape[0]])
    preds, alphas = [], []
    al, be = interpolation.coefficients(sig)
    for i in range(sig.numel() - 1):
        denoised = model(x, torch.as_tensor(sigmas)[i] * s_in, **extra_args)
        eps = (x.to(dt) - float(al[i]) * denoised.to(dt)) / float(be[i])     # attributed noise (eq. 1.3, 10.4)
        preds.append(eps)
        alphas.append(interpolation.alpha_bar(sig[i]))
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised})
        x = (float(al[i + 1]) * denoised.to(dt) + float(be[i + 1]) * eps).to(x.dtype)  # DDIM / Euler step
    eps_mu, spread = process.theorem1(torch.stack(preds), torch.stack(alphas))
    return TargetMean(eps_mu=eps_mu.to(x.dtype), sigma=spread, nfe=len(preds), sample=x)


@torch.no_grad()
def estimate_target_mean_vp(eps_model, x_T: torch.Tensor, schedule: NoiseSchedule, probe_steps: int,
                            process: Optional[RayProcess] = None) -> TargetMean:
    """VP-form wrapper: probe ``probe_steps`` DDIM steps of ``eps_model(x_t, t)`` from the VP start
    ``x_T`` (at timestep ``T - 1``) on the trailing schedule, then apply Theorem 1."""
    probe_steps = check_int("probe_steps", probe_steps, 1, schedule.num_timesteps)
    sigmas = schedule.ray_sigmas(probe_steps, dtype=torch.float64)
    a0 = alpha_bar_from_sigma(sigmas[0])
    x = (x_T.to(compute_dtype(x_T)) / float(a0.sqrt())).to(x_T.dtype)
    return estimate_target_mean(denoiser_from_eps(eps_model, schedule), x, sigmas, process)
