"""Build a tiny random-weight checkpoint that ComfyUI detects as SD1.5 (single-file layout).

Uses ComfyUI's own ``UNetModel`` and ``AutoencoderKL`` classes at test time (nothing of ComfyUI
is copied): the UNet has model_channels 320 and context_dim 768 as SD1.5 but is one level deep
with one res-block; the text encoder is a randomly initialised CLIP-L (ComfyUI's SD1.5 text
encoder has a fixed size) and the VAE has the default SD configuration. Weights are fp16.
"""

import torch


def build_unet_state_dict(seed: int = 0):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    unet = UNetModel(image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1],
                     channel_mult=[1], num_heads=8, use_spatial_transformer=True, transformer_depth=[1],
                     transformer_depth_output=[1, 1], transformer_depth_middle=1, context_dim=768,
                     use_linear_in_transformer=False, dtype=torch.float32, device="cpu",
                     operations=comfy.ops.disable_weight_init)
    sd = {}
    for name, p in unet.state_dict().items():
        if name.endswith("bias"):
            v = torch.zeros_like(p)
        elif "norm" in name and name.endswith("weight"):
            v = torch.ones_like(p)
        else:
            v = torch.randn_like(p) * 0.02
        sd["model.diffusion_model." + name] = v.contiguous()
    return sd


def _random_like(sd, prefix):
    out = {}
    for name, p in sd.items():
        if not p.is_floating_point():
            out[prefix + name] = p.contiguous()
        elif name.endswith("bias"):
            out[prefix + name] = torch.zeros_like(p, dtype=torch.float16)
        elif "norm" in name and name.endswith("weight"):
            out[prefix + name] = torch.ones_like(p, dtype=torch.float16)
        else:
            out[prefix + name] = (torch.randn_like(p) * 0.02).half()
    return out


def build_clip_state_dict():
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77)
    with torch.device("meta"):
        model = CLIPTextModel(cfg)
    # the layout of released SD1.5 files ("...transformer.text_model.embeddings..."), which both ComfyUI and
    # diffusers' single-file loader read; newer transformers name the CLIPTextModel keys without "text_model."
    shapes = {("" if k.startswith("text_model.") else "text_model.") + k: torch.empty(v.shape)
              for k, v in model.state_dict().items() if "position_ids" not in k}
    return _random_like(shapes, "cond_stage_model.transformer.")


def build_vae_state_dict(z_channels: int = 4, prefix: str = "first_stage_model."):
    """A random VAE of ComfyUI's standard configuration (SD1.5: 4 latent channels; the SD3 / FLUX
    VAE's shape: 16), keys under ``prefix``."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": z_channels, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=z_channels)
    return _random_like({k: torch.empty(v.shape) for k, v in vae.state_dict().items()}, prefix)


def write_checkpoint(path: str, seed: int = 0) -> str:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    sd = {k: v.half() for k, v in build_unet_state_dict(seed).items()}
    sd.update(build_clip_state_dict())
    sd.update(build_vae_state_dict())
    save_file(sd, path)
    return path


def write_diffusers_config(folder: str, tokenizer: str) -> str:
    """A diffusers config folder (no weights) describing ``write_checkpoint``'s model, for the trainer's
    ``--model-config``: the bundled SD1.5 configs with the UNet one level deep, and ``tokenizer``
    (ComfyUI's ``comfy/sd1_tokenizer``) limited to CLIP's 77 tokens as in a diffusers folder."""
    import json
    import os
    import shutil

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    shutil.copytree(os.path.join(repo, "training", "configs", "sd15"), folder)
    shutil.copytree(tokenizer, os.path.join(folder, "tokenizer"))
    for name, changes in (("unet/config.json", {"block_out_channels": [320], "layers_per_block": 1, "sample_size": 32,
                                                 "down_block_types": ["CrossAttnDownBlock2D"],
                                                 "up_block_types": ["CrossAttnUpBlock2D"]}),
                          ("tokenizer/tokenizer_config.json", {"model_max_length": 77})):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        config.update(changes)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
    return folder
