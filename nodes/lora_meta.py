"""RayFlow LoRA metadata: reading, validating, and matching it to the loaded model.

Pure Python + safetensors (no ComfyUI import), so it is unit-tested without ComfyUI. The format
is ``docs/lora-format.md``.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Dict, Optional

ARCH_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL", "pixart_alpha": "PixArt-alpha", "pixart_sigma": "PixArt-sigma"}
# ComfyUI model-config class names (comfy.supported_models) -> our architecture ids
COMFY_ARCH = {"SD15": "sd15", "SD20": "sd20", "SDXL": "sdxl", "SDXLRefiner": "sdxl_refiner",
              "PixArtAlpha": "pixart_alpha", "PixArtSigma": "pixart_sigma"}


class LoraFileError(ValueError):
    """The file is missing, corrupt, not a LoRA, or not for this model; the message is one sentence."""


def read_header(path: str) -> Dict:
    """The safetensors JSON header of ``path`` (tensor index + ``__metadata__``), without loading tensors."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise LoraFileError(f"LoRA file not found: {name}")
    if not path.endswith(".safetensors"):
        raise LoraFileError(f"{name} is not a .safetensors file; RayFlow loads LoRAs only from safetensors")
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than a header")
            (n,) = struct.unpack("<Q", raw)
            if n <= 0 or n > 100_000_000:
                raise ValueError("implausible header size")
            header = json.loads(f.read(n))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise LoraFileError(f"{name} is corrupt or not a safetensors file ({exc}); re-download or re-export it") from None
    return header


def read_rayflow_metadata(path: str) -> Dict[str, str]:
    """Validated RayFlow metadata of a LoRA file (``rayflow.*`` keys without the prefix)."""
    header = read_header(path)
    name = os.path.basename(path)
    keys = [k for k in header if k != "__metadata__"]
    if not any(("lora" in k.lower()) for k in keys):
        raise LoraFileError(f"{name} is not a LoRA (no LoRA weights inside)")
    meta = header.get("__metadata__") or {}
    if "rayflow.format" not in meta:
        raise LoraFileError(f"{name} is not a RayFlow LoRA (no RayFlow metadata); load it with the stock LoraLoader")
    out = {k[len("rayflow."):]: v for k, v in meta.items() if k.startswith("rayflow.")}
    if out.get("architecture") not in ARCH_NAMES:
        raise LoraFileError(f"{name} names an unknown architecture {out.get('architecture')!r}")
    try:
        sigma = float(out.get("sigma", "0.3"))
        steps = int(out.get("recommended_steps", "4"))
        float(out.get("recommended_cfg", "1.0"))
    except ValueError:
        raise LoraFileError(f"{name} has malformed RayFlow metadata (sigma/steps/cfg are not numbers)") from None
    if not 0 < sigma <= 10 or not 1 <= steps <= 50:
        raise LoraFileError(f"{name} has out-of-range RayFlow metadata (sigma {sigma}, steps {steps})")
    if out.get("path", "sigma") not in ("sigma", "linear"):
        raise LoraFileError(f"{name} names an unknown Ray path {out.get('path')!r}")
    return out


def check_architecture(lora_name: str, lora_arch: str, model_config_class: Optional[str]) -> None:
    """Raise one sentence naming both sides when the LoRA's family differs from the model's."""
    model_arch = COMFY_ARCH.get(model_config_class or "", None)
    if model_arch == lora_arch:
        return
    model_label = ARCH_NAMES.get(model_arch or "", model_config_class or "an unknown model type")
    raise LoraFileError(f"{lora_name} is a RayFlow LoRA for {ARCH_NAMES[lora_arch]}, but the loaded model is "
                        f"{model_label}; load a {ARCH_NAMES[lora_arch]} checkpoint or a LoRA trained for {model_label}")


def lora_modules(keys) -> set:
    """The LoRA layers named by a state dict's keys (kohya ``.lora_down.weight`` or diffusers ``.lora_A.weight``)."""
    suffixes = (".lora_down.weight", ".lora_A.weight")
    return {k[: -len(sfx)] for k in keys for sfx in suffixes if k.endswith(sfx)}


def sampler_settings(meta: Dict[str, str]) -> Dict:
    """The settings the RayFlow Sampler takes from a loaded LoRA."""
    return {"sigma": float(meta.get("sigma", "0.3")), "path": meta.get("path", "sigma"),
            "steps": int(meta.get("recommended_steps", "4")), "cfg": float(meta.get("recommended_cfg", "1.0")),
            "architecture": meta["architecture"]}
