"""What ``bench.scale`` builds for the flow-matching families (SD3.5 Medium, FLUX.1-dev): their full-size
transformer configs, the shapes of their cached text conditioning, their noise schedules, their base
models as the trainer holds them, and their full-size diffusers folders with random weights.

The folders carry the real transformer (or the one given: FLUX.1 with fewer blocks), the real
16-channel VAE, CLIP-L and CLIP-G at full size (their configs are SDXL's bundled ones, which are
the same encoders), a one-layer T5 stand-in of T5-XXL's width that gives embeddings of the real
shape, word-level tokenizer stand-ins with the real token lengths, the family's
``FlowMatchEulerDiscreteScheduler`` and its pipeline class in ``model_index.json``
(``training.tiny_flow`` has the same settings for the tiny folders).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, List, Tuple

import torch

from rayflow import FlowSchedule, flux_mu
from rayflow.atomic_write import write_json
from training.flow_family import FAMILIES as FLOW_FAMILIES
from training.flow_family import FLUX_GUIDANCE
from training.flow_models import FlowModel
from training.tiny import WORDS, write_t5_tokenizer
from training.tiny_flow import FLUX_DEV_SCHEDULER, FLUX_INDEX, SD3_INDEX, SD3_SCHEDULER
from training.tokenizers import write_clip_tokenizer

# stabilityai/stable-diffusion-3.5-medium (diffusers transformer config): MMDiT-X, dual attention in blocks 0-12
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm="rms_norm",
                   dual_attention_layers=tuple(range(13)))
# black-forest-labs/FLUX.1-dev (diffusers transformer config): 19 double-stream and 38 single-stream blocks
FLUX_DEV = dict(patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
# the 16-channel VAE of SD3 / SD3.5 and FLUX.1 (diffusers AutoencoderKL config; the families differ in scale and shift)
FLOW_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=1024, use_quant_conv=False,
                use_post_quant_conv=False, mid_block_add_attention=True)
VAE_SCALE = {"sd3": dict(scaling_factor=1.5305, shift_factor=0.0609), "flux_dev": dict(scaling_factor=0.3611, shift_factor=0.1159)}
# T5-XXL (the text encoder of SD3 and FLUX.1, 4.7 B parameters) has 24 layers of this width; the stand-in keeps one
T5_XXL_WIDTH = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64, feed_forward_proj="gated-gelu")
CLIP_TOKENS = 77


def vae_config(arch: str) -> Callable[[], Dict[str, Any]]:
    """The family's full-size VAE config."""
    return lambda: {**FLOW_VAE, **VAE_SCALE[arch]}


# ---------------------------------------------------------------- text conditioning
def sd3_conditioning(config: Dict, batch: int) -> Dict[str, Tuple[int, ...]]:
    """SD3: CLIP-L and CLIP-G hidden states (77 tokens, padded to T5's width) followed by T5's (256), and
    both CLIP projections side by side."""
    tokens = CLIP_TOKENS + FLOW_FAMILIES["sd3"].t5_length
    return {"cond": (batch, tokens, config["joint_attention_dim"]), "pooled": (batch, config["pooled_projection_dim"])}


def flux_conditioning(config: Dict, batch: int) -> Dict[str, Tuple[int, ...]]:
    """FLUX.1-dev: T5's hidden states (512 tokens) and CLIP-L's pooled output."""
    tokens = FLOW_FAMILIES["flux_dev"].t5_length
    return {"cond": (batch, tokens, config["joint_attention_dim"]), "pooled": (batch, config["pooled_projection_dim"])}


# ---------------------------------------------------------------- schedules and base models
def sd3_schedule() -> FlowSchedule:
    """SD3's table of noise levels: the static shift 3."""
    return FlowSchedule.shifted(SD3_SCHEDULER["shift"], SD3_SCHEDULER["num_train_timesteps"])


def flux_schedule(resolution: int = 1024) -> FlowSchedule:
    """FLUX.1-dev's table at ``resolution`` (the native 1024: shift e^1.15), from its dynamic shift."""
    s = FLUX_DEV_SCHEDULER
    mu = flux_mu(resolution, resolution, s["base_shift"], s["max_shift"], s["base_image_seq_len"], s["max_image_seq_len"])
    return FlowSchedule.shifted(math.exp(mu), s["num_train_timesteps"])


