"""The layers a RayFlow LoRA may patch, each under the name a LoRA file gives it with its weight
shape: the ``targets`` of :func:`rayflow.lora_file.validate_lora`, as the loader node builds them
from ComfyUI's key map (``nodes/lora_loader.model_targets``).

From a model in memory (:func:`lora_targets`), or without any weights from a diffusers folder's
configs (:func:`config_targets`: the denoiser built on the meta device), e.g. the SD1.5 and SDXL
configs bundled in ``training/configs`` (:func:`family_targets`).
"""

from __future__ import annotations

import functools
import os
from typing import Dict, List, Optional, Tuple

import torch

from .models import ModelError, detect_architecture
from .single_file import BUNDLED_CONFIGS


def lora_modules(net: torch.nn.Module, pixart: bool = False) -> Dict[str, str]:
    """``{LoRA module name: module name in net}`` of every Linear and Conv2d layer of ``net``: kohya
    names ``lora_unet_<module, "." -> "_">`` for a UNet, ``transformer.<module>`` for PixArt."""
    return {("transformer." + n) if pixart else "lora_unet_" + n.replace(".", "_"): n
            for n, m in net.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def lora_targets(net: torch.nn.Module, pixart: bool = False) -> Dict[str, List[int]]:
    """``{LoRA module name: weight shape}`` of every Linear and Conv2d layer of ``net`` (names as
    :func:`lora_modules`)."""
    return {k: list(net.get_submodule(n).weight.shape) for k, n in lora_modules(net, pixart).items()}


@functools.lru_cache(maxsize=8)
def config_targets(folder: str) -> Tuple[str, Dict[str, List[int]]]:
    """``(architecture, targets)`` of the diffusers model folder ``folder``, of which only the
    configs are read (weights may be absent); a folder that does not describe a model: ``ModelError``."""
    arch = detect_architecture(folder)
    pixart = arch.startswith("pixart")
    if pixart:
        from diffusers import PixArtTransformer2DModel as cls
    else:
        from diffusers import UNet2DConditionModel as cls
    sub = os.path.join(folder, "transformer" if pixart else "unet")
    try:
        config = cls.load_config(sub)
        with torch.device("meta"):             # shapes only: no memory, no weights
            net = cls.from_config(config)
    except Exception as exc:  # a missing or malformed config: one sentence
        raise ModelError(f"cannot build the model described by {sub} ({type(exc).__name__}: {str(exc)[:200]})") from None
    return arch, lora_targets(net, pixart)


def family_targets(architecture: str) -> Optional[Dict[str, List[int]]]:
    """The targets of the standard model of a family from its bundled configs (SD1.5, SDXL), or None
    where none is bundled (PixArt)."""
    folder = os.path.join(BUNDLED_CONFIGS, architecture)
    return config_targets(folder)[1] if os.path.isfile(os.path.join(folder, "model_index.json")) else None
