"""RayFlow sampling nodes: KSampler-style sampler, SAMPLER and SIGMAS for SamplerCustom, and the
Ray Target Mean probe.

The nodes only translate ComfyUI types; the math is ``rayflow.sample_ray_sigma`` (wrapped in
``comfy.samplers.KSAMPLER``) and ``rayflow.estimate_target_mean``. Sampling goes through
``comfy.sample.sample_custom``, so CFG, ControlNet, model patches, stacked LoRAs, ``noise_mask``
inpainting, batches, the progress bar, previews and interrupts work as with the stock KSampler.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from ..rayflow import RayProcess, estimate_target_mean, sample_ray_sigma
from .schedule import ray_sigmas_for

CATEGORY = "sampling/rayflow"
DEFAULT_SIGMA = 0.3


def rayflow_settings(model_options: Optional[Dict]) -> Dict:
    """Settings a RayFlow LoRA Loader attached to a MODEL's ``model_options`` (empty without one)."""
    return dict((model_options or {}).get("rayflow", {}))


def resolve_process(model_options: Optional[Dict], sigma: float) -> RayProcess:
    """``sigma = 0`` means: the LoRA's value (0.3 without a RayFlow LoRA). The path follows the LoRA."""
    settings = rayflow_settings(model_options)
    s = sigma if sigma > 0 else settings.get("sigma", DEFAULT_SIGMA)
    return RayProcess(sigma=s, path=settings.get("path", "sigma"))


def model_sigmas(model) -> torch.Tensor:
    return model.get_model_object("model_sampling").sigmas.detach().float().cpu()


def _ray_sample(model, x, sigmas, extra_args=None, callback=None, disable=None, process=None, sigma=0.0,
                ray_target=None, eta=0.0):
    """k-diffusion sampler function handed to ``KSAMPLER``: ``x [B, C, H, W]`` (noise-scaled), ``sigmas [N+1]``.

    Without an explicit ``process`` the Ray process is resolved here from the sampling run's
    ``extra_args["model_options"]`` (so the SAMPLER node follows the RayFlow LoRA on the guider's
    model, as the KSampler-style node does). ``ray_target`` (from Ray Target Mean) is checked
    against the run's seed and latent shape and moved to the latent's device.
    """
    extra_args = {} if extra_args is None else extra_args
    if process is None:
        process = resolve_process(extra_args.get("model_options"), sigma)
    eps_mu = _target_tensor(ray_target, extra_args.get("seed"))
    if eps_mu is not None:
        if tuple(eps_mu.shape) != tuple(x.shape):
            raise ValueError(f"the ray_target was computed for latents of shape {list(eps_mu.shape)}, but this "
                             f"sampler's latents have shape {list(x.shape)}; run Ray Target Mean on the same latent")
        eps_mu = eps_mu.to(device=x.device, dtype=x.dtype)
    return sample_ray_sigma(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                            process=process, eps_mu=eps_mu, eta=eta)


def ray_ksampler(sigma: float, eta: float, ray_target: Optional[Dict] = None):
    """``comfy.samplers.KSAMPLER`` running the Ray sampler; ``sigma = 0`` takes the LoRA's value."""
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


SIGMA_INPUT = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01,
                         "tooltip": "Ray variance coefficient. 0 = use the value stored in the RayFlow LoRA "
                                    "(0.3 without one). Only matters with eta > 0."})
ETA_INPUT = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                       "tooltip": "0 = deterministic Ray steps; 1 = full stochastic Ray posterior steps "
                                  "(fresh noise scaled by sigma)."})


