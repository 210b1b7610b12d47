"""Fuzzing the LoRA-file validator: a seeded, deterministic series of mutants of a valid RayFlow LoRA
(truncations, byte flips, header lies, wrong dtypes and shapes, missing and extra keys, bad metadata,
non-finite and huge weights, bad alphas, empty and all-zero weights, pickles renamed .safetensors,
partial files). Each must end in a clean ``LoraFileError``, or validate and then change the model
with finite weights only; a mutant of a class that can never be usable must be refused."""

import io
import json
import math
import os
import pickle
import random
import struct

import pytest
import torch
from safetensors.torch import save as save_bytes

from rayflow.lora_file import LoraFileError, validate_lora
from tiny_lora import LAYERS, METADATA, apply, lora_tensors, model_weights, write_valid_lora

REFUSE, EITHER, TARGETS = "refuse", "either", "refused given the model's layers"
MARKER = "pickle_ran.txt"


class _Payload:
    """Unpickling this would create MARKER: the validator must never unpickle anything."""
    def __reduce__(self):
        return (open, (MARKER, "w"))


def _split(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header, body: bytes) -> bytes:
    raw = json.dumps(header, sort_keys=True).encode()       # sorted: the same bytes in every run
    return struct.pack("<Q", len(raw)) + raw + body


def save(tensors, metadata=None) -> bytes:
    """safetensors bytes with a canonical header (safetensors orders the metadata at random)."""
    return canonical(save_bytes(tensors, metadata=metadata))


def canonical(data: bytes) -> bytes:
    return _join(*_split(data))


def _meta(base_meta, **changes):
    m = dict(base_meta)
    for k, v in changes.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    return m


