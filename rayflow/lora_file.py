"""One validator for RayFlow LoRA files (``docs/lora-format.md``), used by the loader node, the
trainer's readers and ``python -m training.check_lora``.

:func:`validate_lora` checks the header and metadata (:mod:`rayflow.lora_header`), that every LoRA
module is complete (``lora_down``/``lora_up`` plus ``alpha`` in the kohya form, ``lora_A``/``lora_B``
in the diffusers form of PixArt, SD3 and FLUX) with no other tensor, floating dtypes, shapes
consistent with each other and,
given the model's layer shapes, with the target layer, finite values of sane magnitude, a positive
scalar alpha, and that the file changes the model: it is refused when it patches nothing, or less
than ``min_coverage`` of the layers it declares. Tensors are read only through ``safetensors``
(never pickle). Every failure is a :class:`LoraFileError` of one sentence naming the file and key.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence

import torch

from .lora_header import ARCH_NAMES, FAMILIES, WEIGHT_DTYPES, LoraFileError, read_header, read_metadata

MAX_ABS = 1e4            # no trained LoRA weight comes near this; 1e38 or inf would wreck the model
FORMS = {"kohya": ("lora_unet_", ".lora_down.weight", ".lora_up.weight"),
         "diffusers": ("transformer.", ".lora_A.weight", ".lora_B.weight")}

__all__ = ["LoraFileError", "LoraFile", "validate_lora", "lora_module_names", "module_count", "MAX_ABS"]


@dataclass
class LoraFile:
    """A validated RayFlow LoRA: metadata, tensors, and what it patches."""
    name: str
    meta: Dict[str, str]
    tensors: Dict[str, torch.Tensor]
    form: str
    rank: int
    modules: Dict[str, Dict[str, str]]          # module -> {"down": key, "up": key, "alpha": key}
    declared: int                               # modules the file declares (rayflow.lora_modules, else present)
    fitting: Optional[int] = None               # modules matching a target layer of the model (with targets)
    model_layers: Optional[int] = None          # the model's target layers offered (with targets)
    dtypes: Sequence[str] = field(default_factory=tuple)

    @property
    def coverage(self) -> float:
        """The fraction of the declared modules that patch the model (without targets: that are present)."""
        return (len(self.modules) if self.fitting is None else self.fitting) / self.declared

    def summary(self) -> str:
        """A few lines describing the file, for ``python -m training.check_lora``."""
        m = self.meta
        lines = [f"{self.name}: RayFlow LoRA (format {m['format']}) for {ARCH_NAMES[m['architecture']]}",
                 f"  rank {self.rank}, alpha {m.get('lora_alpha', 'per module')}, {len(self.modules)} modules "
                 f"of {self.declared} declared, weights {'/'.join(self.dtypes)}",
                 f"  sigma {m['sigma']}, path {m['path']}, recipe {m.get('recipe', 'ray')}, preset {m.get('preset', '-')}, "
                 f"schedule {m.get('schedule', '-')}, trained {m.get('train_steps', '?')} steps",
                 f"  recommended: {m['recommended_steps']} steps, cfg {m['recommended_cfg']}, target mean {m.get('target_mean', 'noise')}"
                 + (f", FluxGuidance {m['recommended_guidance']}" if "recommended_guidance" in m else "")]
        if "shift" in m:
            lines.append(f"  flow schedule: shift {m['shift']} at {m.get('resolution', '?')} px")
        if self.fitting is not None:
            lines.append(f"  patches {self.fitting} of the model's {self.model_layers} target layers "
                         f"({100 * self.coverage:.0f}% of the declared modules)")
        return "\n".join(lines)


def lora_module_names(keys) -> set:
    """The LoRA modules named by state-dict keys, either form (kohya ``<m>.lora_down/up.weight``,
    diffusers ``<m>.lora_A/B.weight``): the set of ``<m>``."""
    return {k[: -len(sfx)] for k in keys for _, d, u in FORMS.values() for sfx in (d, u) if k.endswith(sfx)}


def module_count(keys) -> int:
    """The number of LoRA modules named by state-dict keys (either form), for ``rayflow.lora_modules``."""
    return len(lora_module_names(keys))


def _group(name: str, keys, form: str) -> Dict[str, Dict[str, str]]:
    prefix, down, up = FORMS[form]
    modules: Dict[str, Dict[str, str]] = {}
    for key in keys:
        suffixes = ((down, "down"), (up, "up")) + (((".alpha", "alpha"),) if form == "kohya" else ())
        part = next((p for sfx, p in suffixes if key.endswith(sfx)), None)
        module = key[: -len({"down": down, "up": up, "alpha": ".alpha"}[part])] if part else ""
        if not part or not key.startswith(prefix) or len(module) <= len(prefix):
            raise LoraFileError(f"{name}: tensor {key!r} is not part of a {form}-form LoRA module "
                                f"({prefix}<module>{down} / {up}{' / .alpha' if form == 'kohya' else ''}); "
                                f"the file is damaged or not a RayFlow LoRA")
        modules.setdefault(module, {})[part] = key
    for module, parts in sorted(modules.items()):
        need = ("down", "up", "alpha") if form == "kohya" else ("down", "up")
        missing = [p for p in need if p not in parts]
        if missing:
            sfx = {"down": down, "up": up, "alpha": ".alpha"}[missing[0]]
            raise LoraFileError(f"{name}: module {module!r} lacks its {module + sfx!r} tensor; the file is incomplete, re-export it")
    return modules


def _check_shapes(name: str, module: str, parts: Dict[str, str], index: Mapping, target) -> int:
    """The module's rank, after checking its shapes against each other and against ``target``."""
    dn, up = (list(index[parts[p]]["shape"]) for p in ("down", "up"))
    if len(dn) not in (2, 4) or len(up) != len(dn) or 0 in dn or 0 in up:
        raise LoraFileError(f"{name}: {parts['down']!r} has shape {dn} and {parts['up']!r} shape {up}; a LoRA module needs "
                            f"non-empty [r, in] / [out, r] (or [r, in, k, k] / [out, r, 1, 1]) weights")
    if up[1] != dn[0] or up[2:] not in ([], [1, 1]) or (len(dn) == 4 and dn[2] != dn[3]):
        raise LoraFileError(f"{name}: {parts['up']!r} has shape {up}, which does not fit {parts['down']!r} of shape {dn}")
    alpha = index[parts["alpha"]]["shape"] if "alpha" in parts else []
    if len(alpha) > 1 or math.prod(alpha) != 1:
        raise LoraFileError(f"{name}: {parts['alpha']!r} has shape {alpha}; alpha must be one number")
    if target is not None:
        target = list(target)
        if not target or target[0] != up[0] or math.prod(target[1:]) != math.prod(dn[1:]):
            raise LoraFileError(f"{name}: module {module!r} makes a [{up[0]}, {', '.join(map(str, dn[1:]))}] change, "
                                f"but the model's layer is {target}; the LoRA was made for another model variant")
    return dn[0]