def flow_base_model(arch: str, net: torch.nn.Module, schedule: FlowSchedule, dtype: torch.dtype,
                    resolution: int) -> FlowModel:
    """The transformer ``net`` as the trainer holds it (``training.flow_models.FlowModel``), without text
    encoders or VAE: computing in ``dtype``, FLUX.1-dev at its usual guidance embedding."""
    family = FLOW_FAMILIES[arch]
    return FlowModel(arch, net, [], [], None, schedule, "flow", "", family, dtype, resolution,
                     FLUX_GUIDANCE if family.guidance else None)


# ---------------------------------------------------------------- full-size folders with random weights
def _save(model, out_dir: str, sub: str) -> None:
    model.save_pretrained(os.path.join(out_dir, sub))
    del model


def _clip_configs(configs: str) -> List[Tuple[str, Any]]:
    """CLIP-L and CLIP-G at full size: the configs of SDXL's two encoders (the same models)."""
    from transformers import CLIPTextConfig

    return [(sub, CLIPTextConfig.from_pretrained(os.path.join(configs, "sdxl", sub)))
            for sub in ("text_encoder", "text_encoder_2")]


def _t5_stand_in(out_dir: str, sub: str, tok_sub: str, tokens: int) -> None:
    from transformers import T5Config, T5EncoderModel

    write_t5_tokenizer(WORDS, os.path.join(out_dir, tok_sub), tokens)
    _save(T5EncoderModel(T5Config(vocab_size=len(WORDS) + 8, num_layers=1, decoder_start_token_id=0, pad_token_id=0,
                                  eos_token_id=1, **T5_XXL_WIDTH)), out_dir, sub)


def _common(out_dir: str, arch: str, index: Dict, scheduler: Dict) -> List[str]:
    """The VAE, the scheduler and model_index.json; returns the stand-ins every flow folder has."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    _save(AutoencoderKL(**vae_config(arch)()), out_dir, "vae")
    FlowMatchEulerDiscreteScheduler(**scheduler).save_pretrained(os.path.join(out_dir, "scheduler"))
    write_json(os.path.join(out_dir, "model_index.json"), index, indent=2)
    tokens = FLOW_FAMILIES[arch].t5_length
    return [f"text encoder: a 1-layer stand-in of T5-XXL's width (d_model 4096, 64 heads, d_ff 10240; the real "
            f"encoder has 24 layers, 4.7e9 parameters, about 9.5 GB in bf16, too large for this machine's RAM next to "
            f"the rest) giving embeddings of the real shape [B, {tokens}, 4096]; phase 1 with the real T5-XXL needs "
            f"about 9 GB more in bf16 (phase 2 never holds the text encoders)",
            f"CLIP and T5 tokenizers: word-level stand-ins with the real lengths ({CLIP_TOKENS}, {tokens} tokens)"]


def write_sd35(out_dir: str, config: Dict, configs: str) -> List[str]:
    """SD3.5 Medium: the transformer of ``config``, CLIP-L and CLIP-G with projections, the T5 stand-in."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    _save(SD3Transformer2DModel.from_config(config), out_dir, "transformer")
    for (sub, cfg), tok in zip(_clip_configs(configs), ("tokenizer", "tokenizer_2")):
        _save(CLIPTextModelWithProjection(cfg), out_dir, sub)
        write_clip_tokenizer(WORDS, os.path.join(out_dir, tok), CLIP_TOKENS)
    _t5_stand_in(out_dir, "text_encoder_3", "tokenizer_3", FLOW_FAMILIES["sd3"].t5_length)
    return _common(out_dir, "sd3", SD3_INDEX, SD3_SCHEDULER) + ["CLIP-L and CLIP-G: real size (SDXL's encoder configs)"]


def write_flux(out_dir: str, config: Dict, configs: str) -> List[str]:
    """FLUX.1-dev: the transformer of ``config`` (all its blocks, or fewer), CLIP-L (pooled), the T5 stand-in."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextModel

    _save(FluxTransformer2DModel.from_config(config), out_dir, "transformer")
    _save(CLIPTextModel(_clip_configs(configs)[0][1]), out_dir, "text_encoder")
    write_clip_tokenizer(WORDS, os.path.join(out_dir, "tokenizer"), CLIP_TOKENS)
    _t5_stand_in(out_dir, "text_encoder_2", "tokenizer_2", FLOW_FAMILIES["flux_dev"].t5_length)
    return _common(out_dir, "flux_dev", FLUX_INDEX, FLUX_DEV_SCHEDULER) + ["CLIP-L: real size (SDXL's first encoder config)"]
