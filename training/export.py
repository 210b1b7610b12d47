"""Export a trained LoRA as one ``.safetensors`` file in the format of ``docs/lora-format.md``.

UNet LoRAs use the kohya key form over diffusers module names
(``lora_unet_<module with "." -> "_">.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``), which
ComfyUI's stock LoraLoader, the RayFlow LoRA Loader and diffusers' ``load_lora_weights`` read.
"""

from __future__ import annotations

import os
from typing import Dict

import torch
from safetensors.torch import save_file

FORMAT_VERSION = "1"


def kohya_unet_state_dict(peft_state: Dict[str, torch.Tensor], rank: int, alpha: float) -> Dict[str, torch.Tensor]:
    """Map peft keys ``<module>.lora_A.weight`` / ``.lora_B.weight`` to kohya keys."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in peft_state.items():
        for part, kohya in ((".lora_A.weight", "lora_down"), (".lora_B.weight", "lora_up")):
            if key.endswith(part):
                module = key[: -len(part)]
                if module.startswith("base_model.model."):
                    module = module[len("base_model.model."):]
                name = "lora_unet_" + module.replace(".", "_")
                out[f"{name}.{kohya}.weight"] = value.detach().to("cpu", torch.float32).contiguous()
                out[f"{name}.alpha"] = torch.tensor(float(alpha))
    if not out:
        raise ValueError("the LoRA state dict holds no lora_A/lora_B weights")
    return out


def write_lora(path: str, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> None:
    """Write atomically (temp file + rename); metadata values must be strings."""
    meta = {"rayflow.format": FORMAT_VERSION, **{k: str(v) for k, v in metadata.items()}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
