"""Safe reading of a safetensors header and of RayFlow LoRA metadata (``docs/lora-format.md``).

Pure Python: the header is parsed with size limits and checked against the file's size before any
tensor is read, and every ``rayflow.*`` metadata value is checked against the schema below. Every
failure is a :class:`LoraFileError` whose message is one sentence naming the file and the key.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from typing import Callable, Dict, Tuple

MAX_HEADER_BYTES = 16 * 1024 * 1024     # a rank-128 SDXL LoRA's index is well under 1 MiB
MAX_METADATA_KEYS = 256
MAX_VALUE_CHARS = 1024
FORMAT_VERSIONS = ("1",)
# architecture id -> (display name, LoRA key form of docs/lora-format.md, diffusion: "vp" epsilon models or
# "flow" rectified-flow models, docs/method.md section 10)
FAMILIES = {"sd15": ("SD1.5", "kohya", "vp"), "sdxl": ("SDXL", "kohya", "vp"),
            "pixart_alpha": ("PixArt-alpha", "diffusers", "vp"), "pixart_sigma": ("PixArt-sigma", "diffusers", "vp"),
            "sd3": ("SD3 / SD3.5", "diffusers", "flow"), "flux_dev": ("FLUX.1-dev", "diffusers", "flow"),
            "flux_schnell": ("FLUX.1-schnell", "diffusers", "flow")}
ARCH_NAMES = {arch: name for arch, (name, _, _) in FAMILIES.items()}
DIFFUSION_NAMES = {"vp": "an epsilon-prediction (VP) model", "flow": "a flow-matching model"}
# safetensors dtype names -> bytes per element; only the first four are LoRA weight dtypes (ComfyUI
# casts every LoRA weight to float32 before patching, so float64 applies like the others)
DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
               "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
WEIGHT_DTYPES = ("F32", "F16", "BF16", "F64")
STEPS_RANGE = (1, 50)                   # rayflow.recommended_steps; the trainer refuses others up front


class LoraFileError(ValueError):
    """The file is missing, corrupt, not a LoRA, or not for this model; the message is one sentence."""


def _number(low: float, high: float, integer: bool = False, low_open: bool = False) -> Callable[[str], object]:
    def parse(text: str):
        v = int(text) if integer else float(text)
        if not (math.isfinite(v) and (v > low if low_open else v >= low) and v <= high):
            raise ValueError(f"must be {'an integer' if integer else 'a number'} in "
                             f"{'(' if low_open else '['}{low:g}, {high:g}]")
        return v
    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text
    return parse


def _target_mean(text: str) -> str:
    m = re.fullmatch(r"probe:(\d{1,3})", text)
    if text != "noise" and not (m and 1 <= int(m.group(1)) <= 100):
        raise ValueError("must be noise or probe:<steps 1-100>")
    return text


# rayflow.<key> -> parser raising ValueError with the allowed values; keys not listed must be short strings
SCHEMA: Dict[str, Callable[[str], object]] = {
    "format": _choice(*FORMAT_VERSIONS),
    "architecture": _choice(*ARCH_NAMES),
    "sigma": _number(0, 10, low_open=True),
    "path": _choice("sigma", "linear", "flow"),
    "schedule": _choice("scaled_linear", "linear", "flow"),
    "shift": _number(0, 1e4, low_open=True),
    "resolution": _number(8, 100_000, integer=True),
    "recommended_guidance": _number(0, 100),
    "num_train_timesteps": _number(2, 100_000, integer=True),
    "target_mean": _target_mean,
    "recommended_steps": _number(*STEPS_RANGE, integer=True),
    "recommended_cfg": _number(0, 100),
    "recommended_eta": _number(0, 1),
    "recipe": _choice("ray", "rectified"),
    "teacher_steps": _number(1, 10_000, integer=True),
    "teacher_cfg": _number(0, 100),
    "train_steps": _number(0, 10**9, integer=True),
    "time_sampler": _choice("on", "off"),
    "start_anchor": _number(0, 1),
    "anchor_taper": _choice("True", "False"),
    "top_share": _number(0, 1),
    "lora_rank": _number(1, 100_000, integer=True),
    "lora_alpha": _number(0, 1e6, low_open=True),
    "lora_modules": _number(1, 1_000_000, integer=True),
}
# LoRAs made before a key existed: what the sampler did then (recommended_eta: deterministic steps)
DEFAULTS = {"sigma": "0.3", "path": "sigma", "recommended_steps": "4", "recommended_cfg": "1.0", "recommended_eta": "0"}


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _check_entry(name: str, key: str, entry, data_len: int) -> Tuple[int, int]:
    """``(begin, end)`` of one tensor's bytes after checking its index entry against the file."""
    def bad(what: str) -> LoraFileError:
        return LoraFileError(f"{name} is corrupt: the header entry of {key!r} {what}; re-download or re-export it")

    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise bad("is not a {dtype, shape, data_offsets} record")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise bad(f"names an unknown dtype {dtype!r}")
    ints = lambda xs: isinstance(xs, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs)
    if not ints(shape) or len(shape) > 8:
        raise bad("has a malformed shape")
    if not ints(offsets) or len(offsets) != 2 or not offsets[0] <= offsets[1] <= data_len:
        raise bad(f"has data offsets {offsets!r} outside the file's {data_len} data bytes")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise bad(f"declares shape {shape} of {dtype} but {offsets[1] - offsets[0]} bytes")
    return offsets[0], offsets[1]


