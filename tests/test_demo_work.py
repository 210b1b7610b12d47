"""The demo's work folders and resume (issue 21): modes never share a cache, a stopped run continues
from its checkpoint, a folder of other settings is set aside with one line; the demo's code path
runs on tiny settings (2 teacher steps, a few LoRA steps)."""

import dataclasses
import glob
import json
import os

import pytest

from proxy.workdir import KEY_FILE, prepare_work_dir

TINY = dict(seeds_per_prompt=1, train_steps=4, batch_size=2, eval_caption_stride=72, eval_per_caption=2,
            lora_rank=2, checkpoint_every=2, eval_every=2)


def test_prepare_work_dir_reuses_its_own_folder_and_sets_another_aside(tmp_path):
    lines = []
    folder = str(tmp_path / "w")
    assert prepare_work_dir(folder, "quick-aaaa", {}, lines.append) is False
    os.makedirs(os.path.join(folder, "cache"))
    assert prepare_work_dir(folder, "quick-aaaa", {}, lines.append) is True and lines == []
    assert prepare_work_dir(folder, "full-bbbb", {}, lines.append) is False
    assert len(lines) == 1 and "another configuration" in lines[0] and "quick-aaaa" in lines[0]
    aside = folder + ".set-aside-quick-aaaa"
    assert os.path.isdir(os.path.join(aside, "cache"))
    with open(os.path.join(folder, KEY_FILE)) as f:
        assert json.load(f)["key"] == "full-bbbb"


def test_prepare_work_dir_sets_aside_a_folder_without_a_key(tmp_path):
    folder = tmp_path / "w"
    (folder / "cache").mkdir(parents=True)          # e.g. the single work/ folder of older demos
    lines = []
    prepare_work_dir(str(folder), "full-cccc", {}, lines.append)
    assert len(lines) == 1 and (tmp_path / "w.set-aside-unknown" / "cache").is_dir()


def test_config_key_separates_modes_and_settings():
    import argparse

    from proxy import demo
    from proxy.workdir import config_key

    args = argparse.Namespace(teacher=demo.TEACHER, seed=0)
    full = demo.distil_config(args, demo.SETTINGS["full"], "p.txt", "o.safetensors")
    quick = demo.distil_config(args, demo.SETTINGS["quick"], "p.txt", "o.safetensors")
    assert config_key("full", full) == config_key("full", demo.distil_config(args, demo.SETTINGS["full"], "p.txt",
                                                                              "o.safetensors"))
    assert config_key("full", full) != config_key("full", quick)
    # the demo trains what python -m training.distill trains by default
    from training.config import DEFAULT_PRESET, PRESETS

    assert PRESETS[DEFAULT_PRESET] and all(getattr(full, k) == v for k, v in PRESETS[DEFAULT_PRESET].items())
    assert config_key("full", full).startswith("full-") and config_key("quick", quick).startswith("quick-")


def test_plan_line_estimates_both_modes():
    from proxy.estimate import estimate_seconds, plan_line

    full = estimate_seconds(576, 25, 3.0, 1200, 32, 432, snapshot_evals=3)
    assert abs(full["total"] - 623) < 1                       # the measurement the unit costs come from
    assert estimate_seconds(576, 25, 3.0, 1200, 32, 432)["total"] < full["total"]
    quick = estimate_seconds(72, 25, 3.0, 120, 16, 72)
    assert quick["total"] < full["total"] / 5
    line = plan_line("quick", 72, 25, 3.0, 120, 16, 72, "w")
    assert "\n" not in line and "estimate" in line and "minute" in line


