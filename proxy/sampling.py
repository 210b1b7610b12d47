"""Sampling the proxy teachers and their LoRAs, and the evaluation set every proxy measurement uses.

* :func:`evaluation_set`: captions, per-image noise seeds that no LoRA trains on, and real images
  of the same captions (the reference of FD to data);
* :func:`teacher_samples`: the teacher with its CFG through the phase-1 solver code;
* :func:`rayflow_samples`: a RayFlow LoRA with the Ray sampler of its model (``ray_sample``: the VP
  form for the epsilon teacher, the flow form for the flow teacher; target mean from the seeded
  noise or from a Theorem-1 probe of the teacher, deterministic or stochastic steps);
* :func:`load_lora_unet`: a fresh teacher denoiser (UNet or transformer) with an exported LoRA file applied.

Sampling runs on the device the model lies on (:func:`model_device`; ``ModelParts.to_device`` puts it
on a GPU), and the images come back on the CPU, where every metric is computed. The initial noise
(``training.data.item_noise``) and the noise of stochastic steps are drawn on the CPU from the same
seeded generators whatever the device, so a GPU run samples from the same noise as a CPU run: its
numbers differ from the CPU's by floating-point rounding only (the schedule math stays float32 /
float64 on either), and on the CPU they are what they were before the device was chosen.
"""

from __future__ import annotations

import os
from typing import Tuple

import torch
from diffusers import UNet2DConditionModel

from rayflow import FLOW, RayProcess, denoiser_from_velocity, estimate_target_mean, estimate_target_mean_vp
from training.data import item_noise, teacher_trajectory
from training.export import load_transformer_lora, load_unet_lora
from training.flow_family import read_json
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


def model_device(model: BaseModel) -> torch.device:
    """The device the model's denoiser lies on (where its sampling runs)."""
    return next(model.unet.parameters()).device


def noise_and_cond(model: BaseModel, labels: torch.Tensor, seeds: torch.Tensor):
    """``(z [N, C, 16, 16], cond)``: the seeded initial noise of ``seeds`` ``[N]`` (drawn on the CPU, the
    same for every method) and the conditioning of the captions ``labels`` ``[N, 4]``, on the model's device."""
    device = model_device(model)
    cond = model.encode_prompts([caption_of(label) for label in labels.tolist()], device)
    z = item_noise(0, seeds, (model.latent_channels, RESOLUTION, RESOLUTION)).to(device)   # drawn on the CPU
    return z, cond


def _uncond(model: BaseModel, n: int):
    return {k: v.expand(n, *v.shape[1:]) for k, v in model.encode_prompts([""], model_device(model)).items()}


@torch.no_grad()
def teacher_samples(model: BaseModel, labels: torch.Tensor, seeds: torch.Tensor, solver: str, steps: int,
                    cfg: float = TEACHER_CFG) -> torch.Tensor:
    """Images ``[N, 3, 16, 16]`` (on the CPU) of the teacher (CFG ``cfg``, ``solver`` ``ddim`` / ``dpmsolver++``, flow:
    ``euler`` / ``dpmsolver++``, ``steps`` steps) for captions ``labels`` ``[N, 4]`` from the noise of
    ``seeds`` ``[N]``."""
    z, cond = noise_and_cond(model, labels, seeds)
    x0, _, _ = teacher_trajectory(model, z, cond, _uncond(model, len(labels)), solver, steps, cfg, RESOLUTION)
    return model.decode(x0).cpu()


