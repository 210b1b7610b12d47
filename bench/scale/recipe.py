"""The default recipe of ``training.distill`` and the memory options that ``bench.scale`` runs it with.

The recipe is read from ``training.config.DistillConfig``'s defaults, so the benchmark scales to
the trainer's recipe as it stands. A memory option is a set of ``training.distill`` flags that
changes memory but not the recipe: the frozen base's dtype, gradient checkpointing and the optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

import torch

from training.config import DistillConfig

GIB = 1024 ** 3
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# one training run each: the frozen base's dtype, gradient checkpointing, the optimizer
MEMORY_OPTIONS = {
    "fp32": dict(base_precision="fp32", gradient_checkpointing=False, optimizer="adamw"),
    "fp32-gc": dict(base_precision="fp32", gradient_checkpointing=True, optimizer="adamw"),
    "bf16": dict(base_precision="bf16", gradient_checkpointing=False, optimizer="adamw"),
    "bf16-gc": dict(base_precision="bf16", gradient_checkpointing=True, optimizer="adamw"),
    "bf16-gc-adamw8bit": dict(base_precision="bf16", gradient_checkpointing=True, optimizer="adamw8bit"),
}
# bytes of optimizer state per LoRA weight: AdamW's two fp32 moments, or bitsandbytes' two 8-bit ones
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2}
RECIPE_KEYS = ("lora_rank", "lora_alpha", "lora_targets", "teacher_solver", "teacher_cfg", "train_steps", "batch_size",
               "teacher_steps", "save_precision")
PROMPTS = ["a photo of a red cat on a house", "a small green tree with a blue dog", "a large house in the tree"]
TINY_RESOLUTION = 16


def default(name: str) -> Any:
    """The default of the ``training.distill`` option ``name``."""
    return {f.name: f.default for f in dataclasses.fields(DistillConfig)}[name]


def recipe() -> Dict[str, Any]:
    """The default recipe's options that the benchmark's figures scale to."""
    return {k: default(k) for k in RECIPE_KEYS}
