"""``python -m training.check_lora``: a description and exit code 0, or the reason and exit code 1;
the fit to the family's model (bundled configs, or ``--model``) is checked or said to be unchecked;
bad arguments are exit code 2."""

import os
import subprocess
import sys

import pytest
import torch

from tiny_lora import METADATA, lora_tensors, write_valid_lora
from training.check_lora import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# layers of the standard SD1.5 UNet (diffusers names) and their weight shapes
SD15_LAYERS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": [320, 320],
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k": [1280, 768],
    "lora_unet_up_blocks_3_resnets_0_conv1": [320, 960, 3, 3],
    "lora_unet_down_blocks_1_attentions_0_proj_in": [640, 640, 1, 1],
}


def sd15_tensors(out_extra=0, in_extra=0, rename=None):
    g = torch.Generator().manual_seed(0)
    out = {}
    for m, shape in SD15_LAYERS.items():
        m = rename(m) if rename else m
        down = [2, shape[1] + in_extra, *shape[2:]]
        up = [shape[0] + out_extra, 2, *([1, 1] if len(shape) == 4 else [])]
        out[f"{m}.lora_down.weight"] = torch.randn(*down, generator=g) * 0.1
        out[f"{m}.lora_up.weight"] = torch.randn(*up, generator=g) * 0.1
        out[f"{m}.alpha"] = torch.tensor(2.0)
    return out


def test_a_valid_file_is_described(tmp_path, capsys):
    path = write_valid_lora(str(tmp_path / "ray.safetensors"))
    assert main([path, "--no-fit-check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ray.safetensors: RayFlow LoRA (format 1) for SD1.5")
    for part in ("rank 2", "5 modules of 5 declared", "sigma 0.3", "recipe ray", "recommended: 4 steps",
                 "fit to a model: not checked (--no-fit-check)"):
        assert part in out


def test_an_unusable_file_gets_its_reason_and_exit_code_1(tmp_path, capsys):
    good = write_valid_lora(str(tmp_path / "good.safetensors"))
    t = lora_tensors()
    t[next(k for k in t if k.endswith(".lora_up.weight"))] = torch.full((8, 2), float("nan"))
    bad = write_valid_lora(str(tmp_path / "bad.safetensors"), t)
    assert main([good, bad, "--no-fit-check"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("unusable: bad.safetensors: ") and "holds NaN or infinite values" in out[-1]
    partial = write_valid_lora(str(tmp_path / "p.safetensors"), {k: v for k, v in lora_tensors().items() if "conv_out" not in k},
                               {**METADATA, "rayflow.lora_modules": 5})
    assert main([partial, "--no-fit-check"]) == 1 and "holds only 4 of its 5 layers" in capsys.readouterr().out
    assert main([partial, "--no-fit-check", "--min-coverage", "0.8"]) == 0


def test_the_fit_to_the_family_model_is_checked(tmp_path, capsys):
    """Files the loader node refuses on the family's model are unusable here too: wrong out- or
    in-features in every module, layers the model lacks (SDXL-like names), an SD1.5 file labelled SDXL;
    the file that fits says what it was checked against."""
    good = write_valid_lora(str(tmp_path / "sd15.safetensors"), sd15_tensors())
    assert main([good]) == 0
    out = capsys.readouterr().out
    assert "patches 4 of the model's" in out and "fit checked against the standard SD1.5 model" in out
    cases = {
        "out": (sd15_tensors(out_extra=8), METADATA, "the LoRA was made for another model variant"),
        "in": (sd15_tensors(in_extra=8), METADATA, "the LoRA was made for another model variant"),
        # SDXL's second transformer block per attention, a fourth resnet, attentions in the last down block
        "renamed": (sd15_tensors(rename=lambda m: m.replace("transformer_blocks_0", "transformer_blocks_1")
                                 .replace("resnets_0", "resnets_3").replace("down_blocks_1", "down_blocks_3")),
                    METADATA, "has no module that fits this model's layers"),
        "labelled-sdxl": (sd15_tensors(), {**METADATA, "rayflow.architecture": "sdxl"}, None),
    }
    for label, (tensors, meta, reason) in cases.items():
        path = write_valid_lora(str(tmp_path / f"{label}.safetensors"), tensors, meta)
        assert main([path]) == 1, label
        out = capsys.readouterr().out
        assert out.startswith(f"unusable: {label}.safetensors") and out.count("\n") == 1, out
        assert reason is None or reason in out, out


def test_a_family_without_bundled_config_says_the_fit_was_not_checked(tmp_path, capsys):
    t = {}
    for i in range(2):
        t[f"transformer.transformer_blocks.{i}.attn1.to_q.lora_A.weight"] = torch.randn(2, 16) * 0.1
        t[f"transformer.transformer_blocks.{i}.attn1.to_q.lora_B.weight"] = torch.randn(16, 2) * 0.1
    path = write_valid_lora(str(tmp_path / "pixart.safetensors"), t, {**METADATA, "rayflow.architecture": "pixart_sigma"})
    assert main([path]) == 0
    assert "fit to a model: not checked (no bundled PixArt-sigma configuration; pass --model DIR" in capsys.readouterr().out


def test_model_option_checks_against_that_folder(tmp_path, capsys):
    teacher = os.path.join(REPO, "proxy", "weights", "teacher")       # an SD1.5-family folder of other sizes
    good = write_valid_lora(str(tmp_path / "sd15.safetensors"), sd15_tensors())
    assert main([good, "--model", teacher]) == 1
    assert "the LoRA was made for another model variant" in capsys.readouterr().out
    sdxl = write_valid_lora(str(tmp_path / "x.safetensors"), sd15_tensors(), {**METADATA, "rayflow.architecture": "sdxl"})
    assert main([sdxl, "--model", teacher]) == 1
    assert f"x.safetensors is a RayFlow LoRA for SDXL, but {teacher} is SD1.5" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main([good, "--model", str(tmp_path)])
    assert exc.value.code == 2 and "--model: not a diffusers model folder" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["2", "nan", "-0.1", "abc"])
def test_a_bad_min_coverage_is_exit_code_2_before_any_file(tmp_path, capsys, value):
    path = write_valid_lora(str(tmp_path / "ray.safetensors"))
    with pytest.raises(SystemExit) as exc:
        main([path, "--min-coverage", value])
    captured = capsys.readouterr()
    assert exc.value.code == 2 and captured.out == ""
    assert "argument --min-coverage: must be a number in [0, 1]" in captured.err


def test_a_folder_is_named_as_a_folder(tmp_path, capsys):
    (tmp_path / "loras").mkdir()
    assert main([str(tmp_path / "loras")]) == 1
    assert capsys.readouterr().out.startswith("unusable: loras is a folder, not a LoRA file")


def test_the_module_runs_from_the_shell(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x80\x04pickle")
    res = subprocess.run([sys.executable, "-m", "training.check_lora", str(tmp_path / "x.safetensors")],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 1 and res.stdout.startswith("unusable: x.safetensors is corrupt or not a safetensors file")
    res = subprocess.run([sys.executable, "-m", "training.check_lora", "--min-cov", "0.5", "f.safetensors"],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "unrecognized arguments" in res.stderr      # no abbreviations
