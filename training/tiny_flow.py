"""Tiny random-weight SD3 / SD3.5 and FLUX.1 diffusers folders, for tests and smoke runs.

Real classes from small configs (nothing is downloaded): ``SD3Transformer2DModel`` with CLIP-L,
CLIP-G and T5 encoders, ``FluxTransformer2DModel`` with CLIP-L and T5, a 16-channel ``AutoencoderKL``
and the family's ``FlowMatchEulerDiscreteScheduler``. The sizes also fit what ComfyUI's model
detection reads from the weights: SD3's heads are 64 wide with as many heads as layers (the depth is
read as ``width / 64``); FLUX's width, heads and RoPE axes are hard-coded in ComfyUI's detection,
which the ComfyUI tests read from the weights instead (``tests/comfyui/tiny_flow.py``).
"""

from __future__ import annotations

import json
import os

import torch

from .tiny import WORDS, write_t5_tokenizer
from .tokenizers import write_clip_tokenizer

# widths of the tiny text encoders: CLIP-L, CLIP-G, T5 (SD3 pads CLIP-L + CLIP-G to the T5 width)
CLIP_L, CLIP_G, T5 = 32, 48, 96
FLUX_AXES = (4, 14, 14)          # RoPE axes of a 32-wide head: FLUX's (16, 56, 56) scaled as ComfyUI's tests read it
# the families' model_index.json and FlowMatchEulerDiscreteScheduler settings (also bench.scale's full-size folders)
SD3_INDEX = {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer_2": ["transformers", "CLIPTokenizer"], "text_encoder_3": ["transformers", "T5EncoderModel"],
             "tokenizer_3": ["transformers", "PreTrainedTokenizerFast"]}
FLUX_INDEX = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
              "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "vae": ["diffusers", "AutoencoderKL"],
              "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
              "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"]}
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
FLUX_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                          base_image_seq_len=256, max_image_seq_len=4096)


def _clip(out_dir: str, sub: str, tok_sub: str, hidden: int, projection: bool, seed: int) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(WORDS, os.path.join(out_dir, tok_sub), 16))
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id, projection_dim=hidden)
    (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).save_pretrained(os.path.join(out_dir, sub))


def _t5(out_dir: str, sub: str, tok_sub: str, max_length: int, seed: int) -> None:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    write_t5_tokenizer(WORDS, os.path.join(out_dir, tok_sub), max_length)
    T5EncoderModel(T5Config(vocab_size=len(WORDS) + 8, d_model=T5, d_kv=16, d_ff=2 * T5, num_layers=1, num_heads=2,
                            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
                   ).save_pretrained(os.path.join(out_dir, sub))


def _vae(out_dir: str, shift: float, scale: float) -> None:
    from diffusers import AutoencoderKL

    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=1, norm_num_groups=8, sample_size=16, shift_factor=shift, scaling_factor=scale,
                  use_quant_conv=False, use_post_quant_conv=False).save_pretrained(os.path.join(out_dir, "vae"))


def _index(out_dir: str, entries: dict) -> None:
    with open(os.path.join(out_dir, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=2)


def build_tiny_sd3(out_dir: str, seed: int = 0, layers: int = 2, qk_norm: bool = True, dual_attention: bool = False) -> str:
    """A tiny SD3-shaped folder (``qk_norm`` as in SD3.5; ``dual_attention``: SD3.5 Medium's MMDiT-X
    second attention in the first block): ``layers`` joint blocks of ``layers`` 64-wide heads, CLIP-L +
    CLIP-G (with projections) + T5, shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    os.makedirs(out_dir, exist_ok=True)
    _clip(out_dir, "text_encoder", "tokenizer", CLIP_L, True, seed + 1)
    _clip(out_dir, "text_encoder_2", "tokenizer_2", CLIP_G, True, seed + 2)
    _t5(out_dir, "text_encoder_3", "tokenizer_3", 32, seed + 3)
    torch.manual_seed(seed)
    SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=layers, attention_head_dim=64,
                          num_attention_heads=layers, joint_attention_dim=T5, caption_projection_dim=64 * layers,
                          pooled_projection_dim=CLIP_L + CLIP_G, out_channels=16, pos_embed_max_size=16,
                          qk_norm="rms_norm" if qk_norm else None, dual_attention_layers=(0,) if dual_attention else ()
                          ).save_pretrained(os.path.join(out_dir, "transformer"))
    _vae(out_dir, 0.0609, 1.5305)
    FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER).save_pretrained(os.path.join(out_dir, "scheduler"))
    _index(out_dir, SD3_INDEX)
    return out_dir


def build_tiny_flux(out_dir: str, seed: int = 0, schnell: bool = False) -> str:
    """A tiny FLUX.1-dev (guidance embedding, dynamic shift) or -schnell (no guidance, shift 1) folder:
    one double and one single block of two 32-wide heads, CLIP-L (pooled) + T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    os.makedirs(out_dir, exist_ok=True)
    _clip(out_dir, "text_encoder", "tokenizer", CLIP_L, False, seed + 1)
    _t5(out_dir, "text_encoder_2", "tokenizer_2", 32, seed + 2)
    torch.manual_seed(seed)
    FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=32,
                           num_attention_heads=2, joint_attention_dim=T5, pooled_projection_dim=CLIP_L,
                           guidance_embeds=not schnell, axes_dims_rope=FLUX_AXES
                           ).save_pretrained(os.path.join(out_dir, "transformer"))
    _vae(out_dir, 0.1159, 0.3611)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0) if schnell else \
        FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    sched.save_pretrained(os.path.join(out_dir, "scheduler"))
    _index(out_dir, FLUX_INDEX)
    return out_dir
