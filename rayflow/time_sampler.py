"""Time Sampler: importance sampling of training timesteps (``docs/method.md`` section 8).

Proposition 3: the minimum-variance proposal for ``E_{t ~ p}[l(t)]`` is
``p*(t) ∝ p(t) sqrt(E[l(t)^2])``. The Time Sampler approximates it with SVGD particles whose
locations a small network produces from per-sample features:

* :class:`LossProfile` keeps a running estimate of ``E[l(t)^2]`` on a grid and gives the score
  ``d/dt log p*(t)``;
* :func:`svgd_direction` is the SVGD update ``phi`` (driving + repulsive terms, Gaussian kernel
  ``k(t, t') = exp(-(t - t')^2 / h)``);
* :class:`TimeSampler` maps features ``[B, F]`` to ``n`` particles in (0, 1), is trained with
  ``|| T(x) - stopgrad(T(x) + step * phi) ||^2``, and samples integer timesteps with importance
  weights ``p(t) / q(t | x)`` that make the weighted loss an unbiased estimate of the uniform one.

Time runs on ``u in [0, 1]``; integer timestep ``i`` of ``T`` is the bin ``[i/T, (i+1)/T)``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from .atomic_write import atomic_path
from .validation import check_finite, check_int, check_scalar


def svgd_direction(particles: torch.Tensor, score: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """SVGD update direction (eq. 8.3) for each particle.

    ``phi(u_i) = mean_j [ k(u_j, u_i) score(u_j) + d/du_j k(u_j, u_i) ]`` with
    ``k(u, u') = exp(-(u - u')^2 / h)``, so ``d/du_j k(u_j, u_i) = -2 (u_j - u_i) / h * k``.

    Args:
        particles: ``[B, n]``; score: ``[B, n]`` = ``d/du log p*(u)`` at the particles.
    Returns:
        ``[B, n]`` update direction.
    """
    h = check_scalar("bandwidth", bandwidth, 0.0, 10.0, low_open=True)
    if particles.shape != score.shape or particles.ndim != 2:
        raise ValueError(f"particles and score must both be [B, n], got {list(particles.shape)} and {list(score.shape)}")
    diff = particles[:, :, None] - particles[:, None, :]       # [B, j, i] = u_j - u_i
    k = torch.exp(-diff.pow(2) / h)
    drive = (k * score[:, :, None]).mean(dim=1)
    repulse = (-2.0 / h * diff * k).mean(dim=1)
    return drive + repulse


class LossProfile:
    """Running estimate of ``E[l(u)^2]`` on ``bins`` equal bins of [0, 1] (EMA per bin).

    ``log_density(u)`` is ``log sqrt(E[l^2])`` interpolated linearly between bin centres (the
    log of Prop. 3's target for a uniform prior, up to a constant); ``score(u)`` is its slope.
    Bins never seen hold the mean of the seen ones.
    """

    def __init__(self, bins: int = 50, decay: float = 0.98, floor: float = 1e-8):
        self.bins = check_int("bins", bins, 2)
        self.decay = check_scalar("decay", decay, 0.0, 1.0, high_open=True)
        self.floor = floor
        self.sq = torch.zeros(bins, dtype=torch.float64)
        self.seen = torch.zeros(bins, dtype=torch.bool)

    def update(self, u: torch.Tensor, loss: torch.Tensor) -> None:
        """Add per-sample losses ``[B]`` observed at times ``u`` ``[B]`` (batched, no Python loop)."""
        u = u.detach().to("cpu", torch.float64).reshape(-1)
        sq = loss.detach().to("cpu", torch.float64).reshape(-1).pow(2)
        check_finite("loss", sq)
        idx = (u * self.bins).long().clamp(0, self.bins - 1)
        total = torch.zeros(self.bins, dtype=torch.float64).index_add_(0, idx, sq)
        count = torch.zeros(self.bins, dtype=torch.float64).index_add_(0, idx, torch.ones_like(sq))
        hit = count > 0
        batch_mean = total / count.clamp_min(1)
        first = hit & ~self.seen
        self.sq = torch.where(first, batch_mean, self.sq)
        again = hit & self.seen
        self.sq = torch.where(again, self.decay * self.sq + (1 - self.decay) * batch_mean, self.sq)
        self.seen |= hit

    def log_grid(self) -> torch.Tensor:
        """``log sqrt(E[l^2])`` per bin ``[bins]`` float64 (unseen bins: the mean of the seen ones)."""
        if not bool(self.seen.any()):
            return torch.zeros(self.bins, dtype=torch.float64)
        sq = torch.where(self.seen, self.sq, self.sq[self.seen].mean())
        return 0.5 * sq.clamp_min(self.floor).log()

    def log_density(self, u: torch.Tensor) -> torch.Tensor:
        """Unnormalised ``log p*(u)`` (shape, dtype and device of ``u``)."""
        g = self.log_grid()
        x = (u.detach().to("cpu", torch.float64) * self.bins - 0.5).clamp(0, self.bins - 1)
        lo = x.floor().long().clamp(0, self.bins - 2)
        w = x - lo
        return (g[lo] * (1 - w) + g[lo + 1] * w).to(u.dtype).to(u.device)

    def score(self, u: torch.Tensor) -> torch.Tensor:
        """``d/du log p*(u)`` (slope of the interpolated log-density; 0 beyond the end centres)."""
        g = self.log_grid()
        x = u.detach().to("cpu", torch.float64) * self.bins - 0.5
        lo = x.floor().long().clamp(0, self.bins - 2)
        slope = (g[lo + 1] - g[lo]) * self.bins
        inside = (x >= 0) & (x <= self.bins - 1)
        return torch.where(inside, slope, torch.zeros_like(slope)).to(u.dtype).to(u.device)

    def state_dict(self) -> dict:
        return {"sq": self.sq.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.sq = state["sq"].to(torch.float64).clone()
        self.seen = state["seen"].to(torch.bool).clone()


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


class TimeSampler(nn.Module):
    """Data-dependent SVGD particles for timestep importance sampling.

    Args:
        in_features: size ``F`` of the per-sample feature vector.
        num_particles: ``n`` particles per sample.
        hidden: width of the MLP.
        bandwidth: ``h`` of the kernel ``exp(-(u - u')^2 / h)``; the proposal ``q(u | x)`` is the
            particles' kernel density (a mixture of Gaussians of std ``sqrt(h / 2)`` truncated to
            [0, 1]) mixed with a uniform share ``uniform_mix`` that bounds the weights by
            ``1 / uniform_mix``.
    """

    def __init__(self, in_features: int, num_particles: int = 32, hidden: int = 64,
                 bandwidth: float = 0.002, uniform_mix: float = 0.1):
        super().__init__()
        self.config = {
            "in_features": check_int("in_features", in_features, 1),
            "num_particles": check_int("num_particles", num_particles, 1, 1024),
            "hidden": check_int("hidden", hidden, 1),
            "bandwidth": check_scalar("bandwidth", bandwidth, 0.0, 10.0, low_open=True),
            "uniform_mix": check_scalar("uniform_mix", uniform_mix, 0.0, 1.0, low_open=True),
        }
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, num_particles))
        with torch.no_grad():  # start from evenly spread particles, independent of the features
            self.net[2].weight.mul_(0.01)
            grid = (torch.arange(num_particles, dtype=torch.float32) + 0.5) / num_particles
            self.net[2].bias.copy_(torch.logit(grid))

    @property
    def bandwidth(self) -> float:
        return self.config["bandwidth"]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Particles ``[B, n]`` in (0, 1) for features ``[B, F]``."""
        if features.ndim != 2 or features.shape[1] != self.config["in_features"]:
            raise ValueError(f"features must be [B, {self.config['in_features']}], got {list(features.shape)}")
        check_finite("features", features)
        return torch.sigmoid(self.net(features.float()))

    # ------------------------------------------------------------ proposal and sampling (eq. 8.5)
    def proposal(self, particles: torch.Tensor, num_timesteps: int) -> torch.Tensor:
        """Exact probabilities ``q(i | x)`` ``[B, T]`` (float64, CPU) of integer timesteps under the proposal."""
        T = check_int("num_timesteps", num_timesteps, 1)
        std = math.sqrt(self.bandwidth / 2.0)
        u = particles.detach().to("cpu", torch.float64)[:, :, None]                   # [B, n, 1], on CPU
        edges = torch.linspace(0.0, 1.0, T + 1, dtype=torch.float64)
        cdf = _normal_cdf((edges[None, None, :] - u) / std)                            # [B, n, T+1]
        mass = (cdf[..., 1:] - cdf[..., :-1]) / (cdf[..., -1:] - cdf[..., :1]).clamp_min(1e-300)
        lam = self.config["uniform_mix"]
        return (1 - lam) * mass.mean(dim=1) + lam / T

    def sample(self, features: torch.Tensor, num_timesteps: int,
               generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One integer timestep per sample and its importance weight.

        Returns:
            ``timesteps`` ``[B]`` long in ``[0, T-1]`` and ``weights`` ``[B]`` float32 with
            ``E_q[w(t) l(t)] = mean_t l(t)`` exactly (``w = (1/T) / q(t | x)``).
        """
        with torch.no_grad():
            q = self.proposal(self(features), num_timesteps)
            t = torch.multinomial(q.float(), 1, generator=generator).squeeze(1)
            w = (1.0 / num_timesteps) / q.gather(1, t[:, None]).squeeze(1)
        return t.to(features.device), w.float().to(features.device)

    # ------------------------------------------------------------ training (eq. 8.4)
    def svgd_loss(self, features: torch.Tensor, score_fn: Callable[[torch.Tensor], torch.Tensor],
                  step: float = 0.005) -> torch.Tensor:
        """``mean_b || T(x_b) - stopgrad(clip(T(x_b) + step * phi)) ||^2``; its gradient moves the
        network's particles along the SVGD direction toward ``p*`` (``score_fn``: ``d/du log p*``)."""
        particles = self(features)
        with torch.no_grad():
            u = particles.detach()
            phi = svgd_direction(u, score_fn(u).to(u.dtype), self.bandwidth)
            target = (u + step * phi).clamp(1e-4, 1 - 1e-4)
        return (particles - target).pow(2).sum(dim=1).mean()

    # ------------------------------------------------------------ persistence
    def save(self, path: str) -> None:
        """Write weights and config to a ``.safetensors`` file (atomic: temp file + rename)."""
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, tmp,
                      metadata={"rayflow.time_sampler": json.dumps(self.config)})

    @classmethod
    def load(cls, path: str, device: Optional[torch.device] = None) -> "TimeSampler":
        """Read a file written by :meth:`save` (safetensors only; never unpickles)."""
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for damaged files
            raise ValueError(f"cannot read Time Sampler file {path!r}: {exc}") from None
        if "rayflow.time_sampler" not in meta:
            raise ValueError(f"{path!r} is not a RayFlow Time Sampler file (no 'rayflow.time_sampler' metadata)")
        sampler = cls(**json.loads(meta["rayflow.time_sampler"]))
        sampler.load_state_dict(tensors)
        return sampler.to(device) if device is not None else sampler
