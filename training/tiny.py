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
    # the second encoder is wider than the first, as in SDXL (768 / 1280): single-file loaders tell them apart by width
    CLIPTextModelWithProjection(CLIPTextConfig(**{**kw, "hidden_size": 48, "intermediate_size": 96})
                                ).save_pretrained(os.path.join(out_dir, "text_encoder_2"))
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                         block_out_channels=(width, 2 * width), cross_attention_dim=32 + 48, attention_head_dim=(2, 4),
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


# ---------------------------------------------------------------- single-file (original LDM layout)
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _ldm_unet_key(key: str, layers: int) -> str:
    """Diffusers UNet2DConditionModel key -> original (LDM / ComfyUI) ``model.diffusion_model.`` key."""
    top = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2",
           "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    for d, o in top.items():
        if key.startswith(d + "."):
            return o + key[len(d):]
    p = key.split(".")
    if p[0] == "mid_block":
        block = {"resnets.0": "0", "attentions.0": "1", "resnets.1": "2"}[f"{p[1]}.{p[2]}"]
        rest = p[3:]
        if p[1] == "resnets":
            rest = [_RESNET.get(rest[0], rest[0]), *rest[1:]]
        return ".".join(["middle_block", block, *rest])
    i, kind, j, rest = int(p[1]), p[2], int(p[3]), p[4:]
    if p[0] == "down_blocks":
        if kind == "downsamplers":
            return ".".join(["input_blocks", str((i + 1) * (layers + 1)), "0", "op", *rest[1:]])
        base = f"input_blocks.{1 + i * (layers + 1) + j}"
    else:
        if kind == "upsamplers":
            return ".".join(["output_blocks", str(i * (layers + 1) + layers), "UPSAMPLE", *rest])
        base = f"output_blocks.{i * (layers + 1) + j}"
    if kind == "resnets":
        return ".".join([base, "0", _RESNET.get(rest[0], rest[0]), *rest[1:]])
    return ".".join([base, "1", *rest])


def _ldm_unet_state_dict(unet) -> dict:
    layers = unet.config.layers_per_block
    out = {_ldm_unet_key(k, layers): v for k, v in unet.state_dict().items()}
    has_attn = {k.split(".")[1] for k in out if k.startswith("output_blocks.") and k.split(".")[2] == "1"}
    fixed = {}
    for k, v in out.items():       # LDM's upsampler sits after the attention layer when there is one
        if ".UPSAMPLE." in k:
            idx = k.split(".")[1]
            k = k.replace(".UPSAMPLE.", ".2." if idx in has_attn else ".1.")
        fixed["model.diffusion_model." + k] = v
    return fixed


def _ldm_vae_state_dict(vae) -> dict:
    n = len(vae.config.block_out_channels)
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, v in vae.state_dict().items():
        k = key
        for d, o in (("conv_norm_out", "norm_out"),):
            k = k.replace(d, o)
        p = k.split(".")
        if p[1] in ("down_blocks", "up_blocks"):
            i = int(p[2]) if p[1] == "down_blocks" else n - 1 - int(p[2])
            level = f"{p[0]}.{'down' if p[1] == 'down_blocks' else 'up'}.{i}"
            if p[3] == "resnets":
                k = ".".join([level, "block", p[4], *p[5:]]).replace("conv_shortcut", "nin_shortcut")
            else:   # downsamplers.0.conv / upsamplers.0.conv
                k = ".".join([level, "downsample" if p[3] == "downsamplers" else "upsample", *p[5:]])
        elif p[1] == "mid_block":
            if p[2] == "resnets":
                k = ".".join([p[0], "mid", f"block_{int(p[3]) + 1}", *p[4:]]).replace("conv_shortcut", "nin_shortcut")
            else:
                name = ".".join(p[4:-1])
                k = ".".join([p[0], "mid", "attn_1", attn[name], p[-1]])
                if v.dim() == 2:
                    v = v[:, :, None, None]        # LDM's attention projections are 1x1 convolutions
        out["first_stage_model." + k] = v
    return out


def _open_clip_state_dict(encoder) -> dict:
    """transformers CLIPTextModelWithProjection -> open_clip text tower keys (SDXL's second encoder)."""
    sd = encoder.state_dict()
    out = {"token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           "ln_final.bias": sd["text_model.final_layer_norm.bias"],
           "text_projection": sd["text_projection.weight"].t().contiguous()}
    for i in range(encoder.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for s, d in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            for w in ("weight", "bias"):
                out[f"{dst}{d}.{w}"] = sd[f"{src}{s}.{w}"]
        for w in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{w}"] = torch.cat([sd[f"{src}self_attn.{q}_proj.{w}"] for q in "qkv"])
    return out


def write_single_file(diffusers_dir: str, path: str) -> str:
    """Save a tiny SD1.5 / SDXL diffusers folder as one ``.safetensors`` checkpoint in the original
    (LDM) layout that ComfyUI users keep in ``models/checkpoints`` — the input of
    ``training.models.load_single_file``. For tests: it covers the block types of the tiny models."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sd = _ldm_unet_state_dict(UNet2DConditionModel.from_pretrained(diffusers_dir, subfolder="unet"))
    sd.update(_ldm_vae_state_dict(AutoencoderKL.from_pretrained(diffusers_dir, subfolder="vae")))
    te = CLIPTextModel.from_pretrained(diffusers_dir, subfolder="text_encoder").state_dict()
    # original checkpoints hold transformers' CLIP keys under text_model. (flattened in transformers >= 5.6)
    te = {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v for k, v in te.items()}
    if os.path.isdir(os.path.join(diffusers_dir, "text_encoder_2")):
        sd.update({"conditioner.embedders.0.transformer." + k: v for k, v in te.items()})
        te2 = CLIPTextModelWithProjection.from_pretrained(diffusers_dir, subfolder="text_encoder_2")
        sd.update({"conditioner.embedders.1.model." + k: v for k, v in _open_clip_state_dict(te2).items()})
    else:
        sd.update({"cond_stage_model.transformer." + k: v for k, v in te.items()})
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path