def mutants(base: bytes, rng: random.Random):
    """Yield ``(label, expectation, file bytes)``."""
    header, body = _split(base)
    n = len(base) - 8 - len(body)
    keys = sorted(k for k in header if k != "__metadata__")
    meta = header["__metadata__"]
    # --- truncations and byte-level damage
    for cut in [0, 1, 7, 8, 9, 8 + n - 1, 8 + n, len(base) - 1] + rng.sample(range(1, len(base)), 24):
        yield f"truncate@{cut}", REFUSE, base[:cut]
    yield "padded", REFUSE, base + b"\0" * 16
    for i in range(70):
        pos = rng.randrange(len(base)) if i % 2 else rng.randrange(8, 8 + n)    # half of them in the header
        flipped = bytearray(base)
        flipped[pos] ^= 1 << rng.randrange(8)
        yield f"flip@{pos}", EITHER, bytes(flipped)
    for lie in (0, 1, 2, n - 1, n + 1, n + 8, len(base), 2**32, 2**63, 2**64 - 1):
        yield f"header-length={lie}", REFUSE, struct.pack("<Q", lie) + base[8:]
    yield "empty", REFUSE, b""
    yield "random", REFUSE, bytes(rng.randrange(256) for _ in range(512))
    yield "json-array", REFUSE, _join([1, 2], b"")
    yield "deep-json", REFUSE, struct.pack("<Q", 20000) + b"[" * 20000
    yield "not-utf8", REFUSE, struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc"
    # --- header lies (the data kept as it is)
    for k in rng.sample(keys, 6):
        for dtype in ("I32", "U8", "F8_E4M3", "BOOL", "F64", "F16", "XX", 7):
            h = json.loads(json.dumps(header))
            h[k]["dtype"] = dtype
            yield f"dtype-lie {k} {dtype}", REFUSE, _join(h, body)
        for shape in ([], [0], [1], [2, 3, 4], [10**12], [-1, 2], [2.0, 3], "2x3"):
            h = json.loads(json.dumps(header))
            h[k]["shape"] = shape
            same = isinstance(shape, list) and all(isinstance(x, int) and x >= 0 for x in shape) \
                and math.prod(shape) == math.prod(header[k]["shape"])      # e.g. alpha [] -> [1]: a true header
            yield f"shape-lie {k} {shape}", EITHER if same else REFUSE, _join(h, body)
        begin, end = header[k]["data_offsets"]
        for offsets in ([begin, end + 4], [begin + 4, end + 4], [end, begin], [0, len(body) * 2], [begin], None):
            h = json.loads(json.dumps(header))
            h[k]["data_offsets"] = offsets
            yield f"offsets-lie {k} {offsets}", REFUSE, _join(h, body)
    h = json.loads(json.dumps(header))
    h["lora_unet_conv_out.alpha"]["extra"] = 1
    yield "entry-extra-field", REFUSE, _join(h, body)
    h = {k: v for k, v in header.items() if k != keys[0]}
    yield "index-drops-a-tensor", REFUSE, _join(h, body)
    # --- metadata
    for value in ([1, 2], {"a": 1}, 3, None, True, "x" * 5_000_000):
        for key in ("rayflow.architecture", "rayflow.sigma", "rayflow.format", "rayflow.preset", "ss_extra"):
            if value is None and key == "rayflow.format":
                continue
            h = json.loads(json.dumps(header))
            h["__metadata__"][key] = value
            yield f"meta {key}={str(value)[:20]}", REFUSE, _join(h, body)
    for meta_value in ([], "x", None, 5):
        h = json.loads(json.dumps(header))
        h["__metadata__"] = meta_value
        yield f"metadata-table={meta_value}", REFUSE, _join(h, body)
    bad_values = {
        "rayflow.format": ["99", "", "1.0", "2"], "rayflow.architecture": ["flux2", "", "SD15"],
        "rayflow.sigma": ["nan", "inf", "-1", "0", "abc", "", "11"], "rayflow.path": ["ray", "", "flow"],
        "rayflow.shift": ["0", "-1", "nan", "x"], "rayflow.recommended_guidance": ["-1", "nan", "1e9"],
        "rayflow.resolution": ["4", "x", "512.5"],
        "rayflow.recommended_steps": ["0", "100", "4.5", "-1", "nan"],
        "rayflow.recommended_cfg": ["nan", "inf", "-5", "abc", "1e9"],
        "rayflow.schedule": ["cosine", ""], "rayflow.recipe": ["magic"], "rayflow.target_mean": ["probe:0", "mean", "probe:x"],
        "rayflow.num_train_timesteps": ["0", "-5", "1000.5", "abc", "1e12"], "rayflow.lora_rank": ["3", "0", "x"],
        "rayflow.lora_alpha": ["0", "-4", "nan"], "rayflow.lora_modules": ["4", "6", "0", "x"],
        "rayflow.top_share": ["2"], "rayflow.anchor_taper": ["maybe"], "rayflow.time_sampler": ["auto"],
    }
    for key, values in bad_values.items():
        for v in values:
            yield f"meta {key}={v!r}", REFUSE, save(lora_tensors(), metadata=_meta(meta, **{key: v}))
    yield "meta no format", REFUSE, save(lora_tensors(), metadata=_meta(meta, **{"rayflow.format": None}))
    yield "meta none", REFUSE, save(lora_tensors())
    yield "meta 300 keys", REFUSE, save(lora_tensors(), metadata={**meta, **{f"k{i}": "v" for i in range(300)}})
    # --- tensors
    good = lora_tensors()
    modules = sorted(LAYERS)

    def variant(label, expect, change, metadata=meta):
        t = {k: v.clone() for k, v in good.items()}
        change(t)
        return label, expect, save(t, metadata=metadata)

    for m in modules:
        for part in ("lora_down.weight", "lora_up.weight", "alpha"):
            yield variant(f"missing {m}.{part}", REFUSE, lambda t, k=f"{m}.{part}": t.pop(k))
        yield variant(f"drop module {m}", REFUSE, lambda t, m=m: [t.pop(k) for k in list(t) if k.startswith(m + ".")])
        yield variant(f"zero module {m}", EITHER, lambda t, m=m: t[f"{m}.lora_up.weight"].zero_())   # fits, patches nothing (test_lora_file)
        yield variant(f"zero alpha {m}", REFUSE, lambda t, m=m: t.__setitem__(f"{m}.alpha", torch.tensor(0.0)))
        for alpha in (torch.tensor(-4.0), torch.tensor(float("nan")), torch.tensor(float("inf")), torch.ones(2) * 4,
                      torch.ones(1, 1) * 4, torch.zeros(0), torch.tensor(1e38), torch.tensor(4, dtype=torch.int32)):
            yield variant(f"alpha {m} {alpha.shape} {alpha.dtype}", REFUSE, lambda t, m=m, a=alpha: t.__setitem__(f"{m}.alpha", a))
        yield variant(f"alpha [1] {m}", EITHER, lambda t, m=m: t.__setitem__(f"{m}.alpha", torch.tensor([4.0])))
        down, up = f"{m}.lora_down.weight", f"{m}.lora_up.weight"
        for value in (float("nan"), float("inf"), -float("inf"), 1e38, 2e4):
            for k in (down, up):
                yield variant(f"value {k} {value}", REFUSE, lambda t, k=k, v=value: t[k].view(-1).__setitem__(0, v))
        for dtype in (torch.int32, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn):
            yield variant(f"dtype {down} {dtype}", REFUSE, lambda t, k=down, d=dtype: t.__setitem__(k, t[k].to(d)))
        for dtype in (torch.float16, torch.bfloat16, torch.float64):       # ComfyUI casts them all to float32
            yield variant(f"dtype {up} {dtype}", EITHER, lambda t, k=up, d=dtype: t.__setitem__(k, t[k].to(d)))
        for shape_change in ("transpose", "empty", "0-d", "1-d", "3-d", "rank+1", "wrong-in", "wrong-out"):
            def reshape(t, k_down=down, k_up=up, how=shape_change):
                d, u = t[k_down], t[k_up]
                if how == "transpose":
                    t[k_up] = u.transpose(0, 1).contiguous()
                elif how == "empty":
                    t[k_down] = torch.zeros(0, *d.shape[1:])
                elif how == "0-d":
                    t[k_down] = torch.tensor(0.5)
                elif how == "1-d":
                    t[k_down] = d.flatten()
                elif how == "3-d":
                    t[k_down] = d.reshape(d.shape[0], d.shape[1], -1)
                elif how == "rank+1":
                    t[k_down] = torch.cat([d, d[:1]])
                elif how == "wrong-in":
                    t[k_down] = torch.cat([d, d[:, :1]], dim=1)
                else:          # both sides agree, the model's layer does not
                    t[k_up] = torch.cat([u, u[:1]])
            # without the model's layers a consistent in/out change cannot be seen
            yield variant(f"shape {m} {shape_change}", TARGETS if shape_change in ("wrong-in", "wrong-out") else REFUSE, reshape)
    yield variant("all zeros", REFUSE, lambda t: [v.zero_() for k, v in t.items() if not k.endswith(".alpha")])
    yield variant("all ups zero", REFUSE, lambda t: [v.zero_() for k, v in t.items() if k.endswith(".lora_up.weight")])
    for extra in ("lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight", "foo", "lora_unet_x.lora_down.weight",
                  "transformer.a.lora_A.weight", "lora_te_text_model.lora_down.weight", "lora_unet_.alpha"):
        yield variant(f"extra key {extra}", REFUSE, lambda t, k=extra: t.__setitem__(k, torch.ones(2, 2)))
    yield variant("module the model lacks", TARGETS, lambda t: [t.__setitem__(k.replace("conv_out", "conv_xx"), t.pop(k))
                                                               for k in list(t) if "conv_out" in k],
                  _meta(meta, **{"rayflow.lora_modules": None}))
    for keep in (1, 3):
        # an older file without rayflow.lora_modules is measured against its own modules
        yield variant(f"partial {keep}/5 (no module count)", EITHER,
                      lambda t, keep=keep: [t.pop(k) for k in list(t) if k.rsplit(".lora_", 1)[0].rsplit(".alpha")[0] not in modules[:keep]],
                      _meta(meta, **{"rayflow.lora_modules": None}))
    yield variant("pixart form in an sd15 file", REFUSE,
                  lambda t: [t.__setitem__(k.replace("lora_unet_", "transformer.").replace("lora_down", "lora_A")
                                           .replace("lora_up", "lora_B"), t.pop(k)) for k in list(t)])
    yield variant("fp16 file", EITHER, lambda t: [t.__setitem__(k, v.half()) for k, v in list(t.items())])
    yield variant("scaled x100", EITHER, lambda t: [v.mul_(100) for k, v in t.items() if not k.endswith(".alpha")])
    yield "unchanged", EITHER, base
    # --- pickles renamed .safetensors (never unpickled)
    for legacy in (False, True):
        buf = io.BytesIO()
        torch.save(good, buf, _use_new_zipfile_serialization=not legacy)
        yield f"torch.save legacy={legacy}", REFUSE, buf.getvalue()
    yield "pickle payload", REFUSE, pickle.dumps({"lora_unet_a.lora_down.weight": _Payload()})
    yield "pickle protocol 0", REFUSE, pickle.dumps([_Payload()], protocol=0)
    for prefix in (8, 64):    # a pickle behind a plausible header length
        yield f"pickle behind header {prefix}", REFUSE, struct.pack("<Q", prefix) + pickle.dumps(_Payload()) + b" " * prefix


