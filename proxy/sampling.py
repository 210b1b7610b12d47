"""Sampling the proxy teacher and its LoRAs, and the evaluation set every proxy measurement uses.

* :func:`evaluation_set`: captions, per-image noise seeds that no LoRA trains on, and real images
  of the same captions (the reference of FD to data);
* :func:`teacher_samples`: the teacher with its CFG through the phase-1 solver code;
* :func:`rayflow_samples`: a RayFlow LoRA with the Ray sampler (target mean from the seeded noise or
  from a Theorem-1 probe of the teacher, deterministic or stochastic steps);
* :func:`load_lora_unet`: a fresh teacher UNet with an exported LoRA file applied.
"""

from __future__ import annotations

from typing import Tuple

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from rayflow import RayProcess, estimate_target_mean_vp, sample_ray
from training.data import item_noise, teacher_trajectory
from training.models import BaseModel

from .data import caption_of, render
from .recipe import RESOLUTION, TEACHER_CFG

EVAL_SEED_BASE = 10_000_000      # per-image noise seeds of the evaluation: far from every training item's
ETA_SEED = 20_000_000            # the generator of the noise stochastic (eta > 0) steps inject


def evaluation_set(labels: torch.Tensor, per_caption: int, seed: int):
    """``(labels [N, 4], seeds [N], real [N, 3, 16, 16])``: every caption of ``labels`` ``[M, 4]``
    ``per_caption`` times, per-image noise seeds no LoRA trains on, and rendered real images of the
    same captions from the data seed ``seed`` (the reference of FD to data)."""
    labels = labels.repeat_interleave(per_caption, 0)
    seeds = EVAL_SEED_BASE + torch.arange(len(labels))
    return labels, seeds, render(labels, torch.Generator().manual_seed(seed + 99))


def _noise_and_cond(model: BaseModel, labels: torch.Tensor, seeds: torch.Tensor):
    cond = model.encode_prompts([caption_of(label) for label in labels.tolist()], torch.device("cpu"))
    z = item_noise(0, seeds, (model.latent_channels, RESOLUTION, RESOLUTION))
    return z, cond


def _uncond(model: BaseModel, n: int):
    return {k: v.expand(n, *v.shape[1:]) for k, v in model.encode_prompts([""], torch.device("cpu")).items()}


@torch.no_grad()
def teacher_samples(model: BaseModel, labels: torch.Tensor, seeds: torch.Tensor, solver: str, steps: int) -> torch.Tensor:
    """Images ``[N, 3, 16, 16]`` of the teacher (CFG ``TEACHER_CFG``, ``solver`` ``ddim`` or
    ``dpmsolver++``, ``steps`` steps) for captions ``labels`` ``[N, 4]`` from the noise of ``seeds`` ``[N]``."""
    z, cond = _noise_and_cond(model, labels, seeds)
    x0, _, _ = teacher_trajectory(model, z, cond, _uncond(model, len(labels)), solver, steps, TEACHER_CFG, RESOLUTION)
    return model.decode(x0)


@torch.no_grad()
def rayflow_samples(model: BaseModel, unet, labels: torch.Tensor, seeds: torch.Tensor, steps: int,
                    process: RayProcess, mu_mode: str = "noise", eta: float = 0.0) -> Tuple[torch.Tensor, int]:
    """RayFlow images of ``unet`` for captions ``labels`` ``[N, 4]`` from the seeded noise of ``seeds``
    ``[N]`` in ``steps`` Ray steps of ``process``, with the target mean of ``mu_mode`` (``noise``, or
    ``probeP``: a P-step Theorem-1 probe of the teacher with its CFG) and stochasticity ``eta`` (its
    noise from a fixed generator, the same for every LoRA). Returns ``(images [N, 3, 16, 16], model
    evaluations per image)``."""
    z, cond = _noise_and_cond(model, labels, seeds)
    mu, extra_nfe = z, 0
    if mu_mode.startswith("probe"):
        P = int(mu_mode[len("probe"):])
        both = {k: torch.cat([u, cond[k]]) for k, u in _uncond(model, len(labels)).items()}

        def teacher_eps(x, t):       # the base model with CFG (2 evaluations per probe step)
            eu, ec = model.denoise(torch.cat([x, x]), torch.cat([t, t]).round().long(), both, RESOLUTION).chunk(2)
            return eu + TEACHER_CFG * (ec - eu)

        mu = estimate_target_mean_vp(teacher_eps, z, model.schedule, P, process).eps_mu
        extra_nfe = 2 * P

    def eps_model(x, t):
        return unet(x, t, encoder_hidden_states=cond["cond"]).sample

    x0 = sample_ray(eps_model, z, mu, process, model.schedule, model.schedule.ray_timesteps(steps), eta=eta,
                    generator=torch.Generator().manual_seed(ETA_SEED))
    return model.decode(x0), steps + extra_nfe


def load_lora_unet(teacher: str, lora_path: str):
    """A fresh teacher UNet (from the diffusers folder ``teacher``) with the exported LoRA file
    ``lora_path`` loaded through diffusers' LoRA loader."""
    unet = UNet2DConditionModel.from_pretrained(teacher, subfolder="unet", torch_dtype=torch.float32)
    state, alphas = StableDiffusionPipeline.lora_state_dict(lora_path)
    unet.load_lora_adapter(state, prefix="unet", network_alphas=alphas, adapter_name="rayflow")
    return unet.eval()