class RayFlowSampler:
    """KSampler-style RayFlow sampling (Algorithms 2 and 3 of the paper)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model, with a RayFlow LoRA applied (RayFlow LoRA Loader or stock LoraLoader)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                                 "tooltip": "Seed of the initial noise (and of the stochastic steps)."}),
                "steps": ("INT", {"default": 4, "min": 1, "max": 50,
                                  "tooltip": "Ray sampling steps: 1 is one-step generation (Algorithm 3); 2-8 are typical."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance. RayFlow LoRAs bake the teacher's guidance in: keep 1.0 (fastest, one model call per step)."}),
                "positive": ("CONDITIONING", {"tooltip": "What the image should contain."}),
                "negative": ("CONDITIONING", {"tooltip": "What to avoid (used only when cfg > 1)."}),
                "latent_image": ("LATENT", {"tooltip": "The latent to denoise: an Empty Latent Image, or an encoded image for img2img / inpainting."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "How much of the schedule to run; below 1 keeps part of the input latent (img2img)."}),
                "sigma": SIGMA_INPUT,
                "eta": ETA_INPUT,
            },
            "optional": {
                "ray_target": ("RAY_TARGET", {"tooltip": "Instance-specific target mean from Ray Target Mean (same seed and latent). Without it the seeded noise is the target mean (free)."}),
            },
        }

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = "Few-step sampling with a RayFlow LoRA, through ComfyUI's own sampling machinery."

    def sample(self, model, seed, steps, cfg, positive, negative, latent_image, denoise, sigma, eta, ray_target=None):
        import comfy.sample
        import comfy.utils
        import latent_preview

        latent = latent_image.copy()
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
        sigmas = ray_sigmas_for(model_sigmas(model), steps, denoise)
        if sigmas.numel() == 0:
            return (latent,)
        _target_tensor(ray_target, seed)            # fail before sampling when the seeds differ
        sampler = ray_ksampler(sigma, eta, ray_target)
        callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
        out = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, samples,
                                         noise_mask=latent.get("noise_mask"), callback=callback,
                                         disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        latent["samples"] = out
        return (latent,)


class RayFlowSamplerSelect:
    """The Ray sampler as a SAMPLER for SamplerCustom / SamplerCustomAdvanced."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sigma": SIGMA_INPUT, "eta": ETA_INPUT},
                "optional": {"ray_target": ("RAY_TARGET", {"tooltip": "Target mean from Ray Target Mean (same seed and latent)."})}}

    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("The Ray sampler, for SamplerCustom / SamplerCustomAdvanced.",)
    FUNCTION = "get_sampler"
    CATEGORY = CATEGORY
    DESCRIPTION = ("RayFlow's sampler for the custom-sampling nodes; pair it with RayFlow Scheduler. sigma 0 and the "
                   "Ray path follow the RayFlow LoRA on the guider's model.")

    def get_sampler(self, sigma, eta, ray_target=None):
        return (ray_ksampler(sigma, eta, ray_target),)


class RayFlowScheduler:
    """Ray SIGMAS (trailing timesteps from the model's own schedule)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model whose noise schedule the sigmas come from."}),
            "steps": ("INT", {"default": 4, "min": 1, "max": 50, "tooltip": "Ray sampling steps."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "Fraction of the schedule to run (img2img below 1)."}),
        }}

    RETURN_TYPES = ("SIGMAS",)
    OUTPUT_TOOLTIPS = ("Ray noise levels: the model's sigmas at the trailing Ray timesteps, then 0.",)
    FUNCTION = "get_sigmas"
    CATEGORY = CATEGORY
    DESCRIPTION = "Ray timestep schedule (starts at the last timestep, so 1 step is one-step generation)."

    def get_sigmas(self, model, steps, denoise):
        return (ray_sigmas_for(model_sigmas(model), steps, denoise),)


class RayFlowTargetMean:
    """Theorem-1 target mean of the batch's initial noise, probed with the base model."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to probe (the base model, or the model with the RayFlow LoRA)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                             "tooltip": "Noise seed: use the same seed as the RayFlow Sampler."}),
            "probe_steps": ("INT", {"default": 4, "min": 1, "max": 50,
                                    "tooltip": "Deterministic probe steps. Costs probe_steps model evaluations per image (twice that with cfg > 1)."}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Guidance during the probe (the base model usually wants 4-8)."}),
            "positive": ("CONDITIONING", {"tooltip": "Prompt conditioning."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative conditioning (used when cfg > 1)."}),
            "latent_image": ("LATENT", {"tooltip": "The latent the RayFlow Sampler will denoise (same size and batch)."}),
        }}

    RETURN_TYPES = ("RAY_TARGET", "LATENT", "LATENT")
    RETURN_NAMES = ("ray_target", "target_mean", "probe_sample")
    OUTPUT_TOOLTIPS = ("Target mean for the RayFlow Sampler.",
                       "The target mean itself as a latent (it looks like structured noise).",
                       "The probe's own probe_steps-step sample, for inspection.")
    FUNCTION = "compute"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Instance-specific target mean (RayFlow Theorem 1): the time-average of the model's noise "
                   "predictions along a short deterministic probe from the seeded noise. "
                   "Cost: probe_steps model evaluations per image (x2 with cfg > 1).")

    def compute(self, model, seed, probe_steps, cfg, positive, negative, latent_image):
        import comfy.sample
        import comfy.samplers
        import comfy.utils
        import latent_preview

        latent = latent_image.copy()
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
        sigmas = ray_sigmas_for(model_sigmas(model), probe_steps, 1.0)
        process = resolve_process(model.model_options, 0.0)
        result = {}

        def probe(model_k, x, sigmas_k, extra_args=None, callback=None, disable=None):
            res = estimate_target_mean(model_k, x, sigmas_k, process, extra_args=extra_args, callback=callback)
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
        return (target, mean_latent, sample_latent)
