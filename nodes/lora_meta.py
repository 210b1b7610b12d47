"""RayFlow LoRA metadata: reading, validating, and matching it to the loaded model.

No ComfyUI import, so it is unit-tested without ComfyUI. The format is ``docs/lora-format.md``;
the header and metadata checks are :mod:`rayflow.lora_header`.
"""

from __future__ import annotations

from typing import Dict, Optional

# the file checks live in the torch-only kernels, shared with the trainer and training.check_lora
from ..rayflow.lora_header import ARCH_NAMES, DIFFUSION_NAMES, FAMILIES, LoraFileError, read_header, read_metadata

# ComfyUI model-config class names (comfy.supported_models) -> our architecture ids
COMFY_ARCH = {"SD15": "sd15", "SD20": "sd20", "SDXL": "sdxl", "SDXLRefiner": "sdxl_refiner",
              "PixArtAlpha": "pixart_alpha", "PixArtSigma": "pixart_sigma", "SD3": "sd3", "Flux": "flux_dev",
              "FluxSchnell": "flux_schnell"}

__all__ = ["ARCH_NAMES", "COMFY_ARCH", "LoraFileError", "read_header", "read_rayflow_metadata",
           "check_architecture", "sampler_settings"]


def read_rayflow_metadata(path: str) -> Dict[str, str]:
    """Validated RayFlow metadata of a LoRA file (``rayflow.*`` keys without the prefix)."""
    return read_metadata(path)


def check_architecture(lora_name: str, lora_arch: str, model_config_class: Optional[str]) -> None:
    """Raise one sentence naming both sides when the LoRA's family differs from the model's."""
    model_arch = COMFY_ARCH.get(model_config_class or "", None)
    if model_arch == lora_arch:
        return
    model_label = ARCH_NAMES.get(model_arch or "", model_config_class or "an unknown model type")
    lora_kind = FAMILIES[lora_arch][2]
    model_kind = FAMILIES[model_arch][2] if model_arch in FAMILIES else None
    kinds = ("", "") if model_kind in (None, lora_kind) else \
        (f" ({DIFFUSION_NAMES[lora_kind]})", f" ({DIFFUSION_NAMES[model_kind]})")
    raise LoraFileError(f"{lora_name} is a RayFlow LoRA for {ARCH_NAMES[lora_arch]}{kinds[0]}, but the loaded model is "
                        f"{model_label}{kinds[1]}; load a {ARCH_NAMES[lora_arch]} model or a LoRA trained for {model_label}")


def sampler_settings(meta: Dict[str, str]) -> Dict:
    """The settings the RayFlow Sampler takes from a loaded LoRA's metadata ``meta`` as
    :func:`read_rayflow_metadata` returns it (absent keys already hold ``rayflow.lora_header.DEFAULTS``;
    ``guidance``: FLUX.1-dev's FluxGuidance value the LoRA was trained at, else None)."""
    guidance = meta.get("recommended_guidance")
    return {"sigma": float(meta["sigma"]), "path": meta["path"], "steps": int(meta["recommended_steps"]),
            "cfg": float(meta["recommended_cfg"]), "eta": float(meta["recommended_eta"]),
            "architecture": meta["architecture"], "guidance": None if guidance is None else float(guidance)}
