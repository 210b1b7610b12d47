"""The default recipe of ``training.distill`` and the memory options that ``bench.scale`` runs it with.

The recipe is read from ``training.config.DistillConfig``'s defaults, so the benchmark scales to
the trainer's recipe as it stands. A memory option is a set of ``training.distill`` flags that
changes memory but not the recipe: the frozen base's dtype, gradient checkpointing and the optimizer.
A quantized base (``nf4`` / ``int8``, QLoRA: SD3 / FLUX only) is loaded in bf16, its linear layers are
then replaced by bitsandbytes' layers (``training.quantize``), and it computes in bf16.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

import torch

from training.config import DistillConfig

GIB = 1024 ** 3
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# a quantized base is loaded, and computes, in bf16
COMPUTE = {"nf4": "bf16", "int8": "bf16"}
# bytes per weight of a quantized linear layer, as bitsandbytes stores it (training/quantize.py): nf4 packs two
# weights a byte with an 8-bit scale per block of 64 and an fp32 scale per 256 blocks; int8 one byte a weight
# (plus an fp32 scale per output row, counted apart)
QUANTIZED_BYTES = {"nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "int8": 1.0}
# one training run each: the frozen base's dtype, gradient checkpointing, the optimizer
MEMORY_OPTIONS = {
    "fp32": dict(base_precision="fp32", gradient_checkpointing=False, optimizer="adamw"),
    "fp32-gc": dict(base_precision="fp32", gradient_checkpointing=True, optimizer="adamw"),
    "bf16": dict(base_precision="bf16", gradient_checkpointing=False, optimizer="adamw"),
    "bf16-gc": dict(base_precision="bf16", gradient_checkpointing=True, optimizer="adamw"),
    "bf16-gc-adamw8bit": dict(base_precision="bf16", gradient_checkpointing=True, optimizer="adamw8bit"),
    "nf4-gc": dict(base_precision="nf4", gradient_checkpointing=True, optimizer="adamw"),
    "nf4-gc-adamw8bit": dict(base_precision="nf4", gradient_checkpointing=True, optimizer="adamw8bit"),
    "int8-gc": dict(base_precision="int8", gradient_checkpointing=True, optimizer="adamw"),
}
# the options of every family; the quantized ones are the flow families' only (training.distill refuses nf4 / int8
# on SD1.5, SDXL and PixArt)
DENSE_OPTIONS = tuple(k for k, v in MEMORY_OPTIONS.items() if v["base_precision"] not in COMPUTE)
# bytes of optimizer state per LoRA weight: AdamW's two fp32 moments, or bitsandbytes' two 8-bit ones
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2}
RECIPE_KEYS = ("lora_rank", "lora_alpha", "lora_targets", "teacher_solver", "teacher_cfg", "train_steps", "batch_size",
               "teacher_steps", "save_precision")
PROMPTS = ["a photo of a red cat on a house", "a small green tree with a blue dog", "a large house in the tree"]
TINY_RESOLUTION = 16


def compute_precision(base_precision: str) -> str:
    """The dtype a frozen base of ``base_precision`` is loaded and computes in (bf16 for nf4 / int8)."""
    return COMPUTE.get(base_precision, base_precision)


def default(name: str) -> Any:
    """The default of the ``training.distill`` option ``name``."""
    return {f.name: f.default for f in dataclasses.fields(DistillConfig)}[name]


def recipe() -> Dict[str, Any]:
    """The default recipe's options that the benchmark's figures scale to."""
    return {k: default(k) for k in RECIPE_KEYS}
