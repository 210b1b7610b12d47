"""What the RayFlow sampling nodes do: KSampler-style sampling, SAMPLER and SIGMAS for SamplerCustom,
and the Ray Target Mean probe (the nodes themselves are ``nodes/v3.py``).

ComfyUI modules are imported inside the functions. The math is ``rayflow.sample_ray_sigma`` (wrapped in
``comfy.samplers.KSAMPLER``) and ``rayflow.estimate_target_mean``. Sampling goes through
``comfy.sample.sample_custom``, so CFG, ControlNet, model patches, stacked LoRAs, ``noise_mask``
inpainting, batches, the progress bar, previews and interrupts work as with the stock KSampler.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from ..rayflow import EPS, FLOW, Interpolation, RayProcess, estimate_target_mean, sample_ray_sigma
from .schedule import ray_sigmas_for

DEFAULT_SIGMA = 0.3


def rayflow_settings(model_options: Optional[Dict]) -> Dict:
    """Settings a RayFlow LoRA Loader attached to a MODEL's ``model_options`` (empty without one)."""
    return dict((model_options or {}).get("rayflow", {}))


def resolve_process(model_options: Optional[Dict], sigma: float, interpolation: Interpolation = EPS) -> RayProcess:
    """``sigma = 0`` means: the LoRA's value (0.3 without a RayFlow LoRA). The path follows the LoRA; a
    flow LoRA's path ("flow") is the Ray sigma path on the flow interpolation (docs/method.md eq. 10.2),
    and it must meet a flow model (and a VP LoRA's path a VP model)."""
    settings = rayflow_settings(model_options)
    s = sigma if sigma > 0 else settings.get("sigma", DEFAULT_SIGMA)
    path = settings.get("path", "flow" if interpolation.name == "flow" else "sigma")
    if (path == "flow") != (interpolation.name == "flow"):
        raise ValueError(f"the RayFlow LoRA on this model was trained on the {path} path, but the model samples as "
                         f"{'a flow-matching' if interpolation.name == 'flow' else 'an epsilon-prediction'} model; "
                         f"use a RayFlow LoRA made for this model")
    return RayProcess(sigma=s, path="sigma" if path == "flow" else path)


def resolve_eta(model_options: Optional[Dict], eta: float) -> float:
    """``eta < 0`` (the nodes' default) means: the RayFlow LoRA's recommended eta (``rayflow.recommended_eta``:
    1 for Ray LoRAs, 0 for ``--no-ray`` ones), 0 without a RayFlow LoRA or for a LoRA that predates the key."""
    return float(eta) if eta >= 0 else float(rayflow_settings(model_options).get("eta", 0.0))


def interpolation_of(model_sampling) -> Interpolation:
    """``FLOW`` for ComfyUI's CONST (rectified-flow) model sampling, ``EPS`` for the sigma-form ones."""
    import comfy.model_sampling

    return FLOW if isinstance(model_sampling, comfy.model_sampling.CONST) else EPS


def _denoiser_interpolation(model) -> Interpolation:
    """The interpolation of a k-diffusion sampler's model (``model.inner_model.inner_model.model_sampling``,
    as ComfyUI's own samplers read it); ``EPS`` for a bare denoiser function."""
    inner = getattr(getattr(model, "inner_model", None), "inner_model", None)
    sampling = getattr(inner, "model_sampling", None)
    return EPS if sampling is None else interpolation_of(sampling)


def model_schedule(model):
    """``(sigmas [T] float32 CPU, Interpolation)`` of a MODEL's own ``model_sampling``."""
    sampling = model.get_model_object("model_sampling")
    return sampling.sigmas.detach().float().cpu(), interpolation_of(sampling)


def _ray_sample(model, x, sigmas, extra_args=None, callback=None, disable=None, process=None, sigma=0.0,
                ray_target=None, eta=0.0):
    """k-diffusion sampler function handed to ``KSAMPLER``: ``x [B, C, H, W]`` (noise-scaled), ``sigmas [N+1]``.

    Without an explicit ``process`` the Ray process is resolved here from the sampling run's
    ``extra_args["model_options"]`` (so the SAMPLER node follows the RayFlow LoRA on the guider's
    model, as the KSampler-style node does). ``ray_target`` (from Ray Target Mean) is checked
    against the run's seed and latent shape and moved to the latent's device.
    """
    extra_args = {} if extra_args is None else extra_args
    interpolation = _denoiser_interpolation(model)
    if process is None:
        process = resolve_process(extra_args.get("model_options"), sigma, interpolation)
    eta = resolve_eta(extra_args.get("model_options"), eta)
    eps_mu = _target_tensor(ray_target, extra_args.get("seed"))
    if eps_mu is not None:
        if tuple(eps_mu.shape) != tuple(x.shape):
            raise ValueError(f"the ray_target was computed for latents of shape {list(eps_mu.shape)}, but this "
                             f"sampler's latents have shape {list(x.shape)}; run Ray Target Mean on the same latent")
        eps_mu = eps_mu.to(device=x.device, dtype=x.dtype)
    return sample_ray_sigma(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                            process=process, eps_mu=eps_mu, eta=eta, interpolation=interpolation)


