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
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_file, save_file


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
    tensors: Dict[str, torch.Tensor] = {}
    tree = _flatten(state, "s", tensors)
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file(tensors, os.path.join(tmp, "tensors.safetensors"))
    with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
        json.dump(tree, f)
    old = folder + ".old"
    if os.path.isdir(folder):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: str) -> Optional[Dict[str, Any]]:
    """The state saved in ``folder`` (or its ``.old`` twin after a kill mid-swap); ``None`` if absent."""
    for cand in (folder, folder + ".old"):
        if os.path.isfile(os.path.join(cand, "state.json")) and os.path.isfile(os.path.join(cand, "tensors.safetensors")):
            tensors = load_file(os.path.join(cand, "tensors.safetensors"))
            with open(os.path.join(cand, "state.json"), encoding="utf-8") as f:
                return _unflatten(json.load(f), tensors)
    return None
