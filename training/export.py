"""Export a trained LoRA as one ``.safetensors`` file in the format of ``docs/lora-format.md``.

UNet LoRAs use the kohya key form over diffusers module names
(``lora_unet_<module with "." -> "_">.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``), which
ComfyUI's stock LoraLoader, the RayFlow LoRA Loader and diffusers' ``load_lora_weights`` read.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional

import torch
from safetensors.torch import save_file

from rayflow.atomic_write import atomic_path
from rayflow.lora_file import module_count, validate_lora
from rayflow.lora_header import FAMILIES

from .lora_targets import lora_modules, lora_targets

FORMAT_VERSION = "1"


SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# the sampler's eta each recipe's LoRA recommends (``rayflow.recommended_eta``): the setting the fair benchmark
# chose on held-out noise, 1 for every Ray arm and 0 for ReFlow pairs (docs/method.md section 9)
RECOMMENDED_ETA = {"ray": 1.0, "rectified": 0.0}


def kohya_unet_state_dict(peft_state: Dict[str, torch.Tensor], rank: int, alpha: float,
                          dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """Map peft keys ``<module>.lora_A.weight`` / ``.lora_B.weight`` to kohya keys; the down/up
    weights are stored in ``dtype``, the ``alpha`` scalars in float32."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in peft_state.items():
        for part, kohya in ((".lora_A.weight", "lora_down"), (".lora_B.weight", "lora_up")):
            if key.endswith(part):
                module = key[: -len(part)]
                if module.startswith("base_model.model."):
                    module = module[len("base_model.model."):]
                name = "lora_unet_" + module.replace(".", "_")
                out[f"{name}.{kohya}.weight"] = value.detach().to("cpu", torch.float32).to(dtype).contiguous()
                out[f"{name}.alpha"] = torch.tensor(float(alpha))
    if not out:
        raise ValueError("the LoRA state dict holds no lora_A/lora_B weights")
    return out


