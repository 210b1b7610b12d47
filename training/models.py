"""Loading the base model the trainer distils, and telling its architecture.

A base model is a diffusers folder (``model_index.json`` with ``unet/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/`` and optionally ``vae/``). Without ``vae/`` the model works in pixel
space (the proxy teacher). The schedule is read from the model's scheduler config.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Optional

import torch

from rayflow import NoiseSchedule


class ModelError(ValueError):
    """The base model is missing, corrupt or of an unsupported kind."""


@dataclass
class BaseModel:
    architecture: str
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    vae: Optional[torch.nn.Module]
    schedule: NoiseSchedule
    schedule_name: str
    path: str

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def latent_size(self, resolution: int) -> int:
        if self.vae is None:
            return resolution
        return resolution // (2 ** (len(self.vae.config.block_out_channels) - 1))

    @torch.no_grad()
    def encode_prompts(self, prompts: List[str], device: torch.device) -> torch.Tensor:
        """Text conditioning ``[B, L, C]`` (last hidden state of the text encoder)."""
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return self.text_encoder(tok.input_ids.to(device)).last_hidden_state

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] ``[B, 3, H, W]`` (identity for pixel-space models)."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        scale = getattr(self.vae.config, "scaling_factor", 0.18215)
        return self.vae.decode(latents / scale).sample.clamp(-1, 1)


def detect_architecture(path: str) -> str:
    """``sd15``, ``sdxl``, ``pixart_alpha`` or ``pixart_sigma`` from a diffusers folder's configs."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise ModelError(f"not a diffusers model folder (no model_index.json): {path}")
    try:
        with open(index, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {index}: {exc}") from None
    cls = str(info.get("_class_name", ""))
    if "transformer" in info or "PixArt" in cls:
        return "pixart_sigma" if "Sigma" in cls else "pixart_alpha"
    unet_cfg = os.path.join(path, "unet", "config.json")
    if not os.path.isfile(unet_cfg):
        raise ModelError(f"model folder has no unet/config.json: {path}")
    with open(unet_cfg, encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("addition_embed_type") == "text_time" or "text_encoder_2" in info:
        return "sdxl"
    return "sd15"


def _schedule_from(path: str) -> tuple:
    cfg_path = os.path.join(path, "scheduler", "scheduler_config.json")
    if not os.path.isfile(cfg_path):
        raise ModelError(f"model folder has no scheduler/scheduler_config.json: {path}")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("prediction_type", "epsilon") != "epsilon":
        raise ModelError(f"only epsilon-prediction models are supported, {path} predicts {cfg['prediction_type']!r}")
    kind = cfg.get("beta_schedule", "linear")
    n = int(cfg.get("num_train_timesteps", 1000))
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    if kind == "scaled_linear":
        return NoiseSchedule.scaled_linear(n, b0, b1), kind
    if kind == "linear":
        return NoiseSchedule.linear(n, b0, b1), kind
    raise ModelError(f"unsupported beta_schedule {kind!r} in {cfg_path} (scaled_linear and linear are supported)")


def load_base_model(path: str, architecture: str = "auto", dtype: torch.dtype = torch.float32) -> BaseModel:
    """Load a diffusers folder. Raises :class:`ModelError` with one clear sentence on failure."""
    if not os.path.exists(path):
        raise ModelError(f"base model not found: {path}")
    if not os.path.isdir(path):
        raise ModelError(f"base model must be a diffusers folder (single-file checkpoints are not supported yet): {path}")
    detected = detect_architecture(path)
    arch = detected if architecture == "auto" else architecture
    if arch != "sd15":
        raise ModelError(f"architecture {arch!r} is not supported by this version of the trainer yet (sd15 is); "
                         f"model: {path}")
    schedule, schedule_name = _schedule_from(path)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    def _load(what, fn):
        try:
            return fn()
        except Exception as exc:  # diffusers/transformers raise many kinds for damaged folders
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"cannot load the {what} of {path}: {msg}") from None

    unet = _load("UNet", lambda: UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype))
    text_encoder = _load("text encoder", lambda: CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype))
    tokenizer = _load("tokenizer", lambda: CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"))
    vae = None
    if os.path.isdir(os.path.join(path, "vae")):
        vae = _load("VAE", lambda: AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype))
    for m in (unet, text_encoder, vae):
        if m is not None:
            m.requires_grad_(False).eval()
    return BaseModel(arch, unet, text_encoder, tokenizer, vae, schedule, schedule_name, path)
