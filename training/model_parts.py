"""What every loaded base model holds, whatever its family: ``models.BaseModel`` (the epsilon / VP
families) and ``flow_models.FlowModel`` (SD3, FLUX.1) extend it with their own forms of the denoiser
call, the training pair and the sampler (the interface phase 1 and phase 2 use)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch


@dataclass
class ModelParts:
    """``unet`` is the denoiser (the UNet of SD1.5/SDXL, the transformer of PixArt, SD3 and FLUX);
    ``text_encoders`` / ``tokenizers`` are used only in phase 1; ``schedule`` is the model's table of
    noise levels (a ``rayflow.NoiseSchedule`` or ``rayflow.FlowSchedule``)."""
    architecture: str
    unet: torch.nn.Module
    text_encoders: List[torch.nn.Module]
    tokenizers: List[object]
    vae: Optional[torch.nn.Module]
    schedule: object
    schedule_name: str
    path: str

    def metadata(self) -> Dict[str, object]:
        """Family-specific LoRA metadata (none for the VP families)."""
        return {}

    def to_device(self, device) -> "ModelParts":
        """Move the denoiser, the text encoders and the VAE to ``device`` (in place); returns the model.
        The schedule stays on the CPU: its tables are read in float64 there."""
        for module in (self.unet, *self.text_encoders, self.vae):
            if module is not None:
                module.to(device)
        return self
