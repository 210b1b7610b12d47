"""The model families ``bench.scale`` measures, as one registry, and how each is built.

A :class:`Family` says everything the benchmark needs about one family: its name in
``training.distill`` (``architecture``), its native resolution, the full-size denoiser's config and
diffusers class (built on the meta device to count FLOPs, or with random weights on a GPU to time
it), the shapes of the text conditioning that phase 1 caches, how to write the whole model with
random weights as a diffusers folder (for the CPU runs through ``training.distill``) and as a tiny
model (the tests' path), and what the family's recipe sets beside ``training.distill``'s defaults.
A family that the trainer learns to distil is measured, counted and tabled by adding one entry
to :data:`REGISTRY`.
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
from rayflow.atomic_write import write_json
from training.config import DistillConfig
from training.tiny import WORDS, build_tiny_pixart, build_tiny_sd15, build_tiny_sdxl, write_t5_tokenizer
from training.tokenizers import write_clip_tokenizer

from .recipe import TINY_RESOLUTION, recipe

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
    ``write_full(folder)`` writes the whole model with random weights and returns its stand-ins;
    ``write_tiny(folder)`` writes the tiny model of ``training/tiny.py``; ``schedule`` is the
    noise schedule; ``comfy_model`` the class in ``comfy.supported_models`` that ComfyUI builds the
    family with, and ``lora_pipeline`` the diffusers pipeline whose ``lora_state_dict`` reads the
    exported file (empty: peft loads it, through ``training.export.load_transformer_lora``); ``vae``
    the bundled config folder whose VAE the family uses; ``recipe`` the options that differ from ``training.distill``'s defaults (the
    native ``resolution`` is always set); ``lora_in_blocks_only`` is ``training.trainer.add_lora``'s
    ``pixart`` flag (adapters inside the transformer blocks only)."""
    key: str
    label: str
    architecture: str
    resolution: int
    denoiser: str
    denoiser_class: str
    config: Callable[[], Dict[str, Any]]
    conditioning: Callable[[Dict[str, Any], int], Dict[str, Tuple[int, ...]]]
    write_full: Callable[[str], List[str]]
    write_tiny: Callable[[str], Any]
    schedule: Callable[[], NoiseSchedule]
    comfy_model: str
    lora_pipeline: str = ""
    vae: str = "sdxl"
    recipe: Dict[str, Any] = field(default_factory=dict)
    lora_in_blocks_only: bool = False

    def options(self) -> Dict[str, Any]:
        """The options a distillation of this family runs with: the default recipe, its native
        resolution and what the family sets."""
        return {**recipe(), "resolution": self.resolution, **self.recipe}

    def distill_config(self, resolution: Optional[int] = None, **overrides) -> DistillConfig:
        """The trainer's configuration of this family's recipe, at ``resolution`` (default: the
        native one), with ``overrides`` (a memory option, the paths)."""
        return DistillConfig(**{**self.options(), "resolution": resolution or self.resolution, **overrides})


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


def _write_sd(family: str, out_dir: str) -> List[str]:
    src = os.path.join(CONFIGS, family)
    os.makedirs(os.path.join(out_dir, "scheduler"), exist_ok=True)
    write_json(os.path.join(out_dir, "model_index.json"), _read_json(os.path.join(src, "model_index.json")))
    write_json(os.path.join(out_dir, "scheduler", "scheduler_config.json"),
               _read_json(os.path.join(src, "scheduler", "scheduler_config.json")))
    _save(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(os.path.join(src, "unet"))), out_dir, "unet")
    _save(AutoencoderKL.from_config(AutoencoderKL.load_config(os.path.join(src, "vae"))), out_dir, "vae")
    encoders = [("text_encoder", CLIPTextModel, "tokenizer")]
    if family == "sdxl":
        encoders.append(("text_encoder_2", CLIPTextModelWithProjection, "tokenizer_2"))
    for sub, cls, tok in encoders:
        _save(cls(CLIPTextConfig.from_pretrained(os.path.join(src, sub))), out_dir, sub)
        write_clip_tokenizer(WORDS, os.path.join(out_dir, tok), CLIP_TOKENS)
    return ["CLIP tokenizer: a word-level stand-in with the real 77-token length (the text encoders are real size)"]


def _write_pixart(out_dir: str) -> List[str]:
    _save(PixArtTransformer2DModel(**PIXART_SIGMA_XL), out_dir, "transformer")
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


REGISTRY: Dict[str, Family] = {f.key: f for f in (
    Family("sd15", "SD1.5", "sd15", 512, "unet", "UNet2DConditionModel", _unet_config("sd15"), clip_conditioning,
           lambda d: _write_sd("sd15", d), lambda d: build_tiny_sd15(d, width=32),
           lambda: NoiseSchedule.scaled_linear(1000, 0.00085, 0.012), "SD15", "StableDiffusionPipeline", vae="sd15"),
    Family("sdxl", "SDXL", "sdxl", 1024, "unet", "UNet2DConditionModel", _unet_config("sdxl"), sdxl_conditioning,
           lambda d: _write_sd("sdxl", d), lambda d: build_tiny_sdxl(d, width=32),
           lambda: NoiseSchedule.scaled_linear(1000, 0.00085, 0.012), "SDXL", "StableDiffusionXLPipeline"),
    Family("pixart", "PixArt-Σ XL-2", "pixart_sigma", 1024, "transformer", "PixArtTransformer2DModel",
           lambda: dict(PIXART_SIGMA_XL), t5_conditioning, _write_pixart, lambda d: build_tiny_pixart(d, sigma=True),
           lambda: NoiseSchedule.linear(1000, 0.0001, 0.02), "PixArtSigma", lora_in_blocks_only=True),
)}
FAMILIES = tuple(REGISTRY)


# ---------------------------------------------------------------- building
def build_family(family: str, out_dir: str, tiny: bool = False) -> Dict:
    """Write ``family`` with random weights as a diffusers folder ``out_dir``; returns what was built
    (parameter counts, stand-ins). Full size: weights drawn in bf16 (torch's default init), stored
    in bf16; the trainer loads them in ``--base-precision``."""
    fam = REGISTRY[family]
    if tiny:
        fam.write_tiny(out_dir)
        return {"stand_ins": ["tiny models of training/tiny.py"], **count_params(out_dir)}
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)        # a full-size fp32 SDXL would not fit while it is built
    try:
        stand_ins = fam.write_full(out_dir)
    finally:
        torch.set_default_dtype(previous)
    return {"stand_ins": ["random weights (torch's default initialisation), drawn and stored in bf16"] + stand_ins,
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

    def conditioning(self, batch: int, device: torch.device) -> Dict[str, torch.Tensor]:
        """Random text conditioning of the cached shapes for ``batch`` items (the mask all ones)."""
        shapes = self.family.conditioning(self.config, batch)
        return {k: (torch.ones if k == "mask" else torch.randn)(shape, device=device) for k, shape in shapes.items()}


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
        config = fam.config()
        vae = _read_json(os.path.join(CONFIGS, fam.vae, "vae", "config.json"))
        res = resolution or fam.resolution
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return Denoiser(fam, config, res, res // factor, config["in_channels"])