def diffusers_transformer_state_dict(peft_state: Dict[str, torch.Tensor], rank: int, alpha: float,
                                     dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """PixArt form: ``transformer.<module>.lora_A.weight`` ``[r, in]`` / ``.lora_B.weight`` ``[out, r]``
    with the ``alpha / rank`` scale folded into ``lora_B`` in float32 (so the file needs no alpha),
    stored in ``dtype``."""
    out: Dict[str, torch.Tensor] = {}
    scale = float(alpha) / float(rank)
    for key, value in peft_state.items():
        module = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
        v = value.detach().to("cpu", torch.float32)
        if module.endswith(".lora_B.weight"):
            v = v * scale
        elif not module.endswith(".lora_A.weight"):
            continue
        out["transformer." + module] = v.to(dtype).contiguous()
    if not out:
        raise ValueError("the LoRA state dict holds no lora_A/lora_B weights")
    return out


def export_state_dict(architecture: str, peft_state: Dict[str, torch.Tensor], rank: int,
                      alpha: float, precision: str = "fp32") -> Dict[str, torch.Tensor]:
    """The tensors of the LoRA file for ``architecture`` (docs/lora-format.md), weights in
    ``precision`` (a key of ``SAVE_DTYPES``; fp16 and bf16 halve the file)."""
    if precision not in SAVE_DTYPES:
        raise ValueError(f"precision must be one of {', '.join(SAVE_DTYPES)}, got {precision!r}")
    if FAMILIES[architecture][1] == "diffusers":          # PixArt, SD3, FLUX: transformer.<module>.lora_A/B
        return diffusers_transformer_state_dict(peft_state, rank, alpha, SAVE_DTYPES[precision])
    return kohya_unet_state_dict(peft_state, rank, alpha, SAVE_DTYPES[precision])


def save_atomic(tensors: Dict[str, torch.Tensor], path: str, metadata: Optional[Dict[str, str]] = None,
                before_rename: Optional[Callable[[str], None]] = None) -> None:
    """``safetensors`` save through :func:`rayflow.atomic_write.atomic_path`: ``path`` is complete
    or absent, a failed write leaves no temp file behind, a full disk is one ``DiskFullError``.
    ``before_rename(tmp)`` is called with the complete temp file just before it becomes ``path``."""
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
        if before_rename is not None:
            before_rename(tmp)


def lora_metadata(cfg, architecture: str, schedule_name: str, num_timesteps: int, process,
                  model_metadata: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """The ``rayflow.*`` metadata of a LoRA distilled with the ``DistillConfig`` ``cfg`` from a base
    model of ``architecture`` (its ``schedule_name`` and ``num_timesteps``), trained with the
    ``RayProcess`` ``process``; ``model_metadata`` (the model's ``metadata()``: a flow model's path,
    shift, resolution and guidance) is added last (``docs/lora-format.md`` lists every key)."""
    return {
        "rayflow.architecture": architecture,
        "rayflow.sigma": process.sigma,
        "rayflow.path": process.path,
        "rayflow.recipe": "rectified" if cfg.no_ray else "ray",
        "rayflow.preset": cfg.preset,
        "rayflow.schedule": schedule_name,
        "rayflow.num_train_timesteps": num_timesteps,
        "rayflow.target_mean": "noise",
        "rayflow.recommended_steps": cfg.recommended_steps,
        "rayflow.recommended_cfg": "1.0",
        "rayflow.recommended_eta": RECOMMENDED_ETA["rectified" if cfg.no_ray else "ray"],
        "rayflow.teacher_solver": cfg.teacher_solver,
        "rayflow.teacher_steps": cfg.teacher_steps,
        "rayflow.teacher_cfg": cfg.teacher_cfg,
        "rayflow.train_steps": cfg.train_steps,
        "rayflow.time_sampler": "off" if cfg.no_time_sampler else "on",
        "rayflow.time_sampler_options": "" if cfg.no_time_sampler else (
            f"target={cfg.time_sampler_target},uniform={cfg.time_sampler_uniform:g},warmup={cfg.time_sampler_warmup},"
            f"biased={cfg.time_sampler_biased},input={cfg.time_sampler_input}"),
        "rayflow.loss_weighting": cfg.loss_weighting,
        "rayflow.start_anchor": cfg.start_anchor,
        "rayflow.anchor_taper": cfg.anchor_taper,
        "rayflow.top_share": cfg.top_share,
        "rayflow.lora_rank": cfg.lora_rank,
        "rayflow.lora_alpha": cfg.lora_alpha,
        "rayflow.base_precision": cfg.base_precision,
        "rayflow.optimizer": cfg.optimizer,
        **(model_metadata or {}),
    }


def write_lora(path: str, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str],
               before_rename: Optional[Callable[[str], None]] = None) -> None:
    """Write a RayFlow LoRA atomically (:func:`save_atomic`, with its ``before_rename``); metadata
    values become strings, and ``rayflow.lora_modules`` records the module count so that a partial
    file is recognised."""
    meta = {"rayflow.format": FORMAT_VERSION, "rayflow.lora_modules": str(module_count(tensors)),
            **{k: str(v) for k, v in metadata.items()}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_atomic(tensors, path, meta, before_rename)


def _apply_with_peft(net: torch.nn.Module, path: str, pixart: bool, require_rayflow: bool = True) -> torch.nn.Module:
    """Validate the RayFlow LoRA file ``path`` against ``net``'s layers (:func:`validate_lora`: a
    damaged, non-finite, no-op, partial or ill-fitting file is one ``LoraFileError``) and apply it
    with peft, each module's ``alpha / rank`` folded into its ``lora_B``. Returns ``net``."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    names = lora_modules(net, pixart)
    lora = validate_lora(path, lora_targets(net, pixart), require_rayflow=require_rayflow)
    sd, ranks = {}, {}
    for module, parts in sorted(lora.modules.items()):
        if module not in names:              # a module the net lacks (only below min_coverage 1)
            continue
        down, up = lora.tensors[parts["down"]], lora.tensors[parts["up"]]
        rank = down.shape[0]
        scale = float(lora.tensors[parts["alpha"]]) / rank if "alpha" in parts else 1.0
        name = names[module]
        sd[f"{name}.lora_A.weight"], sd[f"{name}.lora_B.weight"] = down.float(), up.float() * scale
        ranks[name] = rank
    r = max(ranks.values())
    other = {n: k for n, k in ranks.items() if k != r}
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=r, target_modules=sorted(ranks), rank_pattern=other,
                                       alpha_pattern=other), net)
    res = set_peft_model_state_dict(net, sd)
    if getattr(res, "unexpected_keys", None):       # validated above; a guard
        raise ValueError(f"{path}: LoRA keys that match no module: {res.unexpected_keys[:3]}")
    return net


def load_unet_lora(unet: torch.nn.Module, path: str, require_rayflow: bool = True) -> torch.nn.Module:
    """Apply a kohya-form RayFlow LoRA file (SD1.5, SDXL, the proxy teacher) to a diffusers
    ``UNet2DConditionModel`` with peft, after the checks of :func:`validate_lora` against the UNet's
    layers (those of the loader node). ``require_rayflow=False`` also takes a kohya LoRA without
    RayFlow metadata (the benchmarks' LCM-LoRA baseline), with the same tensor checks. Returns ``unet``."""
    return _apply_with_peft(unet, path, pixart=False, require_rayflow=require_rayflow)


def load_transformer_lora(transformer: torch.nn.Module, path: str, require_rayflow: bool = True) -> torch.nn.Module:
    """Apply a PixArt-form RayFlow LoRA file to a diffusers transformer (PixArt, SD3, FLUX) with peft
    (diffusers has no ``load_lora_weights`` for PixArt pipelines), after the checks of
    :func:`validate_lora` against the transformer's layers. ``require_rayflow=False`` also takes a
    LoRA without RayFlow metadata (the benchmarks' LCM-LoRA baseline on the flow teacher), with the
    same tensor checks. Returns ``transformer``."""
    return _apply_with_peft(transformer, path, pixart=True, require_rayflow=require_rayflow)
