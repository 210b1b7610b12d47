"""What a distillation computes and holds, counted on the meta device: no weights, no memory, seconds.

Each family's full-size denoiser is built on the meta device and run through the trainer's own
code: phase 1's ``training.data.teacher_trajectory`` (classifier-free guidance as the recipe runs
it: the conditional and unconditional halves in one batch of 2) and one phase-2 step as
``training.trainer.Trainer`` takes it (``training.trainer.add_lora`` with the recipe's targets and
rank, the LoRA weights in fp32 and the only ones that require grad, gradient checkpointing as the
memory option sets it; forward through the base model's ``denoise`` (``BaseModel``, or ``FlowModel``'s
velocity) at the recipe's batch, the MSE loss,
backward). ``torch.utils.flop_counter.FlopCounterMode`` counts matmuls, convolutions and attention
(2 FLOPs per multiply-add), forward and backward; the backward through the frozen base computes
input gradients only, plus the LoRA weights' gradients. Elementwise work (norms, activations, the
optimizer, the Time Sampler) is not counted. Attention is routed to the fused memory-efficient
kernel a GPU runs, whose backward recomputes the attention scores.

Memory: the tensors autograd saves for the backward pass are summed (each storage once, the frozen
weights excluded); with gradient checkpointing, the checkpointed blocks' inputs and the largest
block's own saved tensors (what its recomputation holds during the backward) instead of theirs.
A quantized base (nf4 / int8, QLoRA) is counted as the bf16 base it computes as (bitsandbytes does not
run on the meta device): the same FLOPs and activations, its frozen weights at the bytes per weight
bitsandbytes stores for the linear layers ``training.quantize`` replaces (bf16 for the rest).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from training.config import DistillConfig
from training.data import teacher_trajectory
from training.model_parts import ModelParts
from training.quantize import quantizable_linears
from training.trainer import add_lora

from .families import REGISTRY, Denoiser, denoiser
from .recipe import BYTES, COMPUTE, DTYPES, GIB, MEMORY_OPTIONS, OPTIMIZER_STATE_BYTES, QUANTIZED_BYTES, compute_precision

META = torch.device("meta")
TEACHER_STEPS_COUNTED = 2        # every teacher step costs the same; the count is per step


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention`` by the memory-efficient kernel (the mask broadcast to its
    full shape, as that kernel takes it; these denoisers' heads are never grouped)."""
    if attn_mask is not None:
        attn_mask = attn_mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, True, dropout_p,
                                                                 is_causal, scale=scale)[0]


@contextlib.contextmanager
def fused_attention() -> Iterator[None]:
    """Route ``F.scaled_dot_product_attention`` to the fused memory-efficient kernel, as on a GPU
    (on the meta device torch would take the unfused path, which stores the attention scores and
    does not recompute them in the backward)."""
    orig = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = orig