def _load(name: str, path: str, keys) -> Dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in keys}
    except Exception as exc:        # SafetensorError and friends: one sentence, nothing raw leaks
        raise LoraFileError(f"{name} is corrupt and cannot be read ({type(exc).__name__}: {exc}); re-download or re-export it") from None


def _check_values(name: str, tensors: Dict[str, torch.Tensor], modules) -> set:
    """The modules whose weights are not all zero, after checking every value (finite, |w| < MAX_ABS, alpha > 0)."""
    changing = set()
    for module, parts in modules.items():
        for part, key in parts.items():
            t = tensors[key].float()
            if not bool(torch.isfinite(t).all()):
                raise LoraFileError(f"{name}: {key!r} holds NaN or infinite values; the LoRA would break the model, re-export it")
            big = float(t.abs().max())
            if big >= MAX_ABS:
                raise LoraFileError(f"{name}: {key!r} holds a value of magnitude {big:.3g} (at most {MAX_ABS:g} is sane); "
                                    f"the file is damaged")
            if part == "alpha" and not float(t.reshape(())) > 0:
                raise LoraFileError(f"{name}: {key!r} is {float(t.reshape(())):g}; alpha must be positive, or the module does nothing")
        if all(bool(tensors[parts[p]].any()) for p in ("down", "up")):
            changing.add(module)
    return changing


