"""bench.lcm_diagnosis's helpers: the snapshots it reads, the nearest-training-image distance, bad input."""
import pytest
import torch

from bench import lcm_diagnosis


def test_snapshots_are_read_by_training_step_with_the_final_lora(tmp_path):
    folder = tmp_path / "runs" / "seed2"
    folder.mkdir(parents=True)
    for name in ("lora_lcm-step000300.safetensors", "lora_lcm-step001200.safetensors", "lora_lcm.safetensors",
                 "lora_lcm_ema-step000300.safetensors", "lora_ray-step000300.safetensors"):
        (folder / name).write_bytes(b"")
    found = lcm_diagnosis.snapshots(str(tmp_path / "runs"), 2, "lcm")
    assert list(found) == ["300", "1200", "final"] and found["final"].endswith("lora_lcm.safetensors")
    assert lcm_diagnosis.snapshots(str(tmp_path / "runs"), 0, "lcm") == {}


def test_nearest_training_rmse_looks_only_at_the_same_caption():
    train = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2), 0.5 * torch.ones(3, 2, 2)])
    images = torch.stack([0.9 * torch.ones(3, 2, 2), 0.9 * torch.ones(3, 2, 2)])
    # the first image's caption has only the zeros image (distance 0.9), the second's the ones image (0.1)
    got = lcm_diagnosis.nearest_training_rmse(images, ["a", "b"], train, ["a", "b", "c"])
    assert got == pytest.approx((0.9 + 0.1) / 2)


def test_a_variant_that_is_not_lcm_is_one_line(capsys):
    with pytest.raises(SystemExit):
        lcm_diagnosis.main(["--out", "x", "--variant", "ray", "--save", "y.json"])
    assert "--variant must be an LCM variant" in capsys.readouterr().err


def test_a_job_without_loras_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no LoRA of lcm seed 0"):
        lcm_diagnosis.diagnose(str(tmp_path), "lcm", 0)
