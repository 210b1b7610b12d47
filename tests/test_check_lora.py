"""``python -m training.check_lora``: a description and exit code 0, or the reason and exit code 1."""

import os
import subprocess
import sys

import torch

from tiny_lora import METADATA, lora_tensors, write_valid_lora
from training.check_lora import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_valid_file_is_described(tmp_path, capsys):
    path = write_valid_lora(str(tmp_path / "ray.safetensors"))
    assert main([path]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ray.safetensors: RayFlow LoRA (format 1) for SD1.5")
    for part in ("rank 2", "5 modules of 5 declared", "sigma 0.3", "recipe ray", "recommended: 4 steps"):
        assert part in out


def test_an_unusable_file_gets_its_reason_and_exit_code_1(tmp_path, capsys):
    good = write_valid_lora(str(tmp_path / "good.safetensors"))
    t = lora_tensors()
    t[next(k for k in t if k.endswith(".lora_up.weight"))] = torch.full((8, 2), float("nan"))
    bad = write_valid_lora(str(tmp_path / "bad.safetensors"), t)
    assert main([good, bad]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("unusable: bad.safetensors: ") and "holds NaN or infinite values" in out[-1]
    partial = write_valid_lora(str(tmp_path / "p.safetensors"), {k: v for k, v in lora_tensors().items() if "conv_out" not in k},
                               {**METADATA, "rayflow.lora_modules": 5})
    assert main([partial]) == 1 and "holds only 4 of its 5 layers" in capsys.readouterr().out
    assert main([partial, "--min-coverage", "0.8"]) == 0


def test_the_module_runs_from_the_shell(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x80\x04pickle")
    res = subprocess.run([sys.executable, "-m", "training.check_lora", str(tmp_path / "x.safetensors")],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 1 and res.stdout.startswith("unusable: x.safetensors is corrupt or not a safetensors file")
    res = subprocess.run([sys.executable, "-m", "training.check_lora", "--min-cov", "0.5", "f.safetensors"],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "unrecognized arguments" in res.stderr      # no abbreviations
