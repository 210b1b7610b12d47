"""The Ray process on the rectified-flow path (``docs/method.md`` section 10): SD3 / SD3.5 / FLUX.1.

Flow models place a point at noise level ``t`` in (0, 1] as ``x_t = (1 - t) x0 + t n`` and predict the
velocity ``v = n - x0`` (ComfyUI's CONST models, diffusers' flow-match schedulers). The Ray noise is
``n = mu + sigma xi`` (the sigma path, eq. 10.2). Dividing by ``r(t) = sqrt((1 - t)^2 + t^2)`` gives the
VP point ``sqrt(a) x0 + sqrt(1 - a) n`` with ``a = (1 - t)^2 / r(t)^2`` (eq. 10.3), so the marginals,
the posterior, the eta step and Theorem 1 are those of :class:`rayflow.RayProcess` on its sigma path,
reached through :data:`rayflow.schedule.FLOW`; this module holds only what the velocity
parameterisation and the shifted time grids add.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from .process import Alpha, RayProcess, compute_dtype, per_sample
from .schedule import FLOW, Interpolation, RaySchedule
from .validation import check_finite, check_int, check_same_shape, check_scalar




def time_shift(u, shift: float) -> torch.Tensor:
    """``sigma = shift u / (1 + (shift - 1) u)`` (eq. 10.9), float64, the shape of ``u``.

    SD3 / SD3.5 use ``shift = 3`` (ComfyUI's ``time_snr_shift``, diffusers' static shift); FLUX's
    ``e^mu / (e^mu + 1/u - 1)`` (ComfyUI's ``flux_time_shift``) is the same map with ``shift = e^mu``.
    """
    shift = check_scalar("shift", shift, 0.0, 1e4, low_open=True)
    u = torch.as_tensor(u).detach().to("cpu", torch.float64)
    return shift * u / (1.0 + (shift - 1.0) * u)


def flux_mu(width: int, height: int, base_shift: float = 0.5, max_shift: float = 1.15, base_seq_len: int = 256,
            max_seq_len: int = 4096, pixels_per_token: int = 16) -> float:
    """FLUX's resolution-dependent ``mu`` (eq. 10.9) for an image of ``width x height`` pixels: linear in
    the number of image tokens ``width height / pixels_per_token^2`` (FLUX: VAE factor 8 times 2x2
    patches = 16), ``base_shift`` at ``base_seq_len`` tokens and ``max_shift`` at ``max_seq_len`` (FLUX.1:
    0.5 at 256, 1.15 at 4096 = 1024 x 1024), as diffusers' ``calculate_shift`` and ComfyUI's
    ``ModelSamplingFlux`` node compute it."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    tokens = width * height / float(pixels_per_token * pixels_per_token)
    return float(base_shift + slope * (tokens - base_seq_len))


@dataclass(frozen=True)
class FlowSchedule(RaySchedule):
    """The discrete noise levels ``t_k`` (k = 0..T-1, increasing, ``t_{T-1} = 1``) of a flow model.

    Attributes:
        sigmas: float64 ``[T]``, in (0, 1], strictly increasing, ending at 1 -- ComfyUI's
            ``model_sampling.sigmas`` for a CONST model, or :meth:`shifted`'s table.
        shift: the time-shift factor the table was made with (informational; 0 when unknown).
    """

    sigmas: torch.Tensor
    shift: float = 0.0
    interpolation: Interpolation = FLOW

    def __post_init__(self) -> None:
        t = torch.as_tensor(self.sigmas).detach().to("cpu", torch.float64)
        check_finite("sigmas", t)
        if t.ndim != 1 or t.numel() < 2:
            raise ValueError(f"a flow schedule needs a 1-D table of at least 2 noise levels, got shape {list(t.shape)}")
        if not bool(((t > 0) & (t <= 1)).all()) or not bool((t[1:] > t[:-1]).all()):
            raise ValueError("flow noise levels must be strictly increasing in (0, 1]")
        if abs(float(t[-1]) - 1.0) > 1e-6:
            raise ValueError(f"a flow schedule must end at noise level 1 (pure noise), got {float(t[-1]):.6g}")
        object.__setattr__(self, "sigmas", t)

    @classmethod
    def shifted(cls, shift: float, num_timesteps: int = 1000) -> "FlowSchedule":
        """``t_k = time_shift((k + 1) / T, shift)`` (eq. 10.9): ComfyUI's ``ModelSamplingDiscreteFlow``
        and ``ModelSamplingFlux`` tables, diffusers' ``FlowMatchEulerDiscreteScheduler`` training grid."""
        T = check_int("num_timesteps", num_timesteps, 2)
        return cls(time_shift(torch.arange(1, T + 1, dtype=torch.float64) / T, shift), shift=float(shift))

    @classmethod
    def from_sigmas(cls, sigmas: torch.Tensor) -> "FlowSchedule":
        """From ComfyUI's ``model_sampling.sigmas`` of a CONST (flow) model."""
        return cls(torch.as_tensor(sigmas).detach().to("cpu", torch.float64))

    def sigma_at(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level at integer or fractional timesteps ``t`` (float64, CPU, shape of ``t``);
        fractional timesteps interpolate the table linearly."""
        tt = self._check_t(t)
        lo = tt.floor().long().clamp(0, self.num_timesteps - 2)
        w = tt - lo
        return self.sigmas[lo] * (1 - w) + self.sigmas[lo + 1] * w


# ----------------------------------------------------------------------------- velocity form (eq. 10.4)
def _t(t, like: torch.Tensor) -> torch.Tensor:
    tt = torch.as_tensor(t).detach().to("cpu", torch.float64)
    check_finite("t", tt)
    if bool(((tt < 0) | (tt > 1)).any()):
        raise ValueError(f"flow noise level t must be in [0, 1], got values in [{float(tt.min())}, {float(tt.max())}]")
    return per_sample(tt, like)


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: Alpha) -> torch.Tensor:
    """``x0 = x_t - t v`` (eq. 10.4): ComfyUI's ``CONST.calculate_denoised``."""
    check_same_shape(("x_t", "v"), x_t, v)
    dt = compute_dtype(x_t)
    return (x_t.to(dt) - _t(t, x_t) * v.to(dt)).to(x_t.dtype)


def noise_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: Alpha) -> torch.Tensor:
    """``n = x_t + (1 - t) v`` (eq. 10.4): the noise a velocity prediction attributes to ``x_t``
    (Theorem 1's input, eq. 5.1)."""
    check_same_shape(("x_t", "v"), x_t, v)
    dt = compute_dtype(x_t)
    return (x_t.to(dt) + (1.0 - _t(t, x_t)) * v.to(dt)).to(x_t.dtype)


def flow_training_pair(process: RayProcess, x0: torch.Tensor, eps_mu: torch.Tensor, t: Alpha,
                       noise: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, v)`` for the velocity loss (eq. 10.7): ``x_t = (1 - t) x0 + t n`` and ``v = n - x0`` with
    the Ray noise ``n = eps_mu + sigma noise`` (``process`` on its sigma path; ``t`` scalar or ``[B]``
    in [0, 1]). Built as :meth:`RayProcess.training_pair` at ``a = alpha_bar(t)`` rescaled by
    ``r(t)`` (eq. 10.3), so every VP option of that pair (start anchoring, the taper) carries over."""
    if process.path != "sigma":
        raise ValueError(f"the flow path is the Ray sigma path (docs/method.md eq. 10.2); got path {process.path!r}")
    tt = torch.as_tensor(t).detach().to("cpu", torch.float64)
    _t(tt, x0)
    x_vp, n = process.training_pair(x0, eps_mu, FLOW.alpha_bar(tt), noise)
    dt = compute_dtype(x0)
    x_t = per_sample(FLOW.vp_scale(tt), x0) * x_vp.to(dt)
    return x_t.to(x0.dtype), (n.to(dt) - x0.to(dt)).to(x0.dtype)


def velocity_loss_weight(t: Alpha, weighting: str = "truncated-snr") -> torch.Tensor:
    """The weight of ``|v_hat - v|^2`` that makes it eq. 7.2's loss (eq. 10.8), float64, shape of ``t``.

    A velocity error ``d`` is a noise error ``(1 - t) d`` and a clean-sample error ``t d`` (eq. 10.4), so
    eq. 7.2's ``lambda(a) |n_hat - n|^2`` is ``lambda(a(t)) (1 - t)^2 |d|^2``: ``(1 - t)^2`` for ``eps``
    and ``max(t, 1 - t)^2`` for ``truncated-snr`` (the clean-sample error where noise dominates,
    ``t > 1/2``; 1 at ``t = 1``, the whole of a one-step sample)."""
    tt = torch.as_tensor(t).detach().to("cpu", torch.float64)
    if weighting == "eps":
        return (1.0 - tt) ** 2
    if weighting == "truncated-snr":
        return torch.maximum(tt, 1.0 - tt) ** 2
    raise ValueError(f"weighting must be eps or truncated-snr, got {weighting!r}")


def denoiser_from_velocity(v_model):
    """Wrap a velocity model ``v_model(x_t [B, ...], t [B]) -> v`` (``t`` the noise level in (0, 1]) as
    the denoiser ``model(x, t) -> x0 = x - t v`` the sigma-form kernels take (eq. 10.4), the flow
    counterpart of :func:`rayflow.denoiser_from_eps`; ComfyUI's CONST wrapper does the same."""

    def model(x: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
        tt = torch.as_tensor(t).detach().to("cpu", torch.float64).reshape(-1).expand(x.shape[0])
        return x0_from_velocity(x, v_model(x, tt.to(compute_dtype(x)).to(x.device)), tt)

    return model


__all__ = ["FlowSchedule", "time_shift", "flux_mu", "x0_from_velocity", "noise_from_velocity",
           "flow_training_pair", "velocity_loss_weight", "denoiser_from_velocity"]
