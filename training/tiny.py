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


def build_tiny_sd15(out_dir: str, seed: int = 0, with_vae: bool = True, width: int = 16) -> str:
    """Write a tiny SD1.5-shaped diffusers folder (a few hundred kB at ``width`` 16: UNet block
    channels ``(width, 2 * width)``) and return its path."""
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
                                block_out_channels=(width, 2 * width), cross_attention_dim=32, attention_head_dim=2,
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


def _scaled_linear_scheduler(out_dir: str) -> None:
    from diffusers import DDIMScheduler

    DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1).save_pretrained(os.path.join(out_dir, "scheduler"))


def _tiny_vae(out_dir: str) -> None:
    from diffusers import AutoencoderKL

    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=1, norm_num_groups=8, sample_size=16).save_pretrained(os.path.join(out_dir, "vae"))


def build_tiny_sdxl(out_dir: str, seed: int = 0, width: int = 16) -> str:
    """Tiny SDXL-shaped folder: UNet with ``addition_embed_type="text_time"`` and two CLIP text
    encoders (the second with a projection giving the pooled embedding)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    os.makedirs(out_dir, exist_ok=True)
    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(WORDS, os.path.join(out_dir, "tokenizer"), 16))
    write_clip_tokenizer(WORDS, os.path.join(out_dir, "tokenizer_2"), 16)
    kw = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              max_position_embeddings=16, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
              pad_token_id=tok.pad_token_id, projection_dim=32)
    CLIPTextModel(CLIPTextConfig(**kw)).save_pretrained(os.path.join(out_dir, "text_encoder"))
    CLIPTextModelWithProjection(CLIPTextConfig(**kw)).save_pretrained(os.path.join(out_dir, "text_encoder_2"))
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                         block_out_channels=(width, 2 * width), cross_attention_dim=64, attention_head_dim=(2, 4),
                         transformer_layers_per_block=(1, 1), use_linear_projection=True,
                         addition_embed_type="text_time", addition_time_embed_dim=8,
                         projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=8,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).save_pretrained(os.path.join(out_dir, "unet"))
    _tiny_vae(out_dir)
    _scaled_linear_scheduler(out_dir)
    with open(os.path.join(out_dir, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                   "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                   "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                   "tokenizer_2": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
                   "vae": ["diffusers", "AutoencoderKL"], "force_zeros_for_empty_prompt": True}, f, indent=2)
    return out_dir


def write_t5_tokenizer(words, out_dir: str, max_length: int = 16) -> str:
    """A real ``T5TokenizerFast`` (word-level ``tokenizer.json``) covering ``words``, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in sorted(set(words)):
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)
    fast.save_pretrained(out_dir)
    return out_dir


def build_tiny_pixart(out_dir: str, seed: int = 0, sigma: bool = False) -> str:
    """Tiny PixArt-alpha (or -sigma) folder: ``PixArtTransformer2DModel`` + tiny ``T5EncoderModel``,
    the linear-beta schedule and a tiny VAE."""
    from diffusers import DDIMScheduler, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    os.makedirs(out_dir, exist_ok=True)
    write_t5_tokenizer(WORDS, os.path.join(out_dir, "tokenizer"))
    T5EncoderModel(T5Config(vocab_size=len(WORDS) + 8, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
                   ).save_pretrained(os.path.join(out_dir, "text_encoder"))
    PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
                             caption_channels=32, in_channels=4, out_channels=8, cross_attention_dim=24,
                             attention_bias=True, norm_type="ada_norm_single", norm_elementwise_affine=False,
                             norm_eps=1e-6, use_additional_conditions=not sigma,
                             interpolation_scale=1).save_pretrained(os.path.join(out_dir, "transformer"))
    _tiny_vae(out_dir)
    DDIMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                  clip_sample=False).save_pretrained(os.path.join(out_dir, "scheduler"))
    with open(os.path.join(out_dir, "model_index.json"), "w") as f:
        json.dump({"_class_name": "PixArtSigmaPipeline" if sigma else "PixArtAlphaPipeline",
                   "transformer": ["diffusers", "PixArtTransformer2DModel"],
                   "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
                   "scheduler": ["diffusers", "DDIMScheduler"], "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)
    return out_dir
