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


def test_sigma_auto_with_a_one_step_teacher_is_one_sentence():
    """Theorem 1's spread of a one-point trajectory is 0: refused before phase 1, with the way out."""
    import torch

    with pytest.raises(ConfigError, match=r"--sigma auto needs --teacher-steps 2 or more.*--sigma 0\.1"):
        DistillConfig(**BASE, teacher_steps=1).validate()
    DistillConfig(**BASE, teacher_steps=1, sigma=0.1).validate()        # an explicit sigma is fine
    DistillConfig(**BASE, teacher_steps=1, no_ray=True).validate()      # no Ray noise, no sigma
    cfg = DistillConfig(**BASE).validate()
    with pytest.raises(ConfigError, match="mean Theorem-1 spread of the teacher trajectories is 0.0"):
        cfg.resolve_sigma(torch.zeros(8))
    assert cfg.resolve_sigma(torch.full((8,), 0.12345)).sigma == 0.1235


def test_a_bf16_base_denoises_in_bf16_and_answers_in_the_callers_dtype(tmp_path):
    """--base-precision bf16: the frozen denoiser runs in bf16 (half the weight memory), its noise
    prediction comes back in fp32 for fp32 inputs (the schedule math keeps its precision) and stays
    close to the fp32 model's."""
    import torch

    from training.models import load_base_model
    from training.tiny import build_tiny_sd15

    path = build_tiny_sd15(str(tmp_path / "m"))
    full, half = load_base_model(path), load_base_model(path, dtype=torch.bfloat16)
    assert (full.dtype, half.dtype) == (torch.float32, torch.bfloat16)
    cond = full.encode_prompts(["a red cat", "a blue dog"], torch.device("cpu"))
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 900])
    want, got = full.denoise(x, t, cond, 64), half.denoise(x, t, cond, 64)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert not torch.equal(got, want)                               # it did run in bf16
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert half.denoise(x.double(), t, cond, 64).dtype == torch.float64


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed (the dev extra installs it)")
def test_the_leanest_options_train_and_resume_exactly(tmp_path, monkeypatch):
    """bf16 base + gradient checkpointing + 8-bit AdamW (what SDXL needs on 24 GB): a run stopped
    after its step-2 checkpoint and resumed ends with the uninterrupted run's LoRA, bit for bit (the
    8-bit optimizer's state, quantisation maps shared between parameters, survives the checkpoint).
    Rank 128 makes LoRA matrices of >= 4096 weights, the size from which bitsandbytes keeps 8-bit state."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from training.distill import main
    from training.tiny import build_tiny_sd15
    from training.trainer import Trainer

    model = build_tiny_sd15(str(tmp_path / "m"))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cat\na blue house\n", encoding="utf-8")
    common = ["--model", model, "--prompts", str(prompts), "--train-steps", "4", "--checkpoint-every", "2",
              "--resolution", "16", "--teacher-steps", "3", "--batch-size", "2", "--lora-rank", "128", "--lora-alpha", "128",
              "--base-precision", "bf16", "--gradient-checkpointing", "--optimizer", "adamw8bit"]
    ref, cut = tmp_path / "ref.safetensors", tmp_path / "cut.safetensors"
    assert main([*common, "--output", str(ref)]) == 0
    real_step, stopped = Trainer.train_step, []

    def train_step(self):
        if self.step == 3 and not stopped:
            stopped.append(self.step)
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    assert main([*common, "--output", str(cut)]) == 130 and stopped == [3] and not cut.exists()
    assert main([*common, "--output", str(cut), "--resume"]) == 0
    a, b = load_file(str(ref)), load_file(str(cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with safe_open(str(cut), framework="pt") as f:
        meta = f.metadata()
    assert (meta["rayflow.base_precision"], meta["rayflow.optimizer"]) == ("bf16", "adamw8bit")


def test_bitsandbytes_hub_kernel_notice_is_dropped_and_its_other_warnings_kept():
    """Importing ``training`` silences the one import-time notice of bitsandbytes about a 4-bit hub
    kernel (the trainer has no 4-bit layers); any other bitsandbytes warning still shows."""
    import logging

    import training  # noqa: F401

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")

    def record(msg):
        return logging.LogRecord(log.name, logging.WARNING, __file__, 1, msg, ("x",), None)

    assert not log.filter(record("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ..."))
    assert log.filter(record("some other problem: %s"))
