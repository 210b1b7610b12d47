"""The Ray diffusion process (``docs/method.md`` sections 2-5).

Each sample ``x0`` diffuses toward its own target distribution ``N(eps_mu, sigma^2 I)`` instead of
``N(0, I)``. With ``a = alpha_bar[t]`` the forward marginal is (eq. 2.2)::

    q(x_t | x0) = N( sqrt(a) x0 + k(a) eps_mu ,  (1 - a) sigma^2 I )

where the drift coefficient ``k(a)`` fixes the *path* (eq. 2.1):

* ``path="sigma"`` (default): ``k(a) = sqrt(1 - a)``. In ComfyUI's sigma space the mean is the
  straight ray ``x0 + s * eps_mu`` (s the noise level) and the noise a model must predict,
  ``n_t = eps_mu + sigma * eps``, has the same expectation at every timestep.
* ``path="linear"``: ``k(a) = 1 - sqrt(a)``. In VP space the mean is the straight segment
  ``eps_mu + sqrt(a) (x0 - eps_mu)`` (the reconstruction in the reference notes).

Both reduce exactly to DDPM for ``eps_mu = 0, sigma = 1``. Every coefficient is computed in
float64 and applied in float32 (float64 for float64 inputs); results come back in the input dtype.

Shapes: ``x0, x_t, eps_mu, noise`` are ``[B, ...]`` (any trailing dims); ``a`` is a float tensor
broadcastable to ``[B]`` (a per-sample ``alpha_bar``), or a Python float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from .validation import check_finite, check_same_shape, check_scalar

PATHS = ("sigma", "linear")
LOSS_WEIGHTINGS = ("eps", "truncated-snr")      # RayProcess.loss_weight (eq. 7.2)
Alpha = Union[float, torch.Tensor]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 tensors, else float32 (fp16/bf16 models still get fp32 schedule math)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def accumulate_dtype(x: torch.Tensor) -> torch.dtype:
    """dtype for reductions over a trajectory: float64 where the device has it (not Apple MPS)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def per_sample(c: Alpha, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample coefficient (scalar or ``[B]``) to ``like``'s rank, in compute dtype.

    The coefficient is rounded to the compute dtype on the CPU before it moves to ``like``'s
    device, so float64 never reaches devices without it (Apple MPS).
    """
    c = torch.as_tensor(c).detach().to("cpu", torch.float64).to(compute_dtype(like))
    if c.ndim > 0:
        c = c.reshape(-1, *([1] * (like.ndim - 1)))
    return c.to(like.device)


def _check_alpha(name: str, a: Alpha, allow_one: bool = False, allow_zero: bool = True) -> torch.Tensor:
    """``a`` as float64 after checking its range. ``a = 0`` (pure noise: the flow path's ``t = 1``,
    eq. 10.3) is a level of every form that does not divide by ``sqrt(a)``; ``allow_zero=False`` where
    one does (eq. 4.3, 7.2)."""
    t = torch.as_tensor(a).detach().to("cpu", torch.float64)
    check_finite(name, t)
    ok = ((t >= 0) if allow_zero else (t > 0)) & ((t <= 1) if allow_one else (t < 1))
    if not bool(ok.all()):
        rng = ("[0" if allow_zero else "(0") + (", 1]" if allow_one else ", 1)")
        raise ValueError(f"{name} (alpha_bar) must be in {rng}, got values in [{float(t.min())}, {float(t.max())}]")
    return t


@dataclass(frozen=True)
class RayProcess:
    """Ray forward/backward process with variance coefficient ``sigma`` and a path shape.

    Args:
        sigma: the variance coefficient (paper's sensitivity study: 0.3 best of {0.1, 0.3, 0.5}).
            Must be in (0, 10].
        path: ``"sigma"`` or ``"linear"`` (see module docstring).
    """

    sigma: float = 0.3
    path: str = "sigma"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_scalar("sigma", self.sigma, 0.0, 10.0, low_open=True))
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {self.path!r}")

    # ------------------------------------------------------------ coefficients (eq. 2.1, 4.2, 6.2)
    def drift(self, a: Alpha) -> torch.Tensor:
        """``k(a)``: weight of ``eps_mu`` in the marginal mean (eq. 2.1). float64."""
        a = torch.as_tensor(a).detach().to("cpu", torch.float64)
        return (1.0 - a).sqrt() if self.path == "sigma" else 1.0 - a.sqrt()

    def eps_coef(self, a: Alpha) -> torch.Tensor:
        """``c(a) = k(a) / sqrt(1 - a)``: weight of ``eps_mu`` in the noise target ``n_t`` (eq. 4.2)."""
        a = torch.as_tensor(a).detach().to("cpu", torch.float64)
        return self.drift(a) / (1.0 - a).sqrt()

    def sigma_offset(self, s: Alpha) -> torch.Tensor:
        """``m(s) = k(a) / sqrt(a)`` at sigma-space level ``s`` (eq. 6.2): ``s`` on the sigma path,
        ``sqrt(1 + s^2) - 1`` on the linear path. ``m(0) = 0``. float64."""
        s = torch.as_tensor(s).detach().to("cpu", torch.float64)
        return s.clone() if self.path == "sigma" else (1.0 + s * s).sqrt() - 1.0

    # ------------------------------------------------------------ forward process (section 2)
    def marginal(self, x0: torch.Tensor, eps_mu: torch.Tensor, a: Alpha) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[B, ...]`` and standard deviation (broadcastable) of ``q(x_t | x0)`` (eq. 2.2)."""
        check_same_shape(("x0", "eps_mu"), x0, eps_mu)
        a = _check_alpha("a", a)
        dt = compute_dtype(x0)
        mean = per_sample(a.sqrt(), x0) * x0.to(dt) + per_sample(self.drift(a), x0) * eps_mu.to(dt)
        std = per_sample((1.0 - a).sqrt() * self.sigma, x0)
        return mean.to(x0.dtype), std

    def sample_marginal(self, x0: torch.Tensor, eps_mu: torch.Tensor, a: Alpha,
                        noise: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x0)`` with standard-normal ``noise`` (eq. 2.2)."""
        check_same_shape(("x0", "noise"), x0, noise)
        mean, std = self.marginal(x0, eps_mu, a)
        return (mean.to(std.dtype) + std * noise.to(std.dtype)).to(x0.dtype)

    def forward_step(self, x_prev: torch.Tensor, eps_mu: torch.Tensor, a_prev: Alpha, a: Alpha,
                     noise: torch.Tensor) -> torch.Tensor:
        """One Markov step ``x_prev -> x`` from level ``a_prev`` to ``a < a_prev`` (eq. 2.3)::

            x = sqrt(alpha) x_prev + (k(a) - sqrt(alpha) k(a_prev)) eps_mu + sqrt(1 - alpha) sigma noise

        with ``alpha = a / a_prev``. ``a_prev = 1`` starts from the data ``x0``.
        """
        check_same_shape(("x_prev", "eps_mu", "noise"), x_prev, eps_mu, noise)
        a_prev = _check_alpha("a_prev", a_prev, allow_one=True)
        a = _check_alpha("a", a)
        if bool((a >= a_prev).any()):
            raise ValueError("forward_step needs a < a_prev (noise increases along the chain)")
        alpha = a / a_prev
        dt = compute_dtype(x_prev)
        drift = self.drift(a) - alpha.sqrt() * self.drift(a_prev)
        out = (per_sample(alpha.sqrt(), x_prev) * x_prev.to(dt) + per_sample(drift, x_prev) * eps_mu.to(dt)
               + per_sample((1.0 - alpha).sqrt() * self.sigma, x_prev) * noise.to(dt))
        return out.to(x_prev.dtype)

    # ------------------------------------------------------------ backward process (section 3)
    def posterior(self, x_t: torch.Tensor, x0: torch.Tensor, eps_mu: torch.Tensor, a: Alpha,
                  a_prev: Alpha) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[B, ...]`` and variance (broadcastable) of ``q(x_prev | x_t, x0)`` (eq. 3.2).

        ``a_prev > a`` is the level being stepped to (``a_prev = 1``: the data, variance 0).
        """
        check_same_shape(("x_t", "x0", "eps_mu"), x_t, x0, eps_mu)
        a = _check_alpha("a", a)
        a_prev = _check_alpha("a_prev", a_prev, allow_one=True)
        if bool((a >= a_prev).any()):
            raise ValueError("posterior needs a < a_prev (a_prev is the less noisy level)")
        alpha = a / a_prev
        dt = compute_dtype(x_t)
        mu = eps_mu.to(dt)
        y_t = x_t.to(dt) - per_sample(self.drift(a), x_t) * mu
        c0 = a_prev.sqrt() * (1.0 - alpha) / (1.0 - a)
        ct = alpha.sqrt() * (1.0 - a_prev) / (1.0 - a)
        mean = per_sample(c0, x_t) * x0.to(dt) + per_sample(ct, x_t) * y_t + per_sample(self.drift(a_prev), x_t) * mu
        var = per_sample(self.sigma ** 2 * (1.0 - a_prev) * (1.0 - alpha) / (1.0 - a), x_t)
        return mean.to(x_t.dtype), var

    def backward_step(self, x_t: torch.Tensor, x0: torch.Tensor, eps_mu: torch.Tensor, a: Alpha,
                      a_next: Alpha, eta: float = 0.0, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One backward step from level ``a`` to the less noisy ``a_next`` (eq. 3.3).

        In the centred variable ``y = x - k(a) eps_mu`` the Ray chain is DDPM with noise scale
        ``sigma``; this is the DDIM(eta) step of that chain. ``eta = 0``: deterministic;
        ``eta = 1``: an exact draw from :meth:`posterior` when ``x0`` is exact.
        ``a_next = 1`` returns ``x0``. ``noise`` (standard normal, shape of ``x_t``) is needed
        when ``eta > 0``.
        """
        check_same_shape(("x_t", "x0", "eps_mu"), x_t, x0, eps_mu)
        eta = check_scalar("eta", eta, 0.0, 1.0)
        a = _check_alpha("a", a)
        a_next = _check_alpha("a_next", a_next, allow_one=True)
        if bool((a >= a_next).any()):
            raise ValueError("backward_step needs a < a_next (a_next is the less noisy level)")
        if eta > 0 and noise is None:
            raise ValueError("noise is required when eta > 0")
        dt = compute_dtype(x_t)
        mu = eps_mu.to(dt)
        x0c = x0.to(dt)
        # scaled noise e = sigma * eps currently in x_t (eq. 3.3, first line)
        e = (x_t.to(dt) - per_sample(self.drift(a), x_t) * mu - per_sample(a.sqrt(), x_t) * x0c) \
            / per_sample((1.0 - a).sqrt(), x_t)
        s_eta = eta * ((1.0 - a_next) / (1.0 - a)).sqrt() * (1.0 - a / a_next).clamp_min(0).sqrt()
        keep = (1.0 - a_next - s_eta ** 2).clamp_min(0).sqrt()
        out = per_sample(a_next.sqrt(), x_t) * x0c + per_sample(keep, x_t) * e \
            + per_sample(self.drift(a_next), x_t) * mu
        if eta > 0:
            check_same_shape(("x_t", "noise"), x_t, noise)
            out = out + per_sample(s_eta * self.sigma, x_t) * noise.to(dt)
        return out.to(x_t.dtype)

    # ------------------------------------------------------------ epsilon-prediction form (section 4)
    def training_pair(self, x0: torch.Tensor, eps_mu: torch.Tensor, a: Alpha,
                      noise: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, n_t)`` for the training loss (eq. 4.2, 7.1): ``x_t ~ q(x_t | x0)`` and the noise
        target ``n_t = c(a) eps_mu + sigma noise`` with ``x_t = sqrt(a) x0 + sqrt(1-a) n_t``."""
        check_same_shape(("x0", "eps_mu", "noise"), x0, eps_mu, noise)
        a = _check_alpha("a", a)
        dt = compute_dtype(x0)
        n_t = per_sample(self.eps_coef(a), x0) * eps_mu.to(dt) + self.sigma * noise.to(dt)
        x_t = per_sample(a.sqrt(), x0) * x0.to(dt) + per_sample((1.0 - a).sqrt(), x0) * n_t
        return x_t.to(x0.dtype), n_t.to(x0.dtype)

    def start_anchored_mean(self, eps_mu: torch.Tensor, x0: torch.Tensor, start: torch.Tensor, a_start: Alpha,
                            weight: Alpha) -> torch.Tensor:
        """Target mean blended toward the seeded start point (eq. 7.3), ``[B, ...]``::

            w * n_z / c(a_start) + (1 - w) * eps_mu,      n_z = (start - sqrt(a_start) x0) / sqrt(1 - a_start)

        ``n_z`` is the noise that places ``x0`` at ``start`` at level ``a_start`` (eq. 4.1), so with
        ``w = 1`` the marginal at ``a_start`` (eq. 2.2) is centred on ``start`` exactly; ``w = 0`` gives
        ``eps_mu``. ``eps_mu, x0, start``: ``[B, ...]``; ``weight``: scalar or ``[B]`` in ``[0, 1]``.
        """
        check_same_shape(("eps_mu", "x0", "start"), eps_mu, x0, start)
        a_start = _check_alpha("a_start", a_start)
        w = torch.as_tensor(weight).detach().to("cpu", torch.float64)
        check_finite("weight", w)
        if bool(((w < 0) | (w > 1)).any()):
            raise ValueError(f"weight must be in [0, 1], got values in [{float(w.min())}, {float(w.max())}]")
        dt = compute_dtype(x0)
        n_z = (start.to(dt) - per_sample(a_start.sqrt(), x0) * x0.to(dt)) / per_sample((1.0 - a_start).sqrt(), x0)
        w = per_sample(w, x0)
        return (w * n_z / per_sample(self.eps_coef(a_start), x0) + (1.0 - w) * eps_mu.to(dt)).to(eps_mu.dtype)

    @staticmethod
    def start_anchor_weight(t: torch.Tensor, num_timesteps: int, anchor: float) -> torch.Tensor:
        """``w(t) = clamp(1 - (T - 1 - t) / (anchor T), 0, 1)`` (eq. 7.3), float64, the shape of ``t``:
        1 at the top timestep ``T - 1``, falling linearly to 0 at ``t = T - 1 - anchor T`` and below;
        all zeros for ``anchor = 0`` (the paper's process)."""
        anchor = check_scalar("anchor", anchor, 0.0, 1.0)
        t = torch.as_tensor(t).detach().to("cpu", torch.float64)
        if anchor == 0:
            return torch.zeros_like(t)
        return (1.0 - (num_timesteps - 1 - t) / (anchor * num_timesteps)).clamp(0.0, 1.0)

    @staticmethod
    def loss_weight(a: Alpha, weighting: str = "eps") -> torch.Tensor:
        """Per-timestep weight ``lambda(a)`` of the noise-space loss (eq. 7.2), float64, shape of ``a``.

        ``eps``: 1. ``truncated-snr``: ``max(1, (1 - a) / a)``. An error ``d`` in the predicted
        noise is an error ``sqrt((1 - a) / a) d`` in ``x0_from_eps`` (eq. 4.3), so this weight is
        the clean-sample error wherever noise dominates (``a < 1/2``) and the noise error elsewhere
        -- the "truncated SNR" weighting of progressive distillation (Salimans & Ho, 2022), which
        makes the prediction at the last timestep, the whole of a one-step sample, count at its
        image-space size.
        """
        a = _check_alpha("a", a, allow_zero=False)
        if weighting == "eps":
            return torch.ones_like(a)
        if weighting == "truncated-snr":
            return ((1.0 - a) / a).clamp_min(1.0)
        raise ValueError(f"weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {weighting!r}")

    @staticmethod
    def x0_from_eps(x_t: torch.Tensor, eps_pred: torch.Tensor, a: Alpha) -> torch.Tensor:
        """``x0 = (x_t - sqrt(1 - a) n) / sqrt(a)`` (eq. 4.3), the same formula the base model's
        epsilon parameterisation (and ComfyUI's EPS wrapper) uses."""
        check_same_shape(("x_t", "eps_pred"), x_t, eps_pred)
        a = _check_alpha("a", a, allow_zero=False)
        dt = compute_dtype(x_t)
        out = (x_t.to(dt) - per_sample((1.0 - a).sqrt(), x_t) * eps_pred.to(dt)) / per_sample(a.sqrt(), x_t)
        return out.to(x_t.dtype)

    # ------------------------------------------------------------ path probability, Theorem 1 (section 5)
    def path_log_prob(self, eps_preds: torch.Tensor, a_k: torch.Tensor, eps_mu: torch.Tensor,
                      sigma: torch.Tensor) -> torch.Tensor:
        """Path log-probability (Prop. 2, eq. 5.2) of a trajectory of noise predictions.

        Args:
            eps_preds: ``[K, B, ...]`` noise attributed to the trajectory points ``x_{t_k}``.
            a_k: ``[K]`` alpha_bar at those points.
            eps_mu: ``[B, ...]`` target mean; sigma: ``[B]`` (or scalar) spread, > 0.
        Returns:
            ``[B]`` float64: ``sum_k log N(eps_k; c(a_k) eps_mu, sigma^2 I)``.
        """
        K = eps_preds.shape[0]
        a_k = _check_alpha("a_k", a_k)
        if a_k.shape != (K,):
            raise ValueError(f"a_k must have shape [{K}] (one alpha_bar per trajectory point), got {list(a_k.shape)}")
        check_same_shape(("eps_preds[k]", "eps_mu"), eps_preds[0], eps_mu)
        acc = accumulate_dtype(eps_preds)
        sig = torch.as_tensor(sigma).detach().to("cpu", torch.float64)
        if bool((sig <= 0).any()):
            raise ValueError("sigma must be > 0 in path_log_prob")
        sig = sig.to(eps_preds.device, acc)
        e = eps_preds.to(acc).flatten(2)                                # [K, B, D]
        m = eps_mu.to(acc).flatten(1)                                   # [B, D]
        d = e.shape[-1]
        c = self.eps_coef(a_k).to(eps_preds.device, acc)
        resid = e - c[:, None, None] * m[None]
        sq = resid.pow(2).sum(dim=(0, 2))                               # [B]
        sig = sig.expand(sq.shape)
        return -0.5 * sq / sig ** 2 - K * d * (sig.log() + 0.5 * math.log(2 * math.pi))

    def theorem1(self, eps_preds: torch.Tensor, a_k: torch.Tensor,
                 weights: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Theorem 1 (eq. 5.3): the ``(eps_mu, sigma)`` that maximise :meth:`path_log_prob`.

        ``eps_mu = sum_k w_k c_k eps_k / sum_k w_k c_k^2`` and
        ``sigma^2 = sum_k w_k |eps_k - c_k eps_mu|^2 / (D sum_k w_k)``; on the default sigma path
        (``c = 1``) and unit weights this is the time-average of the noise predictions and their
        RMS spread around it.

        Args:
            eps_preds: ``[K, B, ...]``; a_k: ``[K]``; weights: optional ``[K]`` quadrature weights.
        Returns:
            ``eps_mu`` ``[B, ...]`` in the dtype of ``eps_preds`` and ``sigma`` ``[B]`` float32.
        """
        if eps_preds.ndim < 2 or eps_preds.shape[0] < 1:
            raise ValueError(f"eps_preds must have shape [K >= 1, B, ...], got {list(eps_preds.shape)}")
        check_finite("eps_preds", eps_preds)
        K = eps_preds.shape[0]
        a_k = _check_alpha("a_k", a_k)
        if a_k.shape != (K,):
            raise ValueError(f"a_k must have shape [{K}], got {list(a_k.shape)}")
        w = torch.ones(K, dtype=torch.float64) if weights is None \
            else torch.as_tensor(weights).detach().to("cpu", torch.float64)
        if w.shape != (K,) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be a non-negative [{K}] tensor with a positive sum")
        c = self.eps_coef(a_k)
        acc = accumulate_dtype(eps_preds)
        dev = eps_preds.device
        e = eps_preds.to(acc)
        shape = [K] + [1] * (e.ndim - 1)
        mu = ((w * c) / (w * c * c).sum()).to(dev, acc).reshape(shape).mul(e).sum(0)
        resid = (e - c.to(dev, acc).reshape(shape) * mu[None]).flatten(2)
        var = ((w / (resid.shape[-1] * w.sum())).to(dev, acc)[:, None, None] * resid.pow(2)).sum(dim=(0, 2))
        return mu.to(eps_preds.dtype), var.sqrt().to(torch.float32)
