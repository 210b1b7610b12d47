"""RayFlow LoRA Loader: stock LoRA patching plus the RayFlow metadata on the MODEL.

Loads ``.safetensors`` only (never pickle), refuses a LoRA made for another architecture with one
sentence naming both sides, and attaches the LoRA's sampler settings (sigma, path, recommended
steps and cfg) to the cloned MODEL (``model_options["rayflow"]``) for the RayFlow nodes.
"""

from __future__ import annotations

import logging
import os

from .lora_meta import LoraFileError, check_architecture, lora_modules, read_rayflow_metadata, sampler_settings

CATEGORY = "sampling/rayflow"


def _lora_names():
    import folder_paths

    return [n for n in folder_paths.get_filename_list("loras") if n.endswith(".safetensors")]


class RayFlowLoraLoader:
    def __init__(self):
        self.loaded = None      # (path, state dict), like the stock loader's cache

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SD1.5 / SDXL / PixArt model the RayFlow LoRA was trained for."}),
            "lora_name": (_lora_names(), {"tooltip": "A RayFlow LoRA (.safetensors) from models/loras, as written by python -m training.distill."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "LoRA strength. RayFlow LoRAs are trained for 1.0."}),
        }}

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the RayFlow LoRA applied and its sampler settings attached.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Applies a RayFlow LoRA and passes its settings (variance coefficient, path, recommended steps "
                   "and cfg) to the RayFlow nodes. Refuses LoRAs made for another model family.")

    def load(self, model, lora_name, strength):
        import comfy.lora
        import comfy.lora_convert
        import comfy.utils
        import folder_paths

        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise LoraFileError(f"LoRA {lora_name} not found in models/loras")
        meta = read_rayflow_metadata(path)
        config_class = type(getattr(model.model, "model_config", None)).__name__
        check_architecture(os.path.basename(path), meta["architecture"], config_class)
        if self.loaded is not None and self.loaded[0] == path:
            lora = self.loaded[1]
        else:
            try:
                lora = comfy.utils.load_torch_file(path, safe_load=True)
            except Exception as exc:
                raise LoraFileError(f"{os.path.basename(path)} is corrupt and cannot be read ({exc})") from None
            self.loaded = (path, lora)
        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(lora), key_map)
        if not patches:
            raise LoraFileError(f"{os.path.basename(path)} has no weights that fit this model's layers")
        modules = lora_modules(lora.keys())
        if len(patches) < len(modules):
            raise LoraFileError(f"{os.path.basename(path)} fits only {len(patches)} of its {len(modules)} layers to "
                                f"this model; it was exported for a different {meta['architecture']} variant or is damaged")
        out = model.clone()
        out.add_patches(patches, strength)
        settings = sampler_settings(meta)
        out.model_options["rayflow"] = settings
        logging.info("RayFlow LoRA %s (%s): sigma %s, path %s; recommended %d steps, cfg %s",
                     os.path.basename(path), settings["architecture"], settings["sigma"], settings["path"],
                     settings["steps"], settings["cfg"])
        return (out,)
