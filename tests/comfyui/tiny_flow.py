"""Tiny SD3 and FLUX.1 models in real ComfyUI, for the flow-model tests.

The models are the trainer's tiny diffusers folders (``training/tiny_flow.py``), loaded with ComfyUI's
own ``comfy.sd.load_diffusion_model`` (its diffusers-MMDiT key conversion, model classes, model
sampling and LoRA key maps). SD3's detection reads every size from the weights. FLUX's detection
(``comfy.model_detection.detect_unet_config``) hard-codes the width 3072, 24 heads, the context width
4096 and the RoPE axes [16, 56, 56]; :func:`read_flux_sizes_from_weights` wraps it so that, for a file
narrower than 3072, those four are read from the weights instead (the head width is the size of
``key_norm.scale``; the axes are FLUX's proportions of it, which ``training.tiny_flow.FLUX_AXES``
follows). Everything else, including the detection of dev (``guidance_in``) against schnell, stays
ComfyUI's. This is the "test-side wrapper" of docs/flow-matching-notes; real FLUX files are 3072 wide
and are not affected.
"""

import contextlib
import os

import comfy.model_detection
import comfy.sd
import torch

_detect = comfy.model_detection.detect_unet_config


def _flux_sizes(config, state_dict, key_prefix):
    width = state_dict[f"{key_prefix}img_in.weight"].shape[0]
    if width == config["hidden_size"]:
        return config
    head = state_dict[f"{key_prefix}double_blocks.0.img_attn.norm.key_norm.scale"].shape[0]
    side = 7 * head // 16
    return {**config, "hidden_size": width, "num_heads": width // head, "axes_dim": [head - 2 * side, side, side],
            "context_in_dim": state_dict[f"{key_prefix}txt_in.weight"].shape[1]}


def _detect_reading_flux_sizes(state_dict, key_prefix, metadata=None):
    config = _detect(state_dict, key_prefix, metadata=metadata)
    if isinstance(config, dict) and config.get("image_model") == "flux":
        config = _flux_sizes(config, state_dict, key_prefix)
    return config


@contextlib.contextmanager
def read_flux_sizes_from_weights():
    """Within the block, ComfyUI's model detection reads a narrow FLUX file's sizes from its weights."""
    comfy.model_detection.detect_unet_config = _detect_reading_flux_sizes
    try:
        yield
    finally:
        comfy.model_detection.detect_unet_config = _detect


def load_transformer(folder):
    """The MODEL (ModelPatcher) of a tiny diffusers folder's transformer, loaded by ComfyUI as
    *Load Diffusion Model* (UNETLoader) loads a file."""
    path = os.path.join(folder, "transformer", "diffusion_pytorch_model.safetensors")
    with read_flux_sizes_from_weights():
        model = comfy.sd.load_diffusion_model(path)
    assert model is not None, f"ComfyUI did not recognise {path}"
    return model


def conditioning(model, seed=0, guidance=None):
    """Random text conditioning of the widths the tiny transformer takes (the tiny text encoders'
    widths; ComfyUI's own text encoders are full size): ``[[cond [1, 12, context], {"pooled_output"}]]``."""
    diff = model.model.diffusion_model
    g = torch.Generator().manual_seed(seed)
    if hasattr(diff, "txt_in"):                                  # FLUX
        context, pooled = diff.txt_in.in_features, diff.vector_in.in_layer.in_features
    else:                                                        # SD3 (MMDiT)
        context, pooled = diff.context_embedder.in_features, diff.y_embedder.mlp[0].in_features
    extra = {"pooled_output": torch.randn(1, pooled, generator=g)}
    if guidance is not None:
        extra["guidance"] = guidance
    return [[torch.randn(1, 12, context, generator=g), extra]]