def guided_velocity(model: BaseModel, cond, cfg: float = TEACHER_CFG, uncond=None):
    """The flow teacher's classifier-free-guided velocity ``v(x, s) = v_u + cfg (v_c - v_u)`` as a function
    of ``x`` ``[N, C, H, W]`` and sigmas ``s`` ``[N]``, for the conditioning ``cond`` (a dict of ``[N, ...]``
    tensors, :meth:`BaseModel.encode_prompts`; one batched call of both halves per evaluation) and the
    negative prompt's ``uncond`` (same form; default: the empty prompt's, encoded here)."""
    uncond = _uncond(model, len(next(iter(cond.values())))) if uncond is None else uncond
    both = {k: torch.cat([u, cond[k]]) for k, u in uncond.items()}

    def velocity(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        vu, vc = model.velocity(torch.cat([x, x]), torch.cat([s, s]), both).float().chunk(2)
        return vu + cfg * (vc - vu)

    return velocity


@torch.no_grad()
def probe_target_mean(model: BaseModel, z: torch.Tensor, cond, probe_steps: int, process: RayProcess,
                      cfg: float = TEACHER_CFG) -> torch.Tensor:
    """The Theorem-1 target mean ``[N, C, H, W]`` of a ``probe_steps``-step deterministic probe of the
    teacher with CFG ``cfg`` (2 evaluations per probe step) from the seeded noise ``z`` (the Ray Target
    Mean node's ``probe`` mode): DDIM on the VP teacher, flow Euler on the flow teacher."""
    if model.schedule.interpolation is FLOW:
        return estimate_target_mean(denoiser_from_velocity(guided_velocity(model, cond, cfg)), z,
                                    model.schedule.ray_sigmas(probe_steps, torch.float64), process,
                                    interpolation=FLOW).eps_mu
    both = {k: torch.cat([u, cond[k]]) for k, u in _uncond(model, len(z)).items()}

    def teacher_eps(x, t):       # the base model with CFG
        eu, ec = model.denoise(torch.cat([x, x]), torch.cat([t, t]).round().long(), both, RESOLUTION).chunk(2)
        return eu + cfg * (ec - eu)

    return estimate_target_mean_vp(teacher_eps, z, model.schedule, probe_steps, process).eps_mu


@torch.no_grad()
def rayflow_samples(model: BaseModel, unet, labels: torch.Tensor, seeds: torch.Tensor, steps: int,
                    process: RayProcess, mu_mode: str = "noise", eta: float = 0.0,
                    cfg: float = TEACHER_CFG) -> Tuple[torch.Tensor, int]:
    """RayFlow images of ``unet`` for captions ``labels`` ``[N, 4]`` from the seeded noise of ``seeds``
    ``[N]`` in ``steps`` Ray steps of ``process`` (the model's ``ray_sample``), with the target mean of
    ``mu_mode`` (``noise``, or ``probeP``: a P-step Theorem-1 probe of the teacher with CFG ``cfg``) and
    stochasticity ``eta`` (its noise from a fixed generator, the same for every LoRA). Returns
    ``(images [N, 3, 16, 16] on the CPU, model evaluations per image)``; ``unet`` lies on the model's device."""
    z, cond = noise_and_cond(model, labels, seeds)
    mu, extra_nfe = None, 0
    if mu_mode.startswith("probe"):
        P = int(mu_mode[len("probe"):])
        mu, extra_nfe = probe_target_mean(model, z, cond, P, process, cfg), 2 * P
    x0 = model.ray_sample(unet, z, cond, process, steps, RESOLUTION, eps_mu=mu, eta=eta,
                          generator=torch.Generator().manual_seed(ETA_SEED))      # a CPU generator on any device
    return model.decode(x0).cpu(), steps + extra_nfe


def load_lora_unet(teacher: str, lora_path: str, device="cpu"):
    """A fresh teacher denoiser (from the diffusers folder ``teacher``: its UNet, or the transformer of
    the flow teacher) with the LoRA file ``lora_path`` validated and applied (``training.export``;
    the benchmarks' LCM-LoRA baseline, which has no RayFlow metadata, gets the same tensor checks),
    on ``device``."""
    if os.path.isdir(os.path.join(teacher, "transformer")):
        import diffusers

        cls = getattr(diffusers, read_json(os.path.join(teacher, "transformer", "config.json"))["_class_name"])
        net = cls.from_pretrained(teacher, subfolder="transformer", torch_dtype=torch.float32)
        return load_transformer_lora(net, lora_path, require_rayflow=False).eval().to(device)
    unet = UNet2DConditionModel.from_pretrained(teacher, subfolder="unet", torch_dtype=torch.float32)
    return load_unet_lora(unet, lora_path, require_rayflow=False).eval().to(device)
