"""bench.lcm_consistency: the teacher reference behaves as a denoiser, a LoRA's rows have the
shape the docs read, results are written as they finish and a rerun skips them."""

import json
import shutil

import pytest

from bench import lcm_consistency
from bench.evaluation import STEPS
from bench.lcm_consistency import TIMESTEPS, Probe, parse_args


def test_the_probe_measures_a_lora_per_timestep_and_per_step(small_cache):
    out, _ = small_cache
    probe = Probe(str(out / "w" / "cache"), items=6)
    assert probe.x0.shape[0] == 6 and probe.x0_std > 0
    ref = probe.teacher_x0_rmse
    assert set(ref) == {str(t) for t in TIMESTEPS}
    assert ref[str(TIMESTEPS[0])] < ref[str(TIMESTEPS[-1])]          # less noise, a closer x0-prediction
    row = probe.measure(str(out / "ray.safetensors"))
    assert set(row["consistency"]) == set(ref) and all(v > 0 for v in row["consistency"].values())
    assert {n: len(s) for n, s in row["multistep"].items()} == {str(n): n for n in STEPS}   # one std per step


def test_main_writes_each_lora_and_skips_it_on_a_rerun(small_cache, tmp_path, capsys):
    out, _ = small_cache
    bench_out = tmp_path / "bench"
    shutil.copytree(out / "w" / "cache", bench_out / "data" / "cache")
    archive = tmp_path / "r_runs" / "seed0"
    archive.mkdir(parents=True)
    shutil.copyfile(out / "ray.safetensors", archive / "lcm.safetensors")
    argv = ["--out", str(bench_out), "--results", str(tmp_path / "r.json"), "--seeds", "0", "1", "--items", "4",
            "--save", str(tmp_path / "s.json")]
    assert lcm_consistency.main(argv) == 0
    saved = json.loads((tmp_path / "s.json").read_text())
    assert list(saved["runs"]["lcm"]) == ["0"] and saved["items"] == 4      # seed 1 has no archived LoRA
    assert lcm_consistency.main(argv) == 0
    assert "nothing to measure" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other settings \(items 4\)"):
        lcm_consistency.main(argv[:-4] + ["--items", "6", "--save", str(tmp_path / "s.json")])


def test_bad_arguments_are_one_line_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path), "--results", "r.json", "--save", "s.json", "--variants", "ray"])
    assert "not LCM variants of bench.variants: ray" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path), "--results", "r.json", "--save", "s.json"])
    assert "has no phase-1 cache" in capsys.readouterr().err
