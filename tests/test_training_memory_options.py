"""The trainer's memory options (``--base-precision``, ``--optimizer``): validated before any work,
and the 8-bit optimizer refused in one sentence when bitsandbytes is missing. ``tests/test_bench_scale.py``
trains with a bf16 base and checks the LoRA stays fp32 and the options reach the metadata."""

import importlib.util

import pytest

from training.config import ConfigError, DistillConfig, parse_args
from training.trainer import check_optimizer

BASE = dict(model="m", prompts="p.txt", output="o.safetensors")


@pytest.mark.parametrize("field,value,message", [
    ("base_precision", "fp8", "--base-precision must be one of fp32, fp16, bf16"),
    ("optimizer", "sgd", "--optimizer must be one of adamw, adamw8bit"),
])
def test_bad_memory_options_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**BASE, **{field: value}).validate()


def test_memory_options_parse_and_enter_the_fingerprint():
    cfg = parse_args(["--model", "m", "--prompts", "p.txt", "--output", "o.safetensors", "--base-precision", "bf16",
                      "--optimizer", "adamw8bit", "--gradient-checkpointing"])
    assert (cfg.base_precision, cfg.optimizer, cfg.gradient_checkpointing) == ("bf16", "adamw8bit", True)
    fp = cfg.fingerprint()
    assert fp["base_precision"] == "bf16" and fp["optimizer"] == "adamw8bit"
    old = DistillConfig(**BASE).validate().fingerprint()
    for key in ("base_precision", "optimizer"):     # a checkpoint from before the options resumes at their defaults
        old.pop(key)
    assert DistillConfig(**BASE).validate().matches_fingerprint(old)


def test_adamw8bit_without_bitsandbytes_is_one_sentence(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^--optimizer adamw8bit needs bitsandbytes, which is not installed: pip install bitsandbytes$"):
        check_optimizer(DistillConfig(**BASE, optimizer="adamw8bit").validate())
    check_optimizer(DistillConfig(**BASE).validate())       # torch's AdamW needs nothing


def test_a_checkpoint_holds_tensors_that_share_storage(tmp_path):
    """bitsandbytes' 8-bit AdamW keeps one quantisation map for many parameters; the checkpoint
    (safetensors, which refuses shared storage) stores each use as its own copy."""
    import torch

    from training.checkpoint import load_checkpoint, save_checkpoint

    qmap = torch.linspace(-1, 1, 256)
    base = torch.arange(12.0)
    state = {"opt": {"state": {0: {"qmap1": qmap, "state1": torch.zeros(4, dtype=torch.uint8)}, 1: {"qmap1": qmap}}},
             "views": [base[:6], base[6:]]}
    save_checkpoint(str(tmp_path / "ck"), state)
    back = load_checkpoint(str(tmp_path / "ck"))
    assert torch.equal(back["opt"]["state"][0]["qmap1"], qmap) and torch.equal(back["opt"]["state"][1]["qmap1"], qmap)
    assert back["opt"]["state"][0]["state1"].dtype == torch.uint8
    assert torch.equal(torch.cat(back["views"]), base)
