"""A quantized frozen base for QLoRA (``--base-precision nf4`` / ``int8``): the ``nn.Linear`` layers of
the transformer replaced by bitsandbytes' 4-bit NF4 or 8-bit layers, as diffusers' QLoRA examples
quantize them (``BitsAndBytesConfig(load_in_4bit, bnb_4bit_quant_type="nf4")``). diffusers' own
quantizer refuses to run without a GPU; this swaps the layers directly, so it also works (slowly)
on the CPU. The LoRA adapters peft puts on these layers stay in fp32 (the trainer casts them), the
layers compute in ``compute_dtype``.
"""

from __future__ import annotations

import importlib.util
from typing import List, Tuple

import torch

QUANTIZED = ("nf4", "int8")


def bitsandbytes_missing(kind: str) -> str:
    """The sentence for ``--base-precision nf4 / int8`` without bitsandbytes, or '' when it is installed."""
    if kind in QUANTIZED and importlib.util.find_spec("bitsandbytes") is None:
        return (f"--base-precision {kind} needs bitsandbytes, which is not installed: "
                f"pip install bitsandbytes (or the 8bit extra)")
    return ""


NF4_BLOCK = 64          # bitsandbytes' 4-bit block size: its CPU kernels need in_features to be a multiple of it


def quantizable_linears(module: torch.nn.Module, kind: str) -> List[Tuple[torch.nn.Module, str, torch.nn.Linear]]:
    """``(parent, attribute, layer)`` of every ``nn.Linear`` inside ``module`` that :func:`quantize_linears`
    replaces for ``kind`` (``nf4``: those whose input width is a multiple of 64)."""
    if kind not in QUANTIZED:
        raise ValueError(f"kind must be one of {QUANTIZED}, got {kind!r}")
    return [(child, attr, layer) for _, child in module.named_modules() for attr, layer in child.named_children()
            if type(layer) is torch.nn.Linear and not (kind == "nf4" and layer.in_features % NF4_BLOCK)]


def quantize_linears(module: torch.nn.Module, kind: str, compute_dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by a frozen bitsandbytes layer of ``kind`` (``nf4`` or
    ``int8``) holding the same weights; returns the number replaced. Biases are kept in ``compute_dtype``.
    For nf4, a layer whose input width is not a multiple of 64 (none in SD3 / FLUX.1 at full size; the
    tiny test models' text projections) stays in ``compute_dtype``."""
    import bitsandbytes as bnb

    replaced = 0
    for child, attr, layer in quantizable_linears(module, kind):
        w = layer.weight.data.to(torch.float16 if kind == "int8" else compute_dtype)
        bias = layer.bias is not None
        if kind == "nf4":
            q = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=bias, compute_dtype=compute_dtype,
                                  quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(w.cpu(), requires_grad=False, quant_type="nf4")
            # bitsandbytes repacks 4-bit weights for CPU inference the first time an eval-mode layer
            # runs without grad (phase 1); that layout cannot train afterwards (phase 2)
            q.support_avx512bf16_for_cpu = False
        else:
            q = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=bias, has_fp16_weights=False,
                                    device="meta")
            q.weight = bnb.nn.Int8Params(w.cpu(), requires_grad=False, has_fp16_weights=False)
        if bias:
            q.bias = torch.nn.Parameter(layer.bias.data.to(compute_dtype).cpu(), requires_grad=False)
        setattr(child, attr, q.to(layer.weight.device if layer.weight.device.type != "meta" else "cpu"))
        replaced += 1
    return replaced
