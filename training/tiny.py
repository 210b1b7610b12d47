"""Tiny random-weight base models saved as diffusers folders, for tests and smoke runs.

No weights can be downloaded here, so tests build models of the real classes from small configs:
``UNet2DConditionModel`` + ``CLIPTextModel`` + a real ``CLIPTokenizer`` + ``AutoencoderKL`` with
the SD scaled-linear scheduler (``sd15`` family).
"""

from __future__ import annotations

import json
import os

import torch

from .tokenizers import write_clip_tokenizer

WORDS = "a an the photo of red green blue cat dog house tree on in at with small large".split()


def build_tiny_sd15(out_dir: str, seed: int = 0, with_vae: bool = True) -> str:
    """Write a tiny SD1.5-shaped diffusers folder (a few hundred kB) and return its path."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    os.makedirs(out_dir, exist_ok=True)
    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(WORDS, os.path.join(out_dir, "tokenizer"), 16))
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16, eos_token_id=tok.eos_token_id,
                                      bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id))
    te.save_pretrained(os.path.join(out_dir, "text_encoder"))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), cross_attention_dim=32, attention_head_dim=2,
                                norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    unet.save_pretrained(os.path.join(out_dir, "unet"))
    if with_vae:
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            layers_per_block=1, norm_num_groups=8, sample_size=16)
        vae.save_pretrained(os.path.join(out_dir, "vae"))
    DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1).save_pretrained(os.path.join(out_dir, "scheduler"))
    with open(os.path.join(out_dir, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                   "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                   "scheduler": ["diffusers", "DDIMScheduler"],
                   "vae": ["diffusers", "AutoencoderKL"] if with_vae else [None, None],
                   "safety_checker": [None, None], "feature_extractor": [None, None],
                   "requires_safety_checker": False}, f, indent=2)
    return out_dir
