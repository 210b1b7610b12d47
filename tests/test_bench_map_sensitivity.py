"""bench.map_sensitivity: the teacher side reproduces the cache it compares with, and the three
measures of a LoRA's map behave as defined."""

import pytest
import torch

from bench import map_sensitivity
from bench.evaluation import rmse
from bench.map_sensitivity import Probe, parse_args


def test_the_probe_compares_like_with_like_and_measures_a_lora(small_cache, monkeypatch):
    out, _ = small_cache
    monkeypatch.setattr(map_sensitivity, "TEACHER_STEPS", 4)          # the small cache's phase-1 steps
    probe = Probe(str(out / "w" / "cache"), items=6, delta=0.1)
    assert probe.z.shape[0] == 6
    assert rmse(probe.teacher(probe.z), probe.x0) < 1e-5               # the teacher remade from z is the cached x0
    assert probe.teacher_sensitivity > 0 and probe.start["items"] == 12 and probe.start["mu_minus_z_rms"] > 0
    rows = probe.measure("ray", str(out / "ray.safetensors"), [1, 2])
    assert set(rows) == {"1", "2"}
    for row in rows.values():
        assert set(row) == set(map_sensitivity.METRICS)
        assert all(v > 0 and v == v for v in row.values())
    # rmse_top samples from the centre of the Ray marginal at T - 1, sqrt(a) x0 + sqrt(1 - a) mu: with the
    # target mean that puts that centre on z, it is the sample from z
    a = probe.model.schedule.alpha_bar(torch.tensor(float(probe.model.schedule.num_timesteps - 1))).double()
    probe.mu = ((probe.z.double() - a.sqrt() * probe.x0.double()) / (1 - a).sqrt()).float()
    same = probe.measure("ray", str(out / "ray.safetensors"), [1, 2])
    assert all(abs(same[n]["rmse_top"] - same[n]["rmse_train"]) < 1e-4 for n in same)
    assert all(abs(same[n]["rmse_top"] - rows[n]["rmse_top"]) > 1e-3 for n in same)     # and mu matters
    probe.shift = torch.zeros_like(probe.shift)                        # no perturbation: no change of the image
    assert probe.measure("ray", str(out / "ray.safetensors"), [1])["1"]["sensitivity"] == 0.0


def test_bad_arguments_are_one_line_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path), "--results", "r.json", "--save", "s.json", "--variants", "lcm"])
    assert "not Ray-sampled variants of bench.variants: lcm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path), "--results", "r.json", "--save", "s.json"])
    assert "has no phase-1 cache" in capsys.readouterr().err
