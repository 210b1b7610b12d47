"""A loaded SD3 / SD3.5 or FLUX.1 base model: the flow-matching counterpart of ``models.BaseModel``,
with the same interface to phase 1 and phase 2 (``docs/method.md`` section 10).

``denoise`` returns the transformer's velocity ``v`` at an index ``t`` of the model's
:class:`rayflow.FlowSchedule` (noise level ``schedule.sigma_at(t)``; SD3 takes ``1000 t`` as its
timestep input, FLUX ``t`` itself and the guidance embedding). The text conditioning comes from
diffusers' own pipelines' ``encode_prompt`` (CLIP-L + CLIP-G + T5 for SD3; CLIP-L pooled + T5 for
FLUX), so it is the conditioning diffusers samples with.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from rayflow import (FlowSchedule, denoiser_from_velocity, flow_training_pair, flux_mu, sample_ray_sigma,
                     velocity_loss_weight)

from .flow_family import FAMILIES, FLOW_BLOCKS, FLUX_GUIDANCE, FlowFamily, read_json
from .model_errors import ModelError, load_component
from .model_parts import ModelParts
from .quantize import QUANTIZED, quantize_linears


T5_LENGTH_KEY = "_rayflow_t5_length"     # model_index.json: the T5 tokens a model was trained on (diffusers ignores "_" keys)


@dataclass
class FlowModel(ModelParts):
    """A loaded flow model (the fields of :class:`ModelParts`, ``unet`` its transformer) with its
    ``family``; ``compute_dtype`` is the dtype the frozen transformer computes in (its weights' dtype,
    or bf16 for an nf4 / int8 base); ``resolution`` the size its schedule was made for (FLUX's shift);
    ``guidance`` FLUX.1-dev's embedded guidance (None for the others); ``text_length`` the T5 sequence
    length (the pipeline's, ``family.t5_length``, unless ``model_index.json`` names another under
    ``T5_LENGTH_KEY``, as the flow proxy teacher's does).
    Without a VAE (``vae`` None) the model works in pixel space, as ``BaseModel`` does: the proxy
    teacher ``proxy/weights/flow_teacher`` (3 x 16 x 16)."""
    family: Optional[FlowFamily] = None
    compute_dtype: torch.dtype = torch.float32
    resolution: int = 1024
    guidance: Optional[float] = None
    text_length: int = 0
    lora_blocks = FLOW_BLOCKS

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype

    @property
    def lora_exclude(self) -> tuple:
        """Layers whose output the model never uses, so an adapter there would never train: the text
        query of SD3's last joint block (``context_pre_only``: its text tokens are dropped)."""
        return tuple(f"transformer_blocks.{i}.attn.add_q_proj" for i, block in enumerate(self.unet.transformer_blocks)
                     if getattr(block, "context_pre_only", False))

    @property
    def latent_channels(self) -> int:
        return 16 if self.vae is not None else int(self.unet.config.in_channels)

    def latent_size(self, resolution: int) -> int:
        if self.vae is None:
            return resolution
        return resolution // 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------ phase 1: text
    @torch.no_grad()
    def encode_prompts(self, prompts: List[str], device: torch.device) -> Dict[str, torch.Tensor]:
        """``cond`` ``[B, L, D]`` and ``pooled`` ``[B, P]`` of ``prompts`` (:func:`text_conditioning`)."""
        return text_conditioning(self.family, self.text_encoders, self.tokenizers, prompts, device,
                                 self.text_length or self.family.t5_length)

    # ------------------------------------------------------------ the denoiser
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Dict[str, torch.Tensor],
                 net: Optional[torch.nn.Module] = None) -> torch.Tensor:
        """The velocity ``[B, C, h, w]`` at latents ``x`` and noise levels ``sigma`` ``[B]`` in (0, 1], through
        ``net`` (default: the transformer); computed in the transformer's dtype, returned in ``x``'s."""
        net = self.unet if net is None else net
        in_dtype, dtype, dev = x.dtype, self.dtype, x.device
        B, C, h, w = x.shape
        ehs, pooled = cond["cond"].to(dev, dtype), cond["pooled"].to(dev, dtype)
        s = torch.as_tensor(sigma).to(dev, torch.float32).reshape(-1).expand(B)
        if self.architecture == "sd3":
            out = net(hidden_states=x.to(dtype), timestep=(1000.0 * s).to(dtype), encoder_hidden_states=ehs,
                      pooled_projections=pooled).sample
            return out.to(in_dtype)
        from diffusers import FluxPipeline

        packed = FluxPipeline._pack_latents(x.to(dtype), B, C, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(B, h // 2, w // 2, dev, dtype)
        txt_ids = torch.zeros(ehs.shape[1], 3, device=dev, dtype=dtype)
        guidance = None if self.guidance is None else torch.full((B,), float(self.guidance), device=dev, dtype=torch.float32)
        out = net(hidden_states=packed, timestep=s.to(dtype), guidance=guidance, pooled_projections=pooled,
                  encoder_hidden_states=ehs, txt_ids=txt_ids, img_ids=img_ids).sample
        return FluxPipeline._unpack_latents(out, h * 8, w * 8, 8).to(in_dtype)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Dict[str, torch.Tensor], resolution: int,
                net: Optional[torch.nn.Module] = None) -> torch.Tensor:
        """The velocity at schedule indices ``t`` ``[B]`` (``BaseModel.denoise``'s interface)."""
        return self.velocity(x, self.schedule.sigma_at(t.detach().cpu().double()).float(), cond, net)

    # ------------------------------------------------------------ phase 2: the Ray pair and its loss
    def training_pair(self, process, x0: torch.Tensor, eps_mu: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
        """``(x_t, v)`` at schedule indices ``t`` (eq. 10.7)."""
        return flow_training_pair(process, x0, eps_mu, self.schedule.sigma_at(t.double()), noise)

    def loss_weight(self, process, t: torch.Tensor, weighting: str) -> torch.Tensor:
        """Eq. 7.2's weight on the velocity error (eq. 10.8) at schedule indices ``t`` ``[B]``."""
        return velocity_loss_weight(self.schedule.sigma_at(t.double()), weighting)

    @torch.no_grad()
    def ray_sample(self, net, z: torch.Tensor, cond: Dict[str, torch.Tensor], process, steps: int,
                   resolution: int, eps_mu: Optional[torch.Tensor] = None, eta: float = 0.0,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """RayFlow's ``steps``-step sample from the seeded noise ``z`` (t = 1) with the target mean ``eps_mu``
        (None: the noise mode, ``z``) and stochasticity ``eta``, its noise drawn from ``generator``."""
        den = denoiser_from_velocity(lambda x, s: self.velocity(x, s, cond, net).float())
        noise = None if generator is None else (
            lambda s, s_next: torch.randn(z.shape, generator=generator, dtype=torch.float32).to(z.device))
        return sample_ray_sigma(den, z.float(), self.schedule.ray_sigmas(steps, torch.float64), process=process,
                                eps_mu=None if eps_mu is None else eps_mu.float(), eta=eta, noise_sampler=noise,
                                interpolation=self.schedule.interpolation, disable=True)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] ``[B, 3, H, W]`` (``latent / scaling_factor + shift_factor``;
        pixel-space models: the latents, clamped)."""
        if self.vae is None:
            return latents.float().clamp(-1, 1)
        cfg = self.vae.config
        z = latents.float() / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        return self.vae.decode(z.to(next(self.vae.parameters()).dtype)).sample.float().clamp(-1, 1)

    def metadata(self) -> Dict[str, object]:
        """The family's LoRA metadata (``docs/lora-format.md``): the flow path, the shift of its schedule
        at the training resolution and, for FLUX.1-dev, the guidance the LoRA was trained at (the
        FluxGuidance value to sample with)."""
        out: Dict[str, object] = {"rayflow.path": "flow", "rayflow.shift": f"{self.schedule.shift:.6g}",
                                  "rayflow.resolution": self.resolution}
        if self.guidance is not None:
            out["rayflow.recommended_guidance"] = f"{self.guidance:g}"
        return out


def text_conditioning(family: FlowFamily, encoders, tokenizers, prompts: List[str], device: torch.device,
                      length: int) -> Dict[str, torch.Tensor]:
    """``cond`` ``[B, L, D]`` (SD3: CLIP-L and CLIP-G hidden states padded to T5's width, then ``length``
    T5 tokens; FLUX: T5) and ``pooled`` ``[B, P]`` (SD3: both CLIP projections; FLUX: CLIP-L's pooled
    output), from the family's diffusers pipeline (built around the text encoders only). Gradients flow
    when the caller allows them (the flow proxy teacher trains its encoders through it)."""
    import diffusers

    parts = {}
    for (enc, _, tok), encoder, tokenizer in zip(family.encoders, encoders, tokenizers):
        parts[enc], parts[tok] = encoder, tokenizer
    pipe = getattr(diffusers, family.pipeline)(transformer=None, scheduler=None, vae=None, **parts)
    if family.arch == "sd3":
        cond, _, pooled, _ = pipe.encode_prompt(list(prompts), None, None, device=device,
                                                do_classifier_free_guidance=False, max_sequence_length=length)
    else:
        cond, pooled, _ = pipe.encode_prompt(list(prompts), None, device=device, max_sequence_length=length)
    return {"cond": cond.float(), "pooled": pooled.float()}


def flow_schedule(path: str, resolution: int) -> FlowSchedule:
    """The model's table of noise levels at ``resolution`` (eq. 10.9) from ``scheduler/scheduler_config.json``:
    a static ``shift`` (SD3: 3), or FLUX's resolution-dependent ``e^mu`` (``use_dynamic_shifting``)."""
    cfg = read_json(os.path.join(path, "scheduler", "scheduler_config.json"))
    if not cfg:
        raise ModelError(f"model folder has no readable scheduler/scheduler_config.json: {path}")
    if cfg.get("_class_name", "FlowMatchEulerDiscreteScheduler") != "FlowMatchEulerDiscreteScheduler":
        raise ModelError(f"{path}: a flow model's scheduler must be FlowMatchEulerDiscreteScheduler, "
                         f"got {cfg.get('_class_name')}")
    T = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("use_dynamic_shifting"):
        if cfg.get("time_shift_type", "exponential") != "exponential":
            raise ModelError(f"{path}: only the exponential dynamic time shift (FLUX's) is supported")
        vae = read_json(os.path.join(path, "vae", "config.json"))
        per_token = 2 * 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)      # VAE factor x 2x2 patches
        mu = flux_mu(resolution, resolution, base_shift=float(cfg.get("base_shift", 0.5)),
                     max_shift=float(cfg.get("max_shift", 1.15)), base_seq_len=int(cfg.get("base_image_seq_len", 256)),
                     max_seq_len=int(cfg.get("max_image_seq_len", 4096)), pixels_per_token=per_token)
        return FlowSchedule.shifted(math.exp(mu), T)
    return FlowSchedule.shifted(float(cfg.get("shift", 1.0)), T)


def load_flow_model(path: str, arch: str, dtype: torch.dtype, resolution: int, base_precision: str = "",
                    guidance: float = 0.0) -> FlowModel:
    """Load an SD3 / FLUX.1 diffusers folder; every component is required (a missing T5 or CLIP
    encoder is one :class:`ModelError` sentence). ``base_precision`` ``nf4`` / ``int8`` quantizes the
    transformer's linear layers (QLoRA), computing in ``dtype`` (bf16 by default for those)."""
    import diffusers
    import transformers

    family = FAMILIES[arch]
    pixels = not os.path.isdir(os.path.join(path, "vae")) and read_json(
        os.path.join(path, "transformer", "config.json")).get("in_channels") == 3      # an RGB model: pixel space
    for sub in ("transformer", *(() if pixels else ("vae",)), *[e for e, _, _ in family.encoders],
                *[t for _, _, t in family.encoders]):
        if not os.path.isdir(os.path.join(path, sub)):
            what = {"text_encoder_3": "T5 text encoder", "tokenizer_3": "T5 tokenizer"}.get(sub, sub.replace("_", " "))
            if arch.startswith("flux"):
                what = {"text_encoder_2": "T5 text encoder", "tokenizer_2": "T5 tokenizer"}.get(sub, what)
            raise ModelError(f"{family.name} needs its {what} ({sub}/), which {path} lacks; "
                             f"download the complete diffusers folder")
    schedule = flow_schedule(path, resolution)

    def _load(what, fn):
        return load_component(what, path, fn)

    load_dtype = torch.bfloat16 if base_precision in QUANTIZED and dtype == torch.float32 else dtype
    transformer = _load("transformer", lambda: getattr(diffusers, family.transformer).from_pretrained(
        path, subfolder="transformer", torch_dtype=load_dtype))
    if base_precision in QUANTIZED:
        quantize_linears(transformer, base_precision, load_dtype)
    encoders, tokenizers = [], []
    for enc, cls, tok in family.encoders:
        encoders.append(_load(enc.replace("_", " "), lambda: getattr(transformers, cls).from_pretrained(
            path, subfolder=enc, torch_dtype=dtype if base_precision not in QUANTIZED else load_dtype)))
        tokenizers.append(_load(tok.replace("_", " "),
                                lambda: transformers.AutoTokenizer.from_pretrained(path, subfolder=tok)))
    vae = None if pixels else _load("VAE", lambda: diffusers.AutoencoderKL.from_pretrained(
        path, subfolder="vae", torch_dtype=load_dtype))
    for m in (transformer, vae, *encoders):
        if m is not None:
            m.requires_grad_(False).eval()
    g = None
    if family.guidance:
        g = float(guidance) if guidance else FLUX_GUIDANCE
    # the pipeline's T5 length, unless the folder declares the one it was trained with (the flow proxy teacher: 16)
    length = int(read_json(os.path.join(path, "model_index.json")).get(T5_LENGTH_KEY, family.t5_length))
    return FlowModel(arch, transformer, encoders, tokenizers, vae, schedule, "flow", path, family, load_dtype, resolution, g,
                     text_length=length)