def read_header(path: str) -> Dict:
    """The checked safetensors header of ``path`` (tensor index + ``__metadata__``), without loading
    tensors: size limits, strict JSON, every entry's dtype/shape/offsets consistent with the file size
    and the tensors packed without gaps or overlaps (what ``safetensors`` itself requires)."""
    name = os.path.basename(os.path.normpath(path))
    if os.path.isdir(path):
        raise LoraFileError(f"{name} is a folder, not a LoRA file; give the path of a .safetensors file")
    if not os.path.isfile(path):
        raise LoraFileError(f"LoRA file not found: {name}")
    if not path.endswith(".safetensors"):
        raise LoraFileError(f"{name} is not a .safetensors file; RayFlow loads LoRAs only from safetensors")
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than a header")
            (n,) = struct.unpack("<Q", raw)
            if n < 2 or n > min(MAX_HEADER_BYTES, size - 8):
                raise ValueError(f"implausible header size {n} for a file of {size} bytes")
            header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=_no_duplicates)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, OSError, RecursionError) as exc:     # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise LoraFileError(f"{name} is corrupt or not a safetensors file ({exc}); re-download or re-export it") from None
    data_len = size - 8 - n
    spans = sorted(_check_entry(name, k, v, data_len) for k, v in header.items() if k != "__metadata__")
    end = 0
    for begin, stop in spans:
        if begin != end:
            raise LoraFileError(f"{name} is corrupt: its tensors overlap or leave gaps at byte {end}; re-download or re-export it")
        end = stop
    if end != data_len:
        raise LoraFileError(f"{name} is corrupt: its tensors end at byte {end} of {data_len} data bytes "
                            f"(truncated or padded); re-download or re-export it")
    return header


def read_metadata(path: str, header: Dict = None) -> Dict[str, str]:
    """The checked ``rayflow.*`` metadata of a RayFlow LoRA (keys without the prefix, defaults filled in)."""
    header = read_header(path) if header is None else header
    name = os.path.basename(path)
    if not any("lora" in k.lower() for k in header if k != "__metadata__"):
        raise LoraFileError(f"{name} is not a LoRA (no LoRA weights inside)")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or len(meta) > MAX_METADATA_KEYS:
        raise LoraFileError(f"{name} has a malformed metadata table (not a table of at most {MAX_METADATA_KEYS} strings)")
    for k, v in meta.items():
        if not isinstance(v, str):
            raise LoraFileError(f"{name} has malformed RayFlow metadata: {k} is a JSON {type(v).__name__}, not a string")
        if len(v) > MAX_VALUE_CHARS:
            raise LoraFileError(f"{name} has malformed RayFlow metadata: {k} is {len(v)} characters long "
                                f"(at most {MAX_VALUE_CHARS})")
    if "rayflow.format" not in meta:
        raise LoraFileError(f"{name} is not a RayFlow LoRA (no RayFlow metadata); load it with the stock LoraLoader")
    out = {**DEFAULTS, **{k[len("rayflow."):]: v for k, v in meta.items() if k.startswith("rayflow.")}}
    if "architecture" not in out:
        raise LoraFileError(f"{name} has no rayflow.architecture, so the model family it was made for is unknown; "
                            f"re-export it with python -m training.distill")
    if out["architecture"] not in ARCH_NAMES:
        raise LoraFileError(f"{name} names an unknown architecture {out.get('architecture')!r}")
    if out["format"] not in FORMAT_VERSIONS:
        raise LoraFileError(f"{name} has RayFlow format {out['format']!r}, which this version does not know "
                            f"(known: {', '.join(FORMAT_VERSIONS)}); update the RayFlow nodes")
    for key, parse in SCHEMA.items():
        if key in out:
            try:
                parse(out[key])
            except ValueError as exc:
                raise LoraFileError(f"{name} has malformed RayFlow metadata: rayflow.{key} = {out[key]!r} "
                                    f"{str(exc) if str(exc).startswith('must') else 'is not a number'}") from None
    flow_arch = FAMILIES[out["architecture"]][2] == "flow"
    if flow_arch and "rayflow.path" not in meta:
        out["path"] = "flow"                     # a flow family's only Ray path (docs/method.md eq. 10.2)
    if (out["path"] == "flow") != flow_arch:
        raise LoraFileError(f"{name} has malformed RayFlow metadata: rayflow.path = {out['path']!r} does not fit "
                            f"{ARCH_NAMES[out['architecture']]}, {DIFFUSION_NAMES[FAMILIES[out['architecture']][2]]}")
    return out
