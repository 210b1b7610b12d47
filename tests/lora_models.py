"""A base model with a random (non-zero) RayFlow LoRA, for the export and loading tests."""

import torch

from training.config import DistillConfig
from training.flow_family import FAMILIES as FLOW_FAMILIES
from training.models import load_base_model
from training.trainer import add_lora

RANK, ALPHA = 4, 8


def random_lora_model(path: str, arch: str, seed: int):
    """``(model, peft_state)``: the base model at ``path`` with rank-4, alpha-8 adapters on the default
    LoRA targets, their weights drawn from N(0, 0.2^2) so that every adapted module changes the output."""
    from peft import get_peft_model_state_dict

    cfg = DistillConfig(model=path, prompts="p.txt", output="o.safetensors", lora_rank=RANK, lora_alpha=ALPHA)
    model = load_base_model(path, resolution=64)         # a flow schedule needs a size; the tiny SD ones ignore it
    if arch in FLOW_FAMILIES:
        cfg.lora_targets = FLOW_FAMILIES[arch].defaults["lora_targets"]
    add_lora(model.unet, cfg, blocks=model.lora_blocks, exclude=model.lora_exclude)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
    return model, get_peft_model_state_dict(model.unet)
