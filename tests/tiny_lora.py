"""A tiny synthetic model (five layers: linear, 3x3 and 1x1 convolutions) and a valid RayFlow LoRA
for it, written by the exporter, for the LoRA-file validator tests and the fuzz test."""

import torch

from training.export import write_lora

RANK, ALPHA = 2, 4.0
# kohya module name -> the model layer's weight shape
LAYERS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": [8, 6],
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": [8, 8],
    "lora_unet_down_blocks_0_resnets_0_conv1": [8, 4, 3, 3],
    "lora_unet_down_blocks_0_attentions_0_proj_in": [6, 6, 1, 1],
    "lora_unet_conv_out": [4, 8, 3, 3],
}
# what python -m training.distill writes (training/distill.py), besides format and lora_modules
METADATA = {
    "rayflow.architecture": "sd15", "rayflow.sigma": 0.3, "rayflow.path": "sigma", "rayflow.recipe": "ray",
    "rayflow.preset": "few-step", "rayflow.schedule": "scaled_linear", "rayflow.num_train_timesteps": 1000,
    "rayflow.target_mean": "noise", "rayflow.recommended_steps": 4, "rayflow.recommended_cfg": "1.0",
    "rayflow.teacher_solver": "dpmsolver++", "rayflow.teacher_steps": 25, "rayflow.teacher_cfg": 4.5,
    "rayflow.train_steps": 100, "rayflow.time_sampler": "on",
    "rayflow.time_sampler_options": "target=loss,uniform=0.1,warmup=0,biased=False,input=data",
    "rayflow.loss_weighting": "truncated-snr", "rayflow.start_anchor": 0.0, "rayflow.anchor_taper": False,
    "rayflow.top_share": 0.0, "rayflow.lora_rank": RANK, "rayflow.lora_alpha": ALPHA,
}


def model_weights(seed: int = 0):
    """The tiny model's weights: ``{module name: tensor}``."""
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(*shape, generator=g) * 0.1 for m, shape in LAYERS.items()}


def lora_tensors(seed: int = 1):
    """Kohya-form tensors of a valid LoRA for ``LAYERS`` (convolutions in the LoCon form)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, shape in LAYERS.items():
        out[f"{m}.lora_down.weight"] = torch.randn(RANK, *shape[1:], generator=g) * 0.2
        out[f"{m}.lora_up.weight"] = torch.randn(shape[0], RANK, *([1, 1] if len(shape) == 4 else []), generator=g) * 0.2
        out[f"{m}.alpha"] = torch.tensor(ALPHA)
    return out


def write_valid_lora(path: str, tensors=None, metadata=None) -> str:
    """Write the valid LoRA (or ``tensors`` / ``metadata`` in its place) through the exporter."""
    write_lora(path, lora_tensors() if tensors is None else tensors, METADATA if metadata is None else metadata)
    return path


def apply(weights, lora):
    """The model's weights after merging a validated ``LoraFile`` at strength 1, as ComfyUI does."""
    out = dict(weights)
    for m, parts in lora.modules.items():
        if m not in out:
            continue
        down, up = (lora.tensors[parts[p]].float() for p in ("down", "up"))
        scale = float(lora.tensors[parts["alpha"]]) / down.shape[0] if "alpha" in parts else 1.0
        out[m] = out[m] + (scale * (up.flatten(1) @ down.flatten(1))).reshape(out[m].shape)
    return out
