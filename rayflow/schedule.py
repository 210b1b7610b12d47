"""Noise schedules: the base model's noise levels and the Ray timestep schedules.

A :class:`NoiseSchedule` wraps the cumulative product ``alpha_bar[t]`` (t = 0..T-1) of a pretrained
epsilon-prediction model. It is built from the model itself (betas, an ``alphas_cumprod`` table or
ComfyUI's ``model_sampling.sigmas``), never hard-coded. All schedule math runs in float64 and
results are cast to the caller's dtype at the end. The flow-matching counterpart,
:class:`rayflow.flow.FlowSchedule`, shares the Ray timesteps and the :class:`Interpolation` interface.

Conventions (see ``docs/method.md``, sections 1 and 10):

* VP form: ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) n`` with ``a_t = alpha_bar[t]``.
* sigma form (ComfyUI / k-diffusion): ``x = x_t / sqrt(a_t)``, ``sigma_t = sqrt((1 - a_t) / a_t)``,
  so ``a = 1 / (1 + sigma^2)``.
* flow form (ComfyUI's CONST models, SD3 / FLUX): ``x = (1 - t) x0 + t n`` with the noise level
  ``t`` in (0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .validation import check_finite, check_int


def alpha_bar_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """``a = 1 / (1 + sigma^2)`` (eq. 1.2), computed in float64. Shape preserved."""
    s = sigma.to(torch.float64)
    return 1.0 / (1.0 + s * s)


def sigma_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """``sigma = sqrt((1 - a) / a)`` (eq. 1.2), computed in float64. Shape preserved."""
    a = alpha_bar.to(torch.float64)
    return ((1.0 - a) / a).sqrt()


@dataclass(frozen=True)
class Interpolation:
    """How a ComfyUI / k-diffusion noise level ``s`` places a point: ``x = alpha(s) x0 + beta(s) n``.

    ``"eps"``: the sigma form, ``alpha = 1, beta = s`` (eq. 1.2; ComfyUI's EPS models).
    ``"flow"``: the rectified-flow form, ``alpha = 1 - s, beta = s`` (eq. 10.1; ComfyUI's CONST models).
    Both are rescalings of the VP point ``x_vp = sqrt(a) x0 + sqrt(1 - a) n`` (eq. 1.1, 10.3):
    ``x = vp_scale(s) x_vp`` with ``a = alpha_bar(s)``, which is how the samplers share the VP kernels.
    Coefficients are float64 tensors of ``s``'s shape.
    """

    name: str

    def __post_init__(self) -> None:
        if self.name not in ("eps", "flow"):
            raise ValueError(f"interpolation must be 'eps' or 'flow', got {self.name!r}")

    def coefficients(self, s) -> "tuple[torch.Tensor, torch.Tensor]":
        """``(alpha(s), beta(s))``: the weights of ``x0`` and of the noise in ``x`` (float64)."""
        s = torch.as_tensor(s).detach().to("cpu", torch.float64)
        return (torch.ones_like(s), s) if self.name == "eps" else (1.0 - s, s)

    def alpha_bar(self, s) -> torch.Tensor:
        """The VP level ``a = alpha^2 / (alpha^2 + beta^2)`` of noise level ``s`` (eq. 1.2, 10.3):
        ``1 / (1 + s^2)`` for eps, ``(1 - t)^2 / ((1 - t)^2 + t^2)`` for flow (0 at ``t = 1``)."""
        al, be = self.coefficients(s)
        return al * al / (al * al + be * be)

    def vp_scale(self, s) -> torch.Tensor:
        """``sqrt(alpha^2 + beta^2)``: ``x = vp_scale(s) * x_vp`` (eq. 10.3); 1 at ``s = 0``."""
        al, be = self.coefficients(s)
        return (al * al + be * be).sqrt()


EPS = Interpolation("eps")
FLOW = Interpolation("flow")


def trailing_timesteps(num_timesteps: int, steps: int) -> torch.Tensor:
    """Integer timesteps ``[steps]``, descending, of an N-step Ray sampler over a table of ``T`` levels.

    "Trailing" spacing: ``t_i = round(T - i T / N) - 1`` for i = 0..N-1, so every schedule starts at
    the last timestep ``T - 1`` (Algorithm 3's one-step case is ``[T - 1]``).
    """
    n = check_int("steps", steps, 1, num_timesteps)
    T = float(num_timesteps)
    # the increment is formed as (T - T/n) - T, as numpy.arange does, so that ties at .5 round
    # exactly as diffusers' ``timestep_spacing="trailing"`` (and the LCM/TCD schedulers) do
    delta = torch.tensor(T - T / n, dtype=torch.float64) - T
    i = torch.arange(n, dtype=torch.float64)
    return (torch.round(T + i * delta) - 1).long()


class RaySchedule:
    """What the VP and the flow schedules share: a table ``sigmas[t]`` (t = 0..T-1, increasing) of the
    model's noise levels in the space of ``interpolation``, a ``sigma_at`` lookup, and from these the
    Ray timesteps, the Ray SIGMAS and the VP level ``alpha_bar(t)`` that the Ray process uses."""

    interpolation: Interpolation = EPS

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.numel())

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """The VP level ``alpha_bar`` at integer or fractional timesteps ``t`` (any shape), float64.
        Raises ``ValueError`` when ``t`` lies outside ``[0, T-1]``."""
        return self.interpolation.alpha_bar(self.sigma_at(t))

    def ray_timesteps(self, steps: int) -> torch.Tensor:
        """Integer timesteps ``[steps]`` for an N-step Ray sampler, descending (:func:`trailing_timesteps`)."""
        return trailing_timesteps(self.num_timesteps, steps)

    def ray_sigmas(self, steps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Noise-level schedule ``[steps + 1]`` for the ComfyUI sampler: the levels of
        :meth:`ray_timesteps` followed by a final ``0`` (the clean sample)."""
        s = self.sigmas[self.ray_timesteps(steps)]
        return torch.cat([s, s.new_zeros(1)]).to(dtype)

    def _check_t(self, t) -> torch.Tensor:
        tt = torch.as_tensor(t).detach().to("cpu", torch.float64)
        check_finite("t", tt)
        T = self.num_timesteps
        if bool(((tt < 0) | (tt > T - 1)).any()):
            raise ValueError(f"timestep t must be in [0, {T - 1}], got values in "
                             f"[{float(tt.min())}, {float(tt.max())}]")
        return tt


@dataclass(frozen=True)
class NoiseSchedule(RaySchedule):
    """The discrete VP schedule of a pretrained model.

    Attributes:
        alphas_cumprod: float64 tensor ``[T]``, strictly decreasing, in (0, 1).
        name: a label stored in LoRA metadata (``"scaled_linear"``, ``"linear"``, ``"custom"``).
    """

    alphas_cumprod: torch.Tensor
    name: str = "custom"

    def __post_init__(self) -> None:
        a = torch.as_tensor(self.alphas_cumprod).detach().to("cpu", torch.float64)
        if a.ndim != 1 or a.numel() < 2:
            raise ValueError(f"alphas_cumprod must be a 1-D table with at least 2 entries, got shape {list(a.shape)}")
        check_finite("alphas_cumprod", a)
        if not bool(((a > 0) & (a < 1)).all()):
            raise ValueError("alphas_cumprod entries must lie in (0, 1)")
        if not bool((a[1:] < a[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing in t")
        object.__setattr__(self, "alphas_cumprod", a)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_betas(cls, betas: torch.Tensor, name: str = "custom") -> "NoiseSchedule":
        """``alpha_bar[t] = prod_{s<=t} (1 - beta_s)``."""
        b = torch.as_tensor(betas, dtype=torch.float64)
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must lie in (0, 1)")
        return cls(torch.cumprod(1.0 - b, dim=0), name=name)

    @classmethod
    def scaled_linear(cls, num_timesteps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012) -> "NoiseSchedule":
        """SD1.5 / SDXL: betas linear in sqrt-space (diffusers ``"scaled_linear"``)."""
        n = check_int("num_timesteps", num_timesteps, 2)
        b = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64) ** 2
        return cls.from_betas(b, name="scaled_linear")

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> "NoiseSchedule":
        """PixArt-alpha/sigma (and DDPM): betas linear in t (diffusers ``"linear"``)."""
        n = check_int("num_timesteps", num_timesteps, 2)
        return cls.from_betas(torch.linspace(beta_start, beta_end, n, dtype=torch.float64), name="linear")

    @classmethod
    def from_sigmas(cls, sigmas: torch.Tensor, name: str = "custom") -> "NoiseSchedule":
        """From an increasing table of sigma-space noise levels, e.g. ComfyUI's
        ``model_sampling.sigmas`` (``sigmas[t]`` for t = 0..T-1)."""
        s = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)
        check_finite("sigmas", s)
        if s.ndim != 1 or not bool((s > 0).all()):
            raise ValueError("sigmas must be a 1-D table of values > 0")
        return cls(alpha_bar_from_sigma(s), name=name)

    @classmethod
    def from_name(cls, name: str, num_timesteps: int = 1000) -> "NoiseSchedule":
        """``"scaled_linear"`` (SD1.5/SDXL) or ``"linear"`` (PixArt) with their standard betas."""
        if name == "scaled_linear":
            return cls.scaled_linear(num_timesteps)
        if name == "linear":
            return cls.linear(num_timesteps)
        raise ValueError(f"schedule name must be 'scaled_linear' or 'linear', got {name!r}")

    # ----------------------------------------------------------------- lookups
    @property
    def betas(self) -> torch.Tensor:
        """Per-step ``beta_t = 1 - alpha_bar[t] / alpha_bar[t - 1]`` ``[T]`` (float64), the inverse of
        :meth:`from_betas` (what diffusers schedulers take as ``trained_betas``)."""
        a = self.alphas_cumprod
        return 1.0 - a / torch.cat([a.new_ones(1), a[:-1]])

    @property
    def sigmas(self) -> torch.Tensor:
        """Sigma-space noise levels ``[T]`` (float64), increasing with t."""
        return sigma_from_alpha_bar(self.alphas_cumprod)

    def sigma_at(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma-space noise level at timesteps ``t`` (float64 on the CPU, shape of ``t``)."""
        tt = self._check_t(t)
        T = self.num_timesteps
        log_sigmas = self.sigmas.log()
        lo = tt.floor().long().clamp(0, T - 2)
        w = tt - lo
        return (log_sigmas[lo] * (1 - w) + log_sigmas[lo + 1] * w).exp()

    def t_at(self, sigma: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`sigma_at`: fractional timestep for sigma-space levels (float64, CPU).

        Raises ``ValueError`` for ``sigma <= 0`` or outside the model's range.
        """
        s = torch.as_tensor(sigma).detach().to("cpu", torch.float64)
        check_finite("sigma", s)
        if bool((s <= 0).any()):
            raise ValueError(f"sigma must be > 0 to map it to a timestep, got min {float(s.min())}")
        log_sigmas = self.sigmas.log()
        ls = s.log()
        eps = 1e-6
        if bool(((ls < log_sigmas[0] - eps) | (ls > log_sigmas[-1] + eps)).any()):
            raise ValueError(f"sigma must be in [{float(log_sigmas[0].exp()):.6g}, "
                             f"{float(log_sigmas[-1].exp()):.6g}] (the model's range), got "
                             f"[{float(s.min()):.6g}, {float(s.max()):.6g}]")
        ls = ls.clamp(log_sigmas[0], log_sigmas[-1])
        hi = torch.searchsorted(log_sigmas, ls.reshape(-1)).clamp(1, self.num_timesteps - 1).reshape(ls.shape)
        lo = hi - 1
        w = (ls - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
        t = lo.to(torch.float64) + w
        # sigmas taken from the table map back to exact integer timesteps
        return torch.where((t - t.round()).abs() < 1e-6, t.round(), t)