def _check_accepted(label, lora, weights):
    """A file that validates changes the model, with finite weights only (without the model's
    layers: finite, floating and not all zero)."""
    assert all(bool(torch.isfinite(t).all()) for t in lora.tensors.values()), f"{label}: non-finite LoRA weights"
    assert all(t.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for t in lora.tensors.values()), label
    assert any(bool(t.any()) for k, t in lora.tensors.items() if not k.endswith(".alpha")), f"{label}: all zeros"
    if weights is None:
        return
    after = apply(weights, lora)
    assert all(bool(torch.isfinite(w).all()) for w in after.values()), f"{label}: non-finite weights after loading"
    assert any(not torch.equal(after[m], weights[m]) for m in weights), f"{label}: validated but changes nothing"


def test_every_mutant_is_refused_cleanly_or_usable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                     # where a pickle payload would write its marker
    base_path = write_valid_lora(str(tmp_path / "base.safetensors"))
    with open(base_path, "rb") as f:
        base = canonical(f.read())
    weights = model_weights()
    targets = {m: list(w.shape) for m, w in weights.items()}
    cases = list(mutants(base, random.Random(19)))
    assert len(cases) >= 300
    path = str(tmp_path / "mutant.safetensors")
    counts = {"refused": 0, "accepted": 0}
    for label, expect, data in cases:
        with open(path, "wb") as f:
            f.write(data)
        for tgt in (targets, None):                 # the loader node's check, and check_lora's
            try:
                lora = validate_lora(path, tgt)
            except LoraFileError as exc:
                msg = str(exc)
                assert msg.count("\n") == 0 and "mutant.safetensors" in msg, f"{label}: {msg!r}"
                counts["refused"] += 1
                continue
            must_refuse = expect == REFUSE or (expect == TARGETS and tgt is not None)
            assert not must_refuse, f"{label}: accepted (targets={tgt is not None}), but must be refused"
            _check_accepted(label, lora, weights if tgt is not None else None)
            counts["accepted"] += 1
    assert not os.path.exists(MARKER), "a pickle payload ran"
    assert counts["accepted"] >= 10 and counts["refused"] >= 500, counts


@pytest.mark.parametrize("seed", [0, 1])
def test_the_generator_is_deterministic(tmp_path, seed):
    base = canonical(open(write_valid_lora(str(tmp_path / "b.safetensors")), "rb").read())
    # the legacy torch.save pickle embeds object ids; every other mutant is the same bytes in every run
    a = [(l, e, d if l != "torch.save legacy=True" else b"") for l, e, d in mutants(base, random.Random(seed))]
    b = [(l, e, d if l != "torch.save legacy=True" else b"") for l, e, d in mutants(base, random.Random(seed))]
    assert a == b and len(a) >= 300
