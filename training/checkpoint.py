"""Resumable training checkpoints without pickle: tensors in safetensors, structure in JSON.

Nested state (optimizer and scheduler state dicts, RNG states, counters) is flattened: each
tensor leaf is stored under a path key and replaced by ``{"__tensor__": key}`` in the JSON tree.
Checkpoints are written to a temp folder and renamed into place, so a kill never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Dict, Optional

import torch
from safetensors.torch import load_file, save_file

from rayflow.atomic_write import atomic_path

from .config import ConfigError


def _flatten(obj: Any, prefix: str, tensors: Dict[str, torch.Tensor]) -> Any:
    if torch.is_tensor(obj):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, f"{prefix}.k{i}", tensors), _flatten(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__": [_flatten(v, f"{prefix}.{i}", tensors)
                                                                      for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__} at {prefix}")


def _unflatten(obj: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [_unflatten(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    return obj


def save_checkpoint(folder: str, state: Dict[str, Any]) -> None:
    """Write ``state`` to ``folder``; the checkpoint it replaces is kept as ``<folder>.prev``, the
    fallback when the newest one does not load."""
    tensors: Dict[str, torch.Tensor] = {}
    tree = _flatten(state, "s", tensors)
    storages = set()
    for key, value in tensors.items():     # safetensors refuses shared storage (bitsandbytes' 8-bit
        ptr = value.untyped_storage().data_ptr()      # AdamW shares its quantisation maps): copy repeats
        if ptr in storages and value.numel():
            tensors[key] = value.clone()
        storages.add(ptr)
    prev = folder + ".prev"
    with atomic_path(folder) as tmp:
        os.makedirs(tmp)
        save_file(tensors, os.path.join(tmp, "tensors.safetensors"))
        with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
            json.dump(tree, f)
        if os.path.isdir(folder):        # the replaced checkpoint stays as the fallback
            shutil.rmtree(prev, ignore_errors=True)
            os.replace(folder, prev)


def _read(folder: str) -> Dict[str, Any]:
    tensors = load_file(os.path.join(folder, "tensors.safetensors"))
    with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
        return _unflatten(json.load(f), tensors)


def load_checkpoint(folder: str, notify: Callable[[str], None] = print,
                    apply: Optional[Callable[[Dict[str, Any]], None]] = None) -> Optional[Dict[str, Any]]:
    """The newest state that loads: ``folder``, else the one it replaced (``<folder>.prev``, also
    the survivor of a kill in the middle of the swap); ``None`` if there is none. With ``apply``, a
    state also counts as loaded only once ``apply(state)`` has taken it (a state that parses but
    lacks a part is damaged too; a ``ConfigError`` from ``apply`` ends the search). A checkpoint
    that does not load is named through ``notify`` and skipped; if none loads, ``CheckpointError``."""
    damaged = []
    for cand in (folder, folder + ".prev", folder + ".old"):     # .old: the name before .prev existed
        if not os.path.isdir(cand):
            continue
        try:
            state = _read(cand)
            if apply is not None:
                apply(state)
        except ConfigError:
            raise
        except Exception as exc:  # a damaged or half-deleted checkpoint: any reader error
            damaged.append(cand)
            what = f"its state lacks {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {str(exc)[:120]}"
            notify(f"note: the checkpoint in {cand} does not load ({what}); trying the previous one")
            continue
        return state
    if damaged:
        raise CheckpointError(f"no checkpoint in {', '.join(damaged)} loads; delete "
                              f"{'them' if len(damaged) > 1 else 'it'} to train from the start")
    return None


class CheckpointError(ConfigError):
    """No saved checkpoint of a work dir loads."""
