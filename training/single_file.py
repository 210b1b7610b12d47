"""Single-file ``.safetensors`` checkpoints (the original LDM layout ComfyUI users keep in
``models/checkpoints``) as base models for the trainer.

The file holds the weights; the architecture comes from a diffusers config folder: the one given
with ``--model-config`` (a diffusers folder of the same family; only its ``*.json`` configs and
tokenizers are read, weights may be absent) or the SD1.5 / SDXL configs bundled in
``training/configs/``. Conversion is diffusers' ``from_single_file`` (offline, ``local_files_only``).

Single-file checkpoints carry no tokenizer. With the bundled configs the CLIP tokenizer is taken
from a ComfyUI installation: ``$COMFYUI_PATH/comfy/sd1_tokenizer``, or the ComfyUI folder that
holds the checkpoint (``ComfyUI/models/checkpoints/model.safetensors``).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import torch

from .model_errors import ModelError, SingleFileError  # noqa: F401  (both importable from here, as before)

BUNDLED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def checkpoint_keys(path: str) -> List[str]:
    """Tensor names of a ``.safetensors`` file, read from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # safetensors raises SafetensorError / OSError for damaged files
        raise SingleFileError(f"cannot read checkpoint {path}: not a valid .safetensors file ({exc})") from None


def detect_single_file_architecture(keys: List[str], path: str) -> str:
    """``sd15`` or ``sdxl`` from the tensor names of an original-layout checkpoint."""
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("conditioner.embedders.1.model."):
        return "sdxl"
    if has("model.diffusion_model.") and has("cond_stage_model.transformer."):
        return "sd15"
    if has("cond_stage_model.model."):
        raise SingleFileError(f"{path} looks like Stable Diffusion 2.x (OpenCLIP-H text encoder), which is not supported")
    flow = next((name for marker, name in (("joint_blocks.", "SD3 / SD3.5"), ("double_blocks.", "FLUX.1"))
                 if any(marker in k for k in keys)), None)
    if flow:
        raise SingleFileError(f"{path} is a {flow} single file: the trainer distils {flow} from its diffusers folder "
                              f"(model_index.json with transformer/, vae/ and every text encoder), e.g. the model's "
                              f"Hugging Face repository downloaded whole; the file itself runs in ComfyUI")
    if has("model.diffusion_model.") or has("conditioner.embedders."):
        raise SingleFileError(f"{path} holds only part of a model (no text encoder weights): use a full checkpoint "
                              f"or a diffusers folder")
    if has("t_embedder.") or has("y_embedder.") or has("adaln_single."):
        raise SingleFileError(f"{path} is a PixArt transformer file: diffusers has no single-file loader for PixArt, "
                              f"use a diffusers PixArt folder (with text_encoder/, vae/ and tokenizer/)")
    raise SingleFileError(f"cannot tell the architecture of {path}: expected an SD1.5 or SDXL checkpoint "
                          f"(model.diffusion_model.* with cond_stage_model.* or conditioner.embedders.*)")


def find_comfyui_tokenizer(path: str) -> Optional[str]:
    """ComfyUI's CLIP tokenizer folder: from ``$COMFYUI_PATH`` or a ComfyUI folder above ``path``."""
    candidates = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(os.environ["COMFYUI_PATH"])
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        candidates.append(parent)
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    for root in candidates:
        tok = os.path.join(root, "comfy", "sd1_tokenizer")
        if os.path.isfile(os.path.join(tok, "vocab.json")) and os.path.isfile(os.path.join(tok, "merges.txt")):
            return tok
    return None


def _tokenizers(arch: str, config_dir: str, path: str, bundled: bool) -> Dict[str, object]:
    """Tokenizer components to hand to ``from_single_file`` (none: it reads them from ``config_dir``)."""
    if not bundled:
        if not os.path.isdir(os.path.join(config_dir, "tokenizer")):
            raise SingleFileError(f"--model-config {config_dir} has no tokenizer/ folder")
        return {}
    from transformers import CLIPTokenizer

    folder = find_comfyui_tokenizer(path)
    if folder is None:
        raise SingleFileError("a single-file checkpoint carries no tokenizer: set COMFYUI_PATH to your ComfyUI folder "
                              "(its comfy/sd1_tokenizer is used) or pass --model-config <diffusers folder of the same family>")
    out = {"tokenizer": CLIPTokenizer.from_pretrained(folder, model_max_length=77)}
    if arch == "sdxl":      # SDXL's second (OpenCLIP) tokenizer pads with "!"
        out["tokenizer_2"] = CLIPTokenizer.from_pretrained(folder, model_max_length=77, pad_token="!")
    return out


def resolve_config(arch: str, model_config: str) -> Tuple[str, bool]:
    """The diffusers config folder describing the checkpoint, and whether it is the bundled one."""
    if model_config:
        if not os.path.isfile(os.path.join(model_config, "model_index.json")):
            raise SingleFileError(f"--model-config must be a diffusers folder (with model_index.json): {model_config}")
        return model_config, False
    return os.path.join(BUNDLED_CONFIGS, arch), True


def load_single_file(path: str, architecture: str, model_config: str, dtype: torch.dtype):
    """Load ``path`` with diffusers' ``from_single_file``. Returns ``(arch, pipeline, config_dir)``;
    the pipeline's ``unet``, ``vae``, ``text_encoder(_2)``, ``tokenizer(_2)`` are the components."""
    if path.lower().endswith(PICKLE_SUFFIXES):
        raise SingleFileError(f"{path} is a pickle-based checkpoint, which is never loaded (unpickling runs code): "
                              f"convert it to .safetensors")
    if not path.lower().endswith(".safetensors"):
        raise SingleFileError(f"a single-file base model must be a .safetensors checkpoint: {path}")
    detected = detect_single_file_architecture(checkpoint_keys(path), path)
    if architecture not in ("auto", detected):
        raise SingleFileError(f"--architecture {architecture} does not match the checkpoint, which is {detected}: {path}")
    config_dir, bundled = resolve_config(detected, model_config)
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if detected == "sdxl" else StableDiffusionPipeline
    extra = {} if detected == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    from diffusers.utils import logging as diffusers_logging

    bars = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()       # errors below must stay one line on stderr
    try:
        pipe = cls.from_single_file(path, config=config_dir, local_files_only=True, torch_dtype=dtype,
                                    **_tokenizers(detected, config_dir, path, bundled), **extra)
    except SingleFileError:
        raise
    except Exception as exc:  # shape mismatches, missing components, damaged tensors
        msg = f"tensor {exc} is missing" if isinstance(exc, KeyError) else (
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        hint = "" if model_config else " (if it is not a standard-size model, pass --model-config <its diffusers folder>)"
        raise SingleFileError(f"cannot load {path} as {detected}: {msg}{hint}") from None
    finally:
        if bars:
            diffusers_logging.enable_progress_bar()
    return detected, pipe, config_dir