def ray_ksampler(sigma: float, eta: float, ray_target: Optional[Dict] = None):
    """``comfy.samplers.KSAMPLER`` running the Ray sampler; ``sigma = 0`` and ``eta < 0`` take the LoRA's values."""
    import comfy.samplers

    return comfy.samplers.KSAMPLER(_ray_sample, extra_options={"sigma": sigma, "ray_target": ray_target, "eta": eta})


def _target_tensor(ray_target: Optional[Dict], seed: Optional[int]) -> Optional[torch.Tensor]:
    """``eps_mu [B, C, H, W]`` of a RAY_TARGET, after checking it was probed from this seed's noise."""
    if ray_target is None:
        return None
    if not isinstance(ray_target, dict) or "eps_mu" not in ray_target:
        raise ValueError("ray_target must come from a Ray Target Mean node")
    if ray_target.get("seed") is not None and seed is not None and int(ray_target["seed"]) != int(seed):
        raise ValueError(f"the ray_target was probed from the noise of seed {ray_target['seed']}, but this sampler "
                         f"uses seed {seed}; give both nodes the same seed")
    return ray_target["eps_mu"]


def sample(model, seed, steps, cfg, positive, negative, latent_image, denoise, sigma, eta, ray_target=None):
    """RayFlow Sampler: the denoised LATENT, sampled through ``comfy.sample.sample_custom``."""
    import comfy.sample
    import comfy.utils
    import latent_preview

    latent = latent_image.copy()
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    sigmas = ray_sigmas(model, steps, denoise)
    if sigmas.numel() == 0:
        return latent
    _target_tensor(ray_target, seed)            # fail before sampling when the seeds differ
    sampler = ray_ksampler(sigma, eta, ray_target)
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    out = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, samples,
                                     noise_mask=latent.get("noise_mask"), callback=callback,
                                     disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    latent["samples"] = out
    return latent


def ray_sigmas(model, steps: int, denoise: float) -> torch.Tensor:
    """RayFlow Scheduler: Ray SIGMAS (trailing timesteps from the model's own schedule)."""
    table, interpolation = model_schedule(model)
    return ray_sigmas_for(table, steps, denoise, interpolation)


def target_mean(model, seed, probe_steps, cfg, positive, negative, latent_image):
    """Ray Target Mean: ``(RAY_TARGET, target mean LATENT, probe sample LATENT)`` -- the Theorem-1
    target mean of the batch's initial noise, probed with the model."""
    import comfy.sample
    import comfy.samplers
    import comfy.utils
    import latent_preview

    latent = latent_image.copy()
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    table, interpolation = model_schedule(model)
    sigmas = ray_sigmas_for(table, probe_steps, 1.0, interpolation)
    process = resolve_process(model.model_options, 0.0, interpolation)
    result = {}

    def probe(model_k, x, sigmas_k, extra_args=None, callback=None, disable=None):
        res = estimate_target_mean(model_k, x, sigmas_k, process, extra_args=extra_args, callback=callback,
                                   interpolation=interpolation)
        result["res"] = res
        return res.sample

    callback = latent_preview.prepare_callback(model, probe_steps)
    probe_out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.KSAMPLER(probe), sigmas, positive,
                                           negative, samples, callback=callback,
                                           disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    res = result["res"]
    eps_mu = res.eps_mu.detach().cpu()
    target = {"eps_mu": eps_mu, "sigma": res.sigma.cpu(), "nfe": res.nfe, "seed": int(seed),
              "probe_steps": int(probe_steps)}
    mean_latent = latent.copy()
    mean_latent["samples"] = model.model.process_latent_out(eps_mu)
    sample_latent = latent.copy()
    sample_latent["samples"] = probe_out
    return target, mean_latent, sample_latent