def _is_rayflow(header: Mapping) -> bool:
    meta = header.get("__metadata__")
    return isinstance(meta, dict) and "rayflow.format" in meta


def validate_lora(path: str, targets: Optional[Mapping[str, Sequence[int]]] = None,
                  min_coverage: float = 1.0, require_rayflow: bool = True) -> LoraFile:
    """Check a RayFlow LoRA file completely and return it as a :class:`LoraFile`.

    ``targets`` maps the file's module names (``lora_unet_<module>`` / ``transformer.<module>``) to
    the weight shape of the model layer each would patch (for ComfyUI: from ``model_lora_keys_unet``);
    with it, modules the model lacks count as not patching and shapes must match the layer.
    ``min_coverage`` in [0, 1] is the least fraction of the declared modules that must patch. With
    ``require_rayflow=False`` a LoRA without RayFlow metadata in either form (e.g. the LCM-LoRA baselines
    of the benchmarks: kohya keys on the VP teacher, ``transformer.`` keys on the flow teacher) gets the
    same tensor checks instead of being refused for what it is not."""
    name = os.path.basename(path)
    if not 0 <= min_coverage <= 1:
        raise LoraFileError(f"min_coverage must be in [0, 1], got {min_coverage}")
    header = read_header(path)
    meta = read_metadata(path, header) if require_rayflow or _is_rayflow(header) else {}
    index = {k: v for k, v in header.items() if k != "__metadata__"}
    # a file without RayFlow metadata: the form its keys are in (diffusers' when every key is a transformer's)
    form = FAMILIES[meta["architecture"]][1] if meta else (
        "diffusers" if index and all(k.startswith(FORMS["diffusers"][0]) for k in index) else "kohya")
    modules = _group(name, index, form)
    for key, entry in index.items():
        if entry["dtype"] not in WEIGHT_DTYPES:
            raise LoraFileError(f"{name}: {key!r} is stored as {entry['dtype']}, but LoRA weights are floating point "
                                f"({', '.join(WEIGHT_DTYPES)}); the file is damaged or not a RayFlow LoRA")
    ranks = {_check_shapes(name, m, p, index, None if targets is None else targets.get(m, None))
             for m, p in modules.items()}
    if "lora_rank" in meta and ranks != {int(meta["lora_rank"])}:
        raise LoraFileError(f"{name}: its modules have rank {sorted(ranks)}, but rayflow.lora_rank says {meta['lora_rank']}")
    declared = int(meta.get("lora_modules", len(modules)))
    if len(modules) > declared:
        raise LoraFileError(f"{name} holds {len(modules)} LoRA modules, but rayflow.lora_modules says {declared}")
    tensors = _load(name, path, index)
    changing = _check_values(name, tensors, modules)
    # coverage is structural: a module whose change is zero (a layer training left untouched, or values
    # below fp16's range) still fits its layer; only a file that changes nothing is refused for it
    patching = set(modules) if targets is None else {m for m in modules if m in targets}
    if not changing or not patching & changing:
        what = "is all zeros" if not changing else "has no module that fits this model's layers"
        raise LoraFileError(f"{name} {what}, so it would patch nothing; it is damaged or made for another model")
    info = LoraFile(name, meta, tensors, form, max(ranks), modules, declared,
                    dtypes=tuple(sorted({index[p["down"]]["dtype"] for p in modules.values()})))
    if targets is not None:
        info.fitting, info.model_layers = len(patching), len(targets)
    if len(patching) < min_coverage * declared - 1e-9:
        where = "fits only {} of its {} layers to this model" if targets is not None else "holds only {} of its {} layers"
        raise LoraFileError(f"{name} {where.format(len(patching), declared)} (min_coverage {min_coverage:g}); it is partial, "
                            f"damaged or made for another variant, or lower min_coverage to load it anyway")
    return info