class SavedTensors:
    """Bytes of the tensors autograd saves for the backward pass while this hook is active: each
    storage once, those in ``exclude`` (the weights) not at all."""

    def __init__(self, exclude: set):
        self.exclude, self.seen = exclude, {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """Autograd's pack hook: note ``t``'s storage, keep ``t`` as it is."""
        key = t.untyped_storage()._cdata
        if key not in self.exclude:
            self.seen.setdefault(key, (t.untyped_storage().nbytes(), t))
        return t

    def hold(self, t: torch.Tensor) -> None:
        """Count ``t`` as kept alive (a checkpointed block's input)."""
        self.pack(t)

    @property
    def bytes(self) -> int:
        """The bytes of the storages noted."""
        return sum(n for n, _ in self.seen.values())

    def hooks(self):
        """The context in which autograd's saved tensors are counted here."""
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def meta_model(den: Denoiser, dtype: torch.dtype) -> ModelParts:
    """The family's base model on the meta device: its denoiser alone (no text encoders, no VAE)."""
    return den.model(META, dtype)


def flops_of(fn) -> Tuple[object, int]:
    """``(fn(), FLOPs counted while it ran)``."""
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, counter.get_total_flops()


def _latents(den: Denoiser, batch: int) -> torch.Tensor:
    return torch.randn(batch, den.latent_channels, den.latent_size, den.latent_size, device=META)


def forward_flops(den: Denoiser, batch: int = 1) -> int:
    """FLOPs of one denoiser forward at ``batch`` (no LoRA, no gradients)."""
    model = meta_model(den, torch.bfloat16)
    t = torch.full((batch,), 500, dtype=torch.long)        # the schedule index, on the CPU
    with torch.no_grad(), fused_attention():
        return flops_of(lambda: model.denoise(_latents(den, batch), t, den.conditioning(batch, META), den.resolution))[1]


def teacher_step_flops(den: Denoiser, cfg: DistillConfig) -> int:
    """FLOPs of one teacher step of phase 1 for one trajectory, through ``teacher_trajectory`` with
    the recipe's solver and guidance scale (guidance doubles the denoiser's batch)."""
    model = meta_model(den, torch.bfloat16)
    cond, uncond = den.conditioning(1, META), den.conditioning(1, META)
    with fused_attention():
        _, n = flops_of(lambda: teacher_trajectory(model, _latents(den, 1), cond, uncond, cfg.teacher_solver,
                                                   TEACHER_STEPS_COUNTED, cfg.teacher_cfg, den.resolution))
    return n // TEACHER_STEPS_COUNTED


def lora_model(den: Denoiser, cfg: DistillConfig) -> Tuple[ModelParts, List[torch.nn.Parameter]]:
    """The meta base model in ``cfg.base_precision`` (a quantized one: bf16) prepared as ``Trainer``
    prepares it: LoRA injected by ``add_lora`` (on the model's blocks, its unused layers excluded),
    gradient checkpointing as configured, train mode, and the LoRA weights (the only parameters that
    require grad) in fp32."""
    model = meta_model(den, DTYPES[compute_precision(cfg.base_precision)])
    add_lora(model.unet, cfg, blocks=model.lora_blocks, exclude=model.lora_exclude)
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    model.unet.train()
    params = [p for p in model.unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return model, params


def _step_inputs(den: Denoiser, batch: int):
    t = torch.full((batch,), 500, dtype=torch.long)        # the schedule index, on the CPU
    return _latents(den, batch), t, den.conditioning(batch, META), _latents(den, batch)


def phase2_flops(den: Denoiser, cfg: DistillConfig) -> Dict[str, int]:
    """FLOPs of one phase-2 step at ``cfg.batch_size``: ``forward``, ``backward`` (with gradient
    checkpointing: the recomputed forward too) and ``total``."""
    model, _ = lora_model(den, cfg)
    x, t, cond, target = _step_inputs(den, cfg.batch_size)
    with fused_attention():
        loss, fwd = flops_of(lambda: (model.denoise(x, t, cond, den.resolution).float() - target).pow(2).mean())
        _, bwd = flops_of(loss.backward)
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}


def phase2_activation_bytes(den: Denoiser, cfg: DistillConfig) -> Dict[str, int]:
    """Bytes one phase-2 step at ``cfg.batch_size`` holds for its backward: ``saved`` (the tensors
    saved outside checkpointed blocks, and the blocks' inputs), ``recompute`` (with gradient
    checkpointing: the largest block's saved tensors, held while it is recomputed), ``total``."""
    model, _ = lora_model(den, cfg)
    meter = SavedTensors({p.untyped_storage()._cdata for p in model.unet.parameters()})
    largest = [0]

    def probe(module, *args):      # a checkpointed block: count its inputs, and its own saved tensors apart
        for a in args:
            if isinstance(a, torch.Tensor):
                meter.hold(a)
        inner = SavedTensors(meter.exclude)
        with inner.hooks():
            out = module(*args)
        largest[0] = max(largest[0], inner.bytes)
        return out

    for m in model.unet.modules():
        if getattr(m, "gradient_checkpointing", False):
            m._gradient_checkpointing_func = probe
    x, t, cond, target = _step_inputs(den, cfg.batch_size)
    with fused_attention(), meter.hooks():
        (model.denoise(x, t, cond, den.resolution).float() - target).pow(2).mean()
    return {"saved": meter.bytes, "recompute": largest[0], "total": meter.bytes + largest[0]}


def quantized_weights(net: torch.nn.Module) -> Dict[str, Tuple[int, int]]:
    """Per quantized kind, ``(weights, output rows)`` of the linear layers of ``net`` (a denoiser without
    LoRA) that ``training.quantize.quantize_linears`` replaces."""
    return {kind: (sum(layer.weight.numel() for *_, layer in layers), sum(layer.out_features for *_, layer in layers))
            for kind, layers in ((k, quantizable_linears(net, k)) for k in QUANTIZED_BYTES)}


def static_bytes(denoiser_params: int, lora_params: int, opts: Dict,
                 quantized: Optional[Dict[str, Tuple[int, int]]] = None) -> Dict[str, int]:
    """What a phase-2 step holds besides activations: the frozen denoiser in the base dtype (a quantized
    base: its ``quantized`` linear weights at bitsandbytes' bytes per weight, int8 with an fp32 scale per
    output row, the rest in bf16), and per LoRA weight 4 bytes of fp32 weight, 4 of gradient and the
    optimizer's state."""
    base = opts["base_precision"]
    weights = denoiser_params * BYTES[compute_precision(base)]
    if base in COMPUTE:
        n, rows = (quantized or {})[base]
        weights += round(n * (QUANTIZED_BYTES[base] - BYTES[COMPUTE[base]])) + (4 * rows if base == "int8" else 0)
    return {"denoiser_weights": weights,
            "lora_weights_grads_optimizer": lora_params * (8 + OPTIMIZER_STATE_BYTES[opts["optimizer"]])}


def count_family(family: str, tiny: bool = False) -> Dict:
    """Counted FLOPs and memory of ``family`` at its native resolution and the default recipe (the
    tiny model at the tests' resolution with ``tiny``): the denoiser forward at batch 1, the
    teacher step, the phase-2 step without and with gradient checkpointing, and per memory option of
    the family the bytes a phase-2 step holds."""
    fam, den = REGISTRY[family], denoiser(family, tiny=tiny)
    cfg = fam.distill_config(den.resolution)
    model, params = lora_model(den, cfg)
    n_lora = sum(p.numel() for p in params)
    n_den = sum(p.numel() for p in model.unet.parameters()) - n_lora
    quantizes = any(MEMORY_OPTIONS[o]["base_precision"] in COMPUTE for o in fam.memory_options)
    quantized = quantized_weights(meta_model(den, torch.bfloat16).unet) if quantizes else {}
    steps = {gc: phase2_flops(den, dataclasses.replace(cfg, gradient_checkpointing=gc)) for gc in (False, True)}
    memory, activations = {}, {}
    for name in fam.memory_options:
        opts = MEMORY_OPTIONS[name]
        # the optimizer changes no activation; a quantized base computes, and saves activations, as a bf16 one
        key = (compute_precision(opts["base_precision"]), opts["gradient_checkpointing"])
        if key not in activations:
            activations[key] = phase2_activation_bytes(den, dataclasses.replace(cfg, **opts))
        act = activations[key]
        held = {**static_bytes(n_den, n_lora, opts, quantized), "activations": act["total"]}
        memory[name] = {**{k: round(v / GIB, 4) for k, v in held.items()},
                        "activations_detail_gib": {k: round(v / GIB, 4) for k, v in act.items()},
                        "total_gib": round(sum(held.values()) / GIB, 4)}
    return {
        "label": fam.label, "architecture": fam.architecture, "resolution": den.resolution,
        "latent": [den.latent_channels, den.latent_size, den.latent_size],
        "denoiser_params": n_den, "lora_params": n_lora,
        **({"quantized_linear_weights": {k: n for k, (n, _) in quantized.items()}} if quantized else {}),
        "batch_size": cfg.batch_size, "teacher_steps": cfg.teacher_steps, "teacher_cfg": cfg.teacher_cfg,
        "teacher_solver": cfg.teacher_solver, "train_steps": cfg.train_steps,
        "forward_tflop_batch1": forward_flops(den) / 1e12,
        "teacher_step_tflop": teacher_step_flops(den, cfg) / 1e12,
        "phase2_step_tflop": {("gc" if gc else "no_gc"): {k: v / 1e12 for k, v in s.items()} for gc, s in steps.items()},
        "phase2_memory": memory,
    }
