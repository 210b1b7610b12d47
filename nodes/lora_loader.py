"""What the RayFlow LoRA Loader node (``nodes/v3.py``) does: stock LoRA patching plus the RayFlow
metadata on the MODEL.

Loads ``.safetensors`` only (never pickle), validates the whole file against the model's layers
first (``rayflow.lora_file.validate_lora``: a damaged, non-finite, no-op or partial file is refused
with one sentence; nothing from ``comfy.lora`` or torch leaks), refuses a LoRA made for another
architecture with one sentence naming both sides, and attaches the LoRA's sampler settings (sigma, path, recommended
steps and cfg) to the cloned MODEL (``model_options["rayflow"]``) for the RayFlow nodes.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from ..rayflow.lora_file import FORMS, validate_lora
from ..rayflow.lora_header import FAMILIES
from .lora_meta import LoraFileError, check_architecture, read_rayflow_metadata, sampler_settings


def lora_names():
    """The ``.safetensors`` files in ComfyUI's ``models/loras`` (the loader's choices)."""
    import folder_paths

    return [n for n in folder_paths.get_filename_list("loras") if n.endswith(".safetensors")]


def model_targets(model, key_map, form: str):
    """The weight shape of every model layer a RayFlow file of key ``form`` may name (kohya:
    ``lora_unet_*`` for the UNets; diffusers: ``transformer.*`` for PixArt, SD3 and FLUX), from
    ComfyUI's LoRA key map; None where the shape is unknown."""
    weights = model.state_dict()
    prefix = FORMS[form][0]
    targets = {}
    for key, to in key_map.items():
        if not key.startswith(prefix):
            continue
        if isinstance(to, tuple):               # a slice of a fused weight: (key, (dim, start, size))
            shape = list(weights[to[0]].shape) if to[0] in weights else None
            if shape is not None and len(to) > 1 and isinstance(to[1], tuple) and len(to[1]) == 3:
                shape[to[1][0]] = to[1][2]
        else:
            shape = list(weights[to].shape) if to in weights else None
        targets[key] = shape
    return targets


def lora_name_error(lora_name) -> Optional[str]:
    """Why ``lora_name`` is not one of the offered files (as ComfyUI's check of a classic list input
    said), or None when it is; a linked input (``None`` while validating) is checked when it runs."""
    if lora_name is None:
        return None
    names = lora_names()
    if lora_name in names:
        return None
    offered = f"(list of length {len(names)})" if len(names) > 20 else str(names)
    return f"Value not in list: lora_name: '{lora_name}' not in {offered}"


def load_lora(model, lora_name, strength, min_coverage=1.0):
    """The clone of ``model`` with the RayFlow LoRA ``lora_name`` patched in at ``strength`` and its
    sampler settings in ``model_options["rayflow"]``; every refusal is one :class:`LoraFileError`."""
    import comfy.lora
    import comfy.lora_convert
    import folder_paths

    path = folder_paths.get_full_path("loras", lora_name)
    if path is None:
        raise LoraFileError(f"LoRA {lora_name} not found in models/loras")
    name = os.path.basename(path)
    meta = read_rayflow_metadata(path)
    config_class = type(getattr(model.model, "model_config", None)).__name__
    check_architecture(name, meta["architecture"], config_class)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    info = validate_lora(path, model_targets(model.model, key_map, FAMILIES[meta["architecture"]][1]),
                         min_coverage=min_coverage)
    try:
        patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(dict(info.tensors)), key_map)
    except Exception as exc:                # validated above; a guard so no raw error reaches the user
        raise LoraFileError(f"{name} could not be applied by ComfyUI ({type(exc).__name__}: {exc})") from None
    if len(patches) < info.fitting:
        raise LoraFileError(f"{name} fits only {len(patches)} of its {info.declared} layers to this model; "
                            f"it was exported for a different {meta['architecture']} variant or is damaged")
    out = model.clone()
    out.add_patches(patches, strength)
    settings = sampler_settings(meta)
    out.model_options["rayflow"] = settings
    logging.info("RayFlow LoRA %s (%s): sigma %s, path %s; recommended %d steps, cfg %s, eta %g%s; %d of %d layers",
                 name, settings["architecture"], settings["sigma"], settings["path"], settings["steps"], settings["cfg"],
                 settings["eta"],
                 "" if settings.get("guidance") is None else f", FluxGuidance {settings['guidance']:g}",
                 info.fitting, info.declared)
    return out