@pytest.fixture
def tiny_demo(monkeypatch):
    from proxy import demo

    if not os.path.isdir(demo.TEACHER):
        pytest.skip("the committed proxy teacher is missing (proxy/weights/teacher)")
    monkeypatch.setitem(demo.SETTINGS, "full", TINY)
    monkeypatch.setitem(demo.SETTINGS, "quick", {**TINY, "train_steps": 2})
    from proxy import recipe

    monkeypatch.setattr(recipe, "VP", dataclasses.replace(recipe.VP, steps=2))   # the distillation's (proxy_config reads it)
    monkeypatch.setattr(demo, "TEACHER_STEPS", 2)         # the demo's reference row and plan line
    return demo


def _count_steps(monkeypatch, original, fail_at=None):
    """Patch ``Trainer.train_step`` to record the step it starts from (and raise KeyboardInterrupt, as
    Ctrl-C would, on call ``fail_at``); returns the list of recorded steps."""
    from training.trainer import Trainer

    calls = []

    def train_step(self):
        calls.append(self.step)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return original(self)
    monkeypatch.setattr(Trainer, "train_step", train_step)
    return calls


def test_stopped_demo_then_quick_then_resume(tiny_demo, tmp_path, monkeypatch, capsys):
    from training.trainer import Trainer

    original = Trainer.train_step
    out = str(tmp_path / "demo")
    # the full run stops during phase 2, after its step-2 checkpoint and LoRA snapshot
    _count_steps(monkeypatch, original, fail_at=3)
    assert tiny_demo.main(["--out", out]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "run the same command again" in err
    assert [os.path.basename(p) for p in glob.glob(os.path.join(out, "rayflow_proxy-step*.safetensors"))] \
        == ["rayflow_proxy-step000002.safetensors"]
    with open(os.path.join(out, "metrics.json")) as f:               # the step-2 snapshot's grid and metrics
        assert json.load(f)["snapshot_step"] == 2
    assert os.path.isfile(os.path.join(out, "samples.png")) and "snapshot after 2 of 4" in open(
        os.path.join(out, "report.md")).read()
    # the quick run in the same output folder gets its own cache: no traceback, no error
    monkeypatch.setattr(Trainer, "train_step", original)
    assert tiny_demo.main(["--quick", "--out", out]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "estimate" in captured.out
    assert sorted(os.listdir(os.path.join(out, "work")))[0].startswith("full-")
    # the full run again: continues from step 2, trains only the two missing steps
    calls = _count_steps(monkeypatch, original)
    assert tiny_demo.main(["--out", out]) == 0
    assert calls == [2, 3]
    assert "continuing the stopped run" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out, "rayflow_proxy.safetensors"))
    assert not glob.glob(os.path.join(out, "rayflow_proxy-step*.safetensors"))
    with open(os.path.join(out, "metrics.json")) as f:
        final = json.load(f)
    assert final["mode"] == "full" and final["snapshot_step"] is None and "RayFlow 2" in final["metrics"]
    # the RayFlow rows sample with the eta the LoRA records (a Ray LoRA: 1), every row is scored against the teacher
    assert {final["metrics"][f"RayFlow {n}"]["eta"] for n in (1, 2, 4)} == {1.0}
    assert all(r["fd_teacher"] > 0 for r in final["metrics"].values())
    assert "| FD to teacher | FD to data |" in open(os.path.join(out, "report.md")).read()


def test_grid_has_a_caption_under_each_column(tmp_path):
    import torch
    from PIL import Image

    from training.grid import save_grid

    rows = {"teacher DDIM 25 steps": torch.zeros(3, 3, 16, 16), "RayFlow 1 step": torch.ones(3, 3, 16, 16)}
    save_grid(rows, ["a small red circle on a blue background"] * 3, str(tmp_path / "g.png"))
    img = Image.open(tmp_path / "g.png")
    assert img.size[0] == 130 + 3 * 96 and img.size[1] > 2 * 96                  # caption lines below the rows
    below = img.crop((130, 2 * 96, 130 + 96, img.size[1])).convert("L")
    assert below.getextrema()[0] < 128                                         # text drawn under column 0
    with pytest.raises(ValueError, match="captions"):
        save_grid(rows, ["one"], str(tmp_path / "h.png"))
