"""Ray samplers: Algorithm 2 (multi-step) and Algorithm 3 (one step), ``docs/method.md`` section 6.

Two forms of the same math:

* **VP form** over an epsilon model ``eps_model(x_t, t) -> n_hat`` (``x_t, n_hat: [B, ...]``,
  ``t: [B]`` float timesteps) and a :class:`~rayflow.schedule.NoiseSchedule` — what the trainer
  and diffusers-side code use.
* **sigma form** over a k-diffusion / ComfyUI denoiser ``model(x, sigma, **extra_args) -> x0``
  (``sigma: [B]``) and a decreasing sigma schedule ending in 0. :func:`sample_ray_sigma` has the
  signature of a k-diffusion sampler, so ComfyUI can wrap it in ``comfy.samplers.KSAMPLER``.

Both are deterministic for ``eta = 0`` and add fresh noise scaled by the variance coefficient for
``eta > 0`` (eq. 6.3).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .process import RayProcess, compute_dtype, per_sample
from .schedule import EPS, Interpolation, NoiseSchedule, alpha_bar_from_sigma
from .validation import check_finite, check_same_shape, check_scalar

try:  # a progress bar where tqdm exists (ComfyUI and diffusers both ship it)
    from tqdm.auto import trange
except ImportError:  # pragma: no cover
    def trange(n, disable=None, **_):
        return range(n)

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def seeded_noise_sampler(x: torch.Tensor, seed: Optional[int]) -> NoiseSampler:
    """Standard-normal noise like ``x``, reproducible from ``seed`` (drawn on the CPU)."""
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(int(seed))
    else:
        gen.seed()

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=gen, dtype=torch.float32).to(device=x.device, dtype=x.dtype)

    return sample


def _check_start(x: torch.Tensor, eps_mu: Optional[torch.Tensor]) -> None:
    check_finite("x", x)
    if eps_mu is not None:
        check_same_shape(("x", "eps_mu"), x, eps_mu)
        check_finite("eps_mu", eps_mu)


# ----------------------------------------------------------------------------- VP form
@torch.no_grad()
def sample_ray(eps_model: EpsModel, x: torch.Tensor, eps_mu: torch.Tensor, process: RayProcess,
               schedule: NoiseSchedule, timesteps: torch.Tensor, eta: float = 0.0,
               generator: Optional[torch.Generator] = None,
               callback: Optional[Callable[[dict], None]] = None) -> torch.Tensor:
    """Algorithm 2 in VP form: iterate the Ray backward step over ``timesteps``.

    Args:
        eps_model: ``(x_t [B, ...], t [B]) -> n_hat [B, ...]``.
        x: the start point ``x_{t_0}`` ``[B, ...]`` (for text-to-image: the seeded noise).
        eps_mu: target mean ``[B, ...]``.
        timesteps: descending timesteps ``[N]`` (e.g. ``schedule.ray_timesteps(N)``).
        eta: 0 deterministic, 1 posterior sampling; ``generator`` seeds its noise.
    Returns:
        ``x0`` estimate ``[B, ...]`` in ``x``'s dtype.
    """
    _check_start(x, eps_mu)
    eta = check_scalar("eta", eta, 0.0, 1.0)
    ts = torch.as_tensor(timesteps)
    if ts.ndim != 1 or ts.numel() < 1:
        raise ValueError("timesteps must be a non-empty 1-D tensor")
    if ts.numel() > 1 and not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("timesteps must be strictly decreasing")
    a_all = schedule.alpha_bar(ts)                    # validates the range [0, T-1]
    B = x.shape[0]
    for i in range(ts.numel()):
        a = a_all[i]
        a_next = a_all[i + 1] if i + 1 < ts.numel() else torch.tensor(1.0, dtype=torch.float64)
        t_in = ts[i].to(device=x.device, dtype=compute_dtype(x)).expand(B)
        n_hat = eps_model(x, t_in)
        x0 = process.x0_from_eps(x, n_hat, a)
        if callback is not None:
            callback({"i": i, "x": x, "t": ts[i], "denoised": x0})
        noise = None
        if eta > 0 and i + 1 < ts.numel():
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
        x = process.backward_step(x, x0, eps_mu, a, a_next, eta if noise is not None else 0.0, noise)
    return x


@torch.no_grad()
def sample_ray_onestep(eps_model: EpsModel, x: torch.Tensor, schedule: NoiseSchedule,
                       t: Optional[int] = None) -> torch.Tensor:
    """Algorithm 3: one denoising at the last timestep ``T - 1`` (or ``t``): ``x0 = (x - sqrt(1-a) n)/sqrt(a)``."""
    check_finite("x", x)
    t = schedule.num_timesteps - 1 if t is None else t
    a = schedule.alpha_bar(torch.tensor(float(t)))
    n_hat = eps_model(x, torch.full((x.shape[0],), float(t), device=x.device, dtype=compute_dtype(x)))
    return RayProcess.x0_from_eps(x, n_hat, a)


# ----------------------------------------------------------------------------- sigma form
def vp_start_mean(x: torch.Tensor, sigma0: torch.Tensor, interpolation: Interpolation = EPS) -> torch.Tensor:
    """The VP point ``x / vp_scale(sigma0)`` of a start in ``interpolation``'s space: for ComfyUI
    text-to-image this is exactly the seeded noise (``x / sqrt(1 + sigma0^2)`` for eps models, ``x``
    itself at ``t = 1`` for flow models). Used as the zero-cost target mean ("noise" mode)."""
    scale = interpolation.vp_scale(torch.as_tensor(sigma0).detach().cpu())
    return (x.to(compute_dtype(x)) / float(scale)).to(x.dtype)


@torch.no_grad()
def sample_ray_sigma(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Optional[dict] = None,
                     callback=None, disable: Optional[bool] = None, process: Optional[RayProcess] = None,
                     eps_mu: Optional[torch.Tensor] = None, eta: float = 0.0,
                     noise_sampler: Optional[NoiseSampler] = None,
                     interpolation: Interpolation = EPS) -> torch.Tensor:
    """Algorithm 2 over a denoiser, with a k-diffusion sampler's signature (``KSAMPLER``-ready).

    ``x`` and ``sigmas`` live in ``interpolation``'s space (``EPS``: ``x = x0 + s n``, eq. 1.2;
    ``FLOW``: ``x = (1 - t) x0 + t n``, eq. 10.1), which is the VP point scaled by ``vp_scale(s)``.
    Each step maps ``x`` to the VP point, takes the Ray backward step (eq. 3.3,
    :meth:`RayProcess.backward_step`) from ``a(s_i)`` to ``a(s_{i+1})`` with ``x0 = model(x, s_i)``,
    and maps back (eq. 6.3, 10.5); the final step to ``s = 0`` returns the denoised sample. In the
    eps space this is eq. 6.3's sigma-form step; ``eta = 0`` on the sigma path is DDIM / flow Euler
    ``x' = x0 + (s_{i+1} / s_i)(x - x0)`` (``mu`` cancels). Sampling with one step (``sigmas =
    [s_max, 0]``) is Algorithm 3.

    Args:
        model: ``(x [B, ...], sigma [B], **extra_args) -> x0 [B, ...]``.
        x: start point ``[B, ...]`` in ``interpolation``'s space.
        sigmas: ``[N + 1]`` decreasing, ``> 0`` except a final ``0`` (flow: at most 1).
        process: the Ray process (variance coefficient and path); default ``RayProcess()``.
        eps_mu: target mean ``[B, ...]`` in VP noise units; ``None`` uses :func:`vp_start_mean`.
        eta: stochasticity in [0, 1]. noise_sampler: ``(s, s_next) -> noise``; default seeded
            from ``extra_args["seed"]``.
        interpolation: :data:`rayflow.schedule.EPS` or :data:`rayflow.schedule.FLOW`.
    """
    extra_args = {} if extra_args is None else extra_args
    process = RayProcess() if process is None else process
    _check_start(x, eps_mu)
    eta = check_scalar("eta", eta, 0.0, 1.0)
    sig = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)   # schedule math on the CPU
    check_finite("sigmas", sig)
    if sig.ndim != 1 or sig.numel() < 2:
        raise ValueError("sigmas must be a 1-D schedule with at least 2 entries (N steps need N+1)")
    if bool((sig[:-1] <= 0).any()) or float(sig[-1]) < 0:
        raise ValueError("sigmas must be > 0 except the last entry, which must be >= 0")
    if not bool((sig[1:] < sig[:-1]).all()):
        raise ValueError("sigmas must be strictly decreasing")
    if interpolation.name == "flow" and float(sig[0]) > 1:
        raise ValueError(f"flow noise levels must be at most 1, got sigmas[0] = {float(sig[0]):.6g}")
    if eps_mu is None:
        eps_mu = vp_start_mean(x, sig[0], interpolation)
    if eta > 0 and noise_sampler is None:
        noise_sampler = seeded_noise_sampler(x, extra_args.get("seed"))
    dt = compute_dtype(x)
    a_all, scale = interpolation.alpha_bar(sig), interpolation.vp_scale(sig)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(sig.numel() - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if float(sig[i + 1]) == 0.0:
            x = denoised
            continue
        noise = noise_sampler(sigmas[i], sigmas[i + 1]) if eta > 0 else None
        x_vp = (x.to(dt) / float(scale[i])).to(x.dtype)
        x_vp = process.backward_step(x_vp, denoised.to(x.dtype), eps_mu.to(x.dtype), a_all[i], a_all[i + 1], eta, noise)
        x = (x_vp.to(dt) * float(scale[i + 1])).to(x.dtype)
    return x


def denoiser_from_eps(eps_model: EpsModel, schedule: NoiseSchedule):
    """Wrap an epsilon model as a sigma-space denoiser ``model(x, sigma) -> x0`` (eq. 1.3):
    ``x0 = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma))``. This is what ComfyUI's EPS model
    wrapper does; it lets the VP world reuse the sigma-form kernels."""

    def model(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        s = torch.as_tensor(sigma).detach().to("cpu", torch.float64)
        a = alpha_bar_from_sigma(s)
        t = schedule.t_at(s).to(compute_dtype(x)).to(x.device)
        dt = compute_dtype(x)
        x_vp = (x.to(dt) * per_sample(a.sqrt(), x)).to(x.dtype)
        eps = eps_model(x_vp, t.expand(x.shape[0]))
        return (x.to(dt) - per_sample(s, x) * eps.to(dt)).to(x.dtype)

    return model
