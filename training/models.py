"""Loading the base model the trainer distils, and telling its architecture.

A base model is a diffusers folder (``model_index.json`` with ``unet/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/`` and optionally ``vae/``; without ``vae/`` the model works in pixel
space, like the proxy teacher) or a single-file SD1.5 / SDXL ``.safetensors`` checkpoint
(``training/single_file.py``). The schedule is read from the scheduler config. SD3 / SD3.5 and
FLUX.1 folders are detected here and load as a ``flow_models.FlowModel`` (the same interface).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional

import torch

from rayflow import NoiseSchedule, sample_ray

from .flow_family import FAMILIES as FLOW_FAMILIES, SUPPORTED, detect_flow_family
from .flow_models import FlowModel, load_flow_model
from .model_errors import ModelError, load_component
from .model_parts import ModelParts


@dataclass
class BaseModel(ModelParts):
    """A loaded epsilon-prediction (VP) base model (SD1.5, SDXL, PixArt); its fields are those of
    :class:`ModelParts`."""

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the denoiser's frozen base weights (``--base-precision``; LoRA weights may differ)."""
        return next(p.dtype for n, p in self.unet.named_parameters() if "lora_" not in n)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def latent_size(self, resolution: int) -> int:
        if self.vae is None:
            return resolution
        return resolution // (2 ** (len(self.vae.config.block_out_channels) - 1))

    def _tokens(self, tok, prompts: List[str], device: torch.device):
        out = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt")
        return out.input_ids.to(device), out.attention_mask.to(device)

    @torch.no_grad()
    def encode_prompts(self, prompts: List[str], device: torch.device) -> Dict[str, torch.Tensor]:
        """Text conditioning, cached by phase 1. ``cond`` ``[B, L, D]`` always; SDXL adds ``pooled``
        ``[B, P]`` (second encoder's projected embedding, ``cond`` = both encoders' penultimate
        hidden states concatenated); PixArt adds ``mask`` ``[B, L]`` (T5 attention mask)."""
        if self.architecture == "sdxl":
            hs, pooled = [], None
            for tok, enc in zip(self.tokenizers, self.text_encoders):
                ids, _ = self._tokens(tok, prompts, device)
                out = enc(ids, output_hidden_states=True)
                hs.append(out.hidden_states[-2])
                pooled = out[0] if out[0].dim() == 2 else None
            if pooled is None:
                raise ModelError("the second SDXL text encoder gives no pooled projection (expected CLIPTextModelWithProjection)")
            return {"cond": torch.cat(hs, dim=-1).float(), "pooled": pooled.float()}
        if self.architecture.startswith("pixart"):
            ids, mask = self._tokens(self.tokenizers[0], prompts, device)
            hs = self.text_encoders[0](ids, attention_mask=mask).last_hidden_state
            return {"cond": hs.float(), "mask": mask.float()}
        ids, _ = self._tokens(self.tokenizers[0], prompts, device)
        return {"cond": self.text_encoders[0](ids).last_hidden_state.float()}

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Dict[str, torch.Tensor], resolution: int,
                net: Optional[torch.nn.Module] = None) -> torch.Tensor:
        """Noise prediction ``[B, C, h, w]`` of the denoiser at ``x`` ``[B, C, h, w]``, integer
        timesteps ``t`` ``[B]``, conditioning ``cond`` (see :meth:`encode_prompts`), image
        ``resolution`` in pixels (SDXL time ids, PixArt resolution embedding). ``net`` is the module
        called (default ``self.unet``; the trainer passes its accelerate-wrapped one). The denoiser
        runs in the dtype of its frozen weights (``--base-precision``); the prediction comes back in
        ``x``'s dtype, so the schedule math around it keeps its precision."""
        net = self.unet if net is None else net
        in_dtype, dtype = x.dtype, self.dtype
        x, t = x.to(dtype), t.to(x.device)          # t may come on the CPU, where FlowModel.denoise reads it
        ehs = cond["cond"].to(x.device, dtype)
        B = x.shape[0]
        if self.architecture == "sdxl":
            ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=ehs.dtype, device=x.device)
            extra = {"text_embeds": cond["pooled"].to(x.device, dtype), "time_ids": ids.expand(B, -1)}
            out = net(x, t, encoder_hidden_states=ehs, added_cond_kwargs=extra).sample
        elif self.architecture.startswith("pixart"):
            extra = {"resolution": torch.tensor([[resolution, resolution]], dtype=ehs.dtype, device=x.device).expand(B, -1),
                     "aspect_ratio": torch.ones(B, 1, dtype=ehs.dtype, device=x.device)}
            out = net(x, encoder_hidden_states=ehs, timestep=t, added_cond_kwargs=extra,
                            encoder_attention_mask=cond["mask"].to(x.device, dtype)).sample
            C = x.shape[1]
            out = out[:, :C] if out.shape[1] == 2 * C else out     # learned-sigma models: keep eps
        else:
            out = net(x, t, encoder_hidden_states=ehs).sample
        return out.to(in_dtype)

    # ------------------------------------------------------------ phase 2 (FlowModel has the flow forms)
    @property
    def lora_blocks(self) -> tuple:
        """Module-name prefixes the LoRA targets are limited to (PixArt: its transformer blocks)."""
        return ("transformer_blocks.",) if self.architecture.startswith("pixart") else ()

    lora_exclude: ClassVar[tuple] = ()         # no UNet / PixArt layer is unused

    def training_pair(self, process, x0: torch.Tensor, eps_mu: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
        """``(x_t, n_t)`` at integer timesteps ``t`` ``[B]`` (eq. 4.2, 7.1)."""
        return process.training_pair(x0, eps_mu, self.schedule.alpha_bar(t.double()), noise)

    def loss_weight(self, process, t: torch.Tensor, weighting: str) -> torch.Tensor:
        """Eq. 7.2's weight of the noise error at timesteps ``t`` ``[B]``."""
        return process.loss_weight(self.schedule.alpha_bar(t.double()), weighting)

    @torch.no_grad()
    def ray_sample(self, net, z: torch.Tensor, cond: Dict[str, torch.Tensor], process, steps: int,
                   resolution: int, eps_mu: Optional[torch.Tensor] = None, eta: float = 0.0,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """RayFlow's ``steps``-step sample (VP form, Algorithm 2) from the seeded noise ``z`` with the
        target mean ``eps_mu`` (None: the noise mode, ``z``) and stochasticity ``eta``, its noise drawn
        from ``generator``."""
        def eps_model(x, t):
            return self.denoise(x, t, cond, resolution, net=net).float()

        return sample_ray(eps_model, z, z if eps_mu is None else eps_mu, process, self.schedule,
                          self.schedule.ray_timesteps(steps), eta=eta, generator=generator)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] ``[B, 3, H, W]`` (identity for pixel-space models)."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        scale = getattr(self.vae.config, "scaling_factor", 0.18215)
        return self.vae.decode(latents.to(next(self.vae.parameters()).dtype) / scale).sample.float().clamp(-1, 1)


def detect_architecture(path: str) -> str:
    """``sd15``, ``sdxl``, ``pixart_alpha``, ``pixart_sigma``, ``sd3``, ``flux_dev`` or ``flux_schnell``
    from a diffusers folder's configs; a family this trainer does not distil is one ModelError sentence."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise ModelError(f"not a diffusers model folder (no model_index.json): {path}")
    try:
        with open(index, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {index}: {exc}") from None
    cls = str(info.get("_class_name", ""))
    flow, unsupported = detect_flow_family(path, info)
    if unsupported:
        raise ModelError(f"{path}: {unsupported}")
    if flow:
        return flow
    if "transformer" in info or "PixArt" in cls:
        if "Sigma" in cls:
            return "pixart_sigma"
        if "Alpha" in cls or "PixArt" in cls:
            return "pixart_alpha"
        tcfg = os.path.join(path, "transformer", "config.json")
        if os.path.isfile(tcfg):
            with open(tcfg, encoding="utf-8") as f:
                t = json.load(f)
            if t.get("_class_name") == "PixArtTransformer2DModel":
                # PixArt-sigma drops the resolution/aspect-ratio micro-conditions of alpha
                uac = t.get("use_additional_conditions")
                if uac is None:          # diffusers' default: on for the 1024px (sample_size 128) alpha models
                    uac = t.get("sample_size") == 128
                return "pixart_alpha" if uac else "pixart_sigma"
        raise ModelError(f"unknown transformer architecture in {path} (supported: {SUPPORTED})")
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


def load_base_model(path: str, architecture: str = "auto", dtype: torch.dtype = torch.float32,
                    model_config: str = "", resolution: int = 1024, base_precision: str = "",
                    guidance: float = 0.0) -> "BaseModel | FlowModel":
    """Load a diffusers folder or a single-file checkpoint (described by ``model_config`` or the
    bundled configs). Flow families (SD3, FLUX.1) load as a ``FlowModel`` whose schedule depends on
    ``resolution`` (FLUX's shift), ``base_precision`` (nf4 / int8: a quantized transformer) and
    ``guidance`` (FLUX.1-dev's embedding; 0 = the family's). Raises :class:`ModelError` with one clear
    sentence on failure."""
    if not os.path.exists(path):
        raise ModelError(f"base model not found: {path}")
    if not os.path.isdir(path):
        from .single_file import load_single_file

        arch, pipe, config_dir = load_single_file(path, architecture, model_config, dtype)
        schedule, schedule_name = _schedule_from(config_dir)
        encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if arch == "sdxl" else [])
        tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if arch == "sdxl" else [])
        for m in (pipe.unet, pipe.vae, *encoders):
            m.requires_grad_(False).eval()
        return BaseModel(arch, pipe.unet, encoders, tokenizers, pipe.vae, schedule, schedule_name, path)
    detected = detect_architecture(path)
    arch = detected if architecture == "auto" else architecture
    if arch != detected and {arch, detected} != {"pixart_alpha", "pixart_sigma"}:
        raise ModelError(f"--architecture {arch} does not match the model, which is {detected}: {path}")
    if arch in FLOW_FAMILIES:
        return load_flow_model(path, arch, dtype, resolution, base_precision, guidance)
    schedule, schedule_name = _schedule_from(path)
    import diffusers
    import transformers
    from diffusers import AutoencoderKL

    def _load(what, fn):
        return load_component(what, path, fn)

    with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
        index = json.load(f)

    def _cls(component, lib, default):
        spec = index.get(component) or [None, None]
        name = spec[1] if isinstance(spec, list) and len(spec) == 2 and spec[1] else default
        obj = getattr(lib, name, None)
        if obj is None:
            raise ModelError(f"unknown {component} class {name!r} in {path}/model_index.json")
        return obj

    if arch.startswith("pixart"):
        den_cls = _cls("transformer", diffusers, "PixArtTransformer2DModel")
        unet = _load("transformer", lambda: den_cls.from_pretrained(path, subfolder="transformer", torch_dtype=dtype))
        enc_names = [("text_encoder", "T5EncoderModel", "tokenizer", "AutoTokenizer")]
    else:
        den_cls = _cls("unet", diffusers, "UNet2DConditionModel")
        unet = _load("UNet", lambda: den_cls.from_pretrained(path, subfolder="unet", torch_dtype=dtype))
        enc_names = [("text_encoder", "CLIPTextModel", "tokenizer", "CLIPTokenizer")]
        if arch == "sdxl":
            enc_names.append(("text_encoder_2", "CLIPTextModelWithProjection", "tokenizer_2", "CLIPTokenizer"))
    encoders, tokenizers = [], []
    for enc, enc_default, tok, tok_default in enc_names:
        ecls = _cls(enc, transformers, enc_default)
        tcls = transformers.AutoTokenizer if tok_default == "AutoTokenizer" else _cls(tok, transformers, tok_default)
        encoders.append(_load(enc.replace("_", " "), lambda: ecls.from_pretrained(path, subfolder=enc, torch_dtype=dtype)))
        tokenizers.append(_load(tok.replace("_", " "), lambda: tcls.from_pretrained(path, subfolder=tok)))
    vae = None
    if os.path.isdir(os.path.join(path, "vae")):
        vae = _load("VAE", lambda: AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype))
    for m in (unet, vae, *encoders):
        if m is not None:
            m.requires_grad_(False).eval()
    return BaseModel(arch, unet, encoders, tokenizers, vae, schedule, schedule_name, path)
