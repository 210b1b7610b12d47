"""The model families ``bench.scale`` measures, as one registry, and how each is built.

A :class:`Family` says everything the benchmark needs about one family: its name in
``training.distill`` (``architecture``), its native resolution, the full-size denoiser's config and
diffusers class (built on the meta device to count FLOPs and match LoRA keys, or with random weights
on a GPU to time it), the shapes of the text conditioning that phase 1 caches, how to write the whole
model with random weights as a diffusers folder (for the CPU runs through ``training.distill``) and as
a tiny model (the tests' path), the base model the trainer holds it as, its memory options, and what
the family's recipe sets beside ``training.distill``'s defaults. A family that the trainer learns to
distil is measured, counted and tabled by adding one entry to :data:`REGISTRY` (the flow families'
builders are in ``flow_builds``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, PixArtTransformer2DModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from rayflow import NoiseSchedule
from rayflow.schedule import RaySchedule
from rayflow.atomic_write import write_json
from training.config import DistillConfig
from training.flow_family import FAMILIES as FLOW_FAMILIES
from training.model_parts import ModelParts
from training.models import BaseModel
from training.tiny import WORDS, build_tiny_pixart, build_tiny_sd15, build_tiny_sdxl, write_t5_tokenizer
from training.tiny_flow import build_tiny_flux, build_tiny_sd3
from training.tokenizers import write_clip_tokenizer

from .flow_builds import (FLUX_DEV, SD35_MEDIUM, flow_base_model, flux_conditioning, flux_schedule, sd3_conditioning,
                          sd3_schedule, vae_config, write_flux, write_sd35)
from .recipe import DENSE_OPTIONS, MEMORY_OPTIONS, TINY_RESOLUTION, recipe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "training", "configs")
# PixArt-Sigma-XL-2-1024-MS (diffusers transformer config)
PIXART_SIGMA_XL = dict(sample_size=128, num_layers=28, patch_size=2, attention_head_dim=72, num_attention_heads=16,
                       caption_channels=4096, in_channels=4, out_channels=8, cross_attention_dim=1152,
                       attention_bias=True, activation_fn="gelu-approximate", norm_type="ada_norm_single",
                       norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000,
                       use_additional_conditions=False, interpolation_scale=2)
# T5-XXL (PixArt's text encoder) has 24 layers of this width; the stand-in keeps one
T5_XXL_WIDTH = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64, feed_forward_proj="gated-gelu")
T5_TOKENS = 300
CLIP_TOKENS = 77


@dataclass(frozen=True)
class Family:
    """One model family: what is built, at which size, and with which recipe.

    ``config`` gives the full-size denoiser's diffusers config and ``denoiser_class`` its class;
    ``conditioning(config, batch)`` the shapes of the cached text conditioning (``cond``, and
    ``pooled`` / ``mask`` where the family has them) that the denoiser is called with;
    ``write_full(folder, config)`` writes the whole model with random weights, the denoiser of
    ``config``, and returns its stand-ins; ``write_tiny(folder)`` writes the tiny model of
    ``training/tiny.py`` / ``tiny_flow.py``; ``schedule`` is the noise schedule (a ``NoiseSchedule``,
    or a ``FlowSchedule`` for the flow families) and ``base_model(architecture, denoiser, schedule,
    dtype, resolution)`` the model the trainer holds (``BaseModel`` or ``FlowModel``: its
    ``denoise``, ``lora_blocks`` and ``lora_exclude``); ``comfy_model`` the class in
    ``comfy.supported_models`` that ComfyUI builds the family with (``comfy_detects``: ComfyUI's own
    detection picks it from the diffusers transformer's keys, as ``load_diffusion_model`` does), and
    ``lora_pipeline`` the diffusers pipeline whose ``lora_state_dict`` reads the exported file
    (empty: peft loads it, through ``training.export.load_transformer_lora``); ``vae_config`` the
    full-size VAE's config; ``recipe`` the options that differ from ``training.distill``'s defaults
    (the native ``resolution`` is always set); ``memory_options`` the keys of ``MEMORY_OPTIONS`` the
    trainer takes for the family; ``block_unit`` the config keys that count the denoiser's blocks
    and how many of each make one unit of depth, for a measurement with fewer blocks than the full
    model (empty: the family is measured whole)."""
    key: str
    label: str
    architecture: str
    resolution: int
    denoiser: str
    denoiser_class: str
    config: Callable[[], Dict[str, Any]]
    conditioning: Callable[[Dict[str, Any], int], Dict[str, Tuple[int, ...]]]
    write_full: Callable[[str, Dict[str, Any]], List[str]]
    write_tiny: Callable[[str], Any]
    schedule: Callable[[], RaySchedule]
    comfy_model: str
    lora_pipeline: str = ""
    vae_config: Callable[[], Dict[str, Any]] = field(default=lambda: _bundled_vae("sdxl"))
    recipe: Dict[str, Any] = field(default_factory=dict)
    base_model: Callable[..., ModelParts] = field(default=lambda arch, net, schedule, dtype, resolution:
                                                  BaseModel(arch, net, [], [], None, schedule, "", ""))
    memory_options: Tuple[str, ...] = DENSE_OPTIONS
    block_unit: Dict[str, int] = field(default_factory=dict)
    comfy_detects: bool = False

    def options(self) -> Dict[str, Any]:
        """The options a distillation of this family runs with: the default recipe, its native
        resolution and what the family sets."""
        return {**recipe(), "resolution": self.resolution, **self.recipe}

    def distill_config(self, resolution: Optional[int] = None, **overrides) -> DistillConfig:
        """The trainer's configuration of this family's recipe, at ``resolution`` (default: the
        native one), with ``overrides`` (a memory option, the paths)."""
        return DistillConfig(**{**self.options(), "resolution": resolution or self.resolution, **overrides})

    def units(self, config: Dict[str, Any]) -> int:
        """How many units of depth (``block_unit``) the denoiser of ``config`` has."""
        key, per = next(iter(self.block_unit.items()))
        return config[key] // per

    def with_units(self, config: Dict[str, Any], units: int) -> Dict[str, Any]:
        """``config`` with ``units`` units of depth instead of its own (the width unchanged)."""
        return {**config, **{key: per * units for key, per in self.block_unit.items()}}


# ---------------------------------------------------------------- text conditioning per family
def clip_conditioning(config: Dict, batch: int) -> Dict[str, Tuple[int, ...]]:
    """SD1.5: one CLIP encoder's last hidden states."""
    return {"cond": (batch, CLIP_TOKENS, config["cross_attention_dim"])}


def sdxl_conditioning(config: Dict, batch: int) -> Dict[str, Tuple[int, ...]]:
    """SDXL: both CLIP encoders' hidden states side by side, and the second's pooled projection
    (the added embedding takes it beside six time ids)."""
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    return {"cond": (batch, CLIP_TOKENS, config["cross_attention_dim"]), "pooled": (batch, pooled)}


def t5_conditioning(config: Dict, batch: int) -> Dict[str, Tuple[int, ...]]:
    """PixArt: T5 hidden states and their attention mask."""
    return {"cond": (batch, T5_TOKENS, config["caption_channels"]), "mask": (batch, T5_TOKENS)}


# ---------------------------------------------------------------- full-size folders with random weights
def _save(model, out_dir: str, sub: str) -> None:
    model.save_pretrained(os.path.join(out_dir, sub))
    del model


def _read_json(path: str) -> Dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _bundled_vae(family: str) -> Dict:
    return _read_json(os.path.join(CONFIGS, family, "vae", "config.json"))


def _write_sd(family: str, out_dir: str, config: Dict) -> List[str]:
    src = os.path.join(CONFIGS, family)
    os.makedirs(os.path.join(out_dir, "scheduler"), exist_ok=True)
    write_json(os.path.join(out_dir, "model_index.json"), _read_json(os.path.join(src, "model_index.json")))
    write_json(os.path.join(out_dir, "scheduler", "scheduler_config.json"),
               _read_json(os.path.join(src, "scheduler", "scheduler_config.json")))
    _save(UNet2DConditionModel.from_config(config), out_dir, "unet")
    _save(AutoencoderKL.from_config(AutoencoderKL.load_config(os.path.join(src, "vae"))), out_dir, "vae")
    encoders = [("text_encoder", CLIPTextModel, "tokenizer")]
    if family == "sdxl":
        encoders.append(("text_encoder_2", CLIPTextModelWithProjection, "tokenizer_2"))
    for sub, cls, tok in encoders:
        _save(cls(CLIPTextConfig.from_pretrained(os.path.join(src, sub))), out_dir, sub)
        write_clip_tokenizer(WORDS, os.path.join(out_dir, tok), CLIP_TOKENS)
    return ["CLIP tokenizer: a word-level stand-in with the real 77-token length (the text encoders are real size)"]


def _write_pixart(out_dir: str, config: Dict) -> List[str]:
    _save(PixArtTransformer2DModel(**config), out_dir, "transformer")
    _save(AutoencoderKL.from_config(AutoencoderKL.load_config(os.path.join(CONFIGS, "sdxl", "vae"))), out_dir, "vae")
    write_t5_tokenizer(WORDS, os.path.join(out_dir, "tokenizer"), T5_TOKENS)
    _save(T5EncoderModel(T5Config(vocab_size=len(WORDS) + 8, num_layers=1, decoder_start_token_id=0, pad_token_id=0,
                                  eos_token_id=1, **T5_XXL_WIDTH)), out_dir, "text_encoder")
    DDIMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                  clip_sample=False).save_pretrained(os.path.join(out_dir, "scheduler"))
    write_json(os.path.join(out_dir, "model_index.json"),
               {"_class_name": "PixArtSigmaPipeline", "transformer": ["diffusers", "PixArtTransformer2DModel"],
                "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
                "scheduler": ["diffusers", "DDIMScheduler"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2)
    return [f"text encoder: a 1-layer stand-in of T5-XXL's width (d_model 4096, 64 heads, d_ff 10240; the real "
            f"encoder has 24 layers, 4.8e9 parameters, too large for this machine's RAM) giving embeddings of the "
            f"real shape [B, {T5_TOKENS}, 4096]; phase 1 with the real T5-XXL needs about 9.5 GB more in bf16",
            f"T5 tokenizer: a word-level stand-in with the real {T5_TOKENS}-token length",
            "VAE: the SDXL VAE config (PixArt-Sigma uses an SDXL-architecture VAE)"]


def _unet_config(family: str) -> Callable[[], Dict]:
    return lambda: _read_json(os.path.join(CONFIGS, family, "unet", "config.json"))


def _flow(arch: str) -> Dict[str, Any]:
    """What a flow family brings to the registry: its recipe (``training.flow_family``'s defaults, the
    resolution aside), its base model (``FlowModel``), its memory options (a quantized base too) and
    ComfyUI's detection of its model."""
    defaults = {k: v for k, v in FLOW_FAMILIES[arch].defaults.items() if k != "resolution"}
    return dict(recipe=defaults, base_model=flow_base_model, memory_options=tuple(MEMORY_OPTIONS), comfy_detects=True,
                vae_config=vae_config(arch))


REGISTRY: Dict[str, Family] = {f.key: f for f in (
    Family("sd15", "SD1.5", "sd15", 512, "unet", "UNet2DConditionModel", _unet_config("sd15"), clip_conditioning,
           lambda d, c: _write_sd("sd15", d, c), lambda d: build_tiny_sd15(d, width=32),
           lambda: NoiseSchedule.scaled_linear(1000, 0.00085, 0.012), "SD15", "StableDiffusionPipeline",
           vae_config=lambda: _bundled_vae("sd15")),
    Family("sdxl", "SDXL", "sdxl", 1024, "unet", "UNet2DConditionModel", _unet_config("sdxl"), sdxl_conditioning,
           lambda d, c: _write_sd("sdxl", d, c), lambda d: build_tiny_sdxl(d, width=32),
           lambda: NoiseSchedule.scaled_linear(1000, 0.00085, 0.012), "SDXL", "StableDiffusionXLPipeline"),
    Family("pixart", "PixArt-Σ XL-2", "pixart_sigma", 1024, "transformer", "PixArtTransformer2DModel",
           lambda: dict(PIXART_SIGMA_XL), t5_conditioning, _write_pixart, lambda d: build_tiny_pixart(d, sigma=True),
           lambda: NoiseSchedule.linear(1000, 0.0001, 0.02), "PixArtSigma"),
    Family("sd35_medium", "SD3.5 Medium", "sd3", 1024, "transformer", "SD3Transformer2DModel", lambda: dict(SD35_MEDIUM),
           sd3_conditioning, lambda d, c: write_sd35(d, c, CONFIGS), lambda d: build_tiny_sd3(d, dual_attention=True),
           sd3_schedule, "SD3", "StableDiffusion3Pipeline", **_flow("sd3")),
    Family("flux_dev", "FLUX.1-dev", "flux_dev", 1024, "transformer", "FluxTransformer2DModel", lambda: dict(FLUX_DEV),
           flux_conditioning, lambda d, c: write_flux(d, c, CONFIGS), build_tiny_flux, flux_schedule, "Flux",
           "FluxPipeline", block_unit={"num_layers": 1, "num_single_layers": 2}, **_flow("flux_dev")),
)}
FAMILIES = tuple(REGISTRY)


# ---------------------------------------------------------------- building
def build_family(family: str, out_dir: str, tiny: bool = False, units: Optional[int] = None) -> Dict:
    """Write ``family`` with random weights as a diffusers folder ``out_dir``; returns what was built
    (parameter counts, stand-ins). Full size: weights drawn in bf16 (torch's default init), stored
    in bf16; the trainer loads them in ``--base-precision``. ``units``: the denoiser with that many
    units of depth (``Family.block_unit``) instead of all, at full width."""
    fam = REGISTRY[family]
    if tiny:
        fam.write_tiny(out_dir)
        stand_ins = ["tiny models of training/tiny.py, training/tiny_flow.py"]
        if units:
            sub = os.path.join(out_dir, fam.denoiser)
            config = fam.with_units(_read_json(os.path.join(sub, "config.json")), units)
            getattr(diffusers, fam.denoiser_class).from_config(config).save_pretrained(sub)
            stand_ins.append(f"the tiny denoiser with {units} units of depth")
        return {"stand_ins": stand_ins, **count_params(out_dir)}
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    config, fewer = fam.config(), []
    if units:
        fewer = [f"the denoiser at full width with {units} of its {fam.units(config)} units of depth "
                 f"({', '.join(f'{per * units} {key}' for key, per in fam.block_unit.items())})"]
        config = fam.with_units(config, units)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)        # a full-size fp32 SDXL would not fit while it is built
    try:
        stand_ins = fam.write_full(out_dir, config)
    finally:
        torch.set_default_dtype(previous)
    return {"stand_ins": ["random weights (torch's default initialisation), drawn and stored in bf16"] + fewer + stand_ins,
            **count_params(out_dir)}


def count_params(model_dir: str) -> Dict:
    """Parameter counts of the saved components, read from the safetensors headers."""
    from safetensors import safe_open

    out = {}
    for sub in sorted(os.listdir(model_dir)):
        folder = os.path.join(model_dir, sub)
        files = [f for f in os.listdir(folder) if f.endswith(".safetensors")] if os.path.isdir(folder) else []
        n = 0
        for name in files:
            with safe_open(os.path.join(folder, name), framework="pt") as f:
                for k in f.keys():
                    size = 1
                    for s in f.get_slice(k).get_shape():
                        size *= s
                    n += size
        if files:
            out[sub] = n
    return {"params": out}


@dataclass
class Denoiser:
    """What it takes to build and call a family's denoiser without its folder: its diffusers
    config, the latent shape at ``resolution`` and the conditioning shapes per batch."""
    family: Family
    config: Dict[str, Any]
    resolution: int
    latent_size: int
    latent_channels: int

    def build(self, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        """The denoiser with random weights on ``device`` (``meta``: no weights, no memory), frozen
        and in eval mode, as ``training.models.load_base_model`` leaves it."""
        cls = getattr(diffusers, self.family.denoiser_class)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)              # drawn in the dtype: a full-size fp32 copy is never made
        try:
            with torch.device(device):
                net = cls.from_config(self.config)
        finally:
            torch.set_default_dtype(previous)
        return net.requires_grad_(False).eval()

    def model(self, device: torch.device, dtype: torch.dtype) -> ModelParts:
        """The base model the trainer holds the denoiser as (``BaseModel`` / ``FlowModel``, without text
        encoders or VAE), the denoiser built by :meth:`build`."""
        fam = self.family
        return fam.base_model(fam.architecture, self.build(device, dtype), fam.schedule(), dtype, self.resolution)

    def conditioning(self, batch: int, device: torch.device) -> Dict[str, torch.Tensor]:
        """Random text conditioning of the cached shapes for ``batch`` items (the mask all ones)."""
        shapes = self.family.conditioning(self.config, batch)
        return {k: (torch.ones if k == "mask" else torch.randn)(shape, device=device) for k, shape in shapes.items()}


def meta_params(family: str, tiny: bool = False) -> int:
    """The parameters of the family's full-size denoiser (``tiny``: the tiny one), built on the meta device."""
    return sum(p.numel() for p in denoiser(family, tiny=tiny).build(torch.device("meta"), torch.bfloat16).parameters())


def denoiser(family: str, tiny: bool = False, resolution: Optional[int] = None) -> Denoiser:
    """The full-size denoiser of ``family`` at its native resolution, or the tiny model's at the
    tests' resolution (read from a tiny folder written to a temporary directory)."""
    fam = REGISTRY[family]
    if tiny:
        with tempfile.TemporaryDirectory(prefix="rayflow-tiny-") as tmp:
            fam.write_tiny(tmp)
            config = _read_json(os.path.join(tmp, fam.denoiser, "config.json"))
            vae = _read_json(os.path.join(tmp, "vae", "config.json"))
        res = resolution or TINY_RESOLUTION
    else:
        config, vae = fam.config(), fam.vae_config()
        res = resolution or fam.resolution
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return Denoiser(fam, config, res, res // factor, vae["latent_channels"])
