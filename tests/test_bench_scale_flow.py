"""``bench.scale`` for the flow-matching families (SD3.5 Medium, FLUX.1-dev): their full-size configs,
a family measured with fewer blocks and extrapolated to its full depth (a hand count of the line, and
the CLI's code path on the tiny FLUX), the quantized base's counted bytes, and the options refused in
one line. The tiny runs of every family through both phases and the key match are in
``tests/test_bench_scale.py`` and ``tests/test_training_comfyui.py``."""

import json
import math

import pytest

from bench.scale import cli, count, depth, families, table
from bench.scale.recipe import GIB, QUANTIZED_BYTES


def test_the_full_size_flow_denoisers_have_the_published_sizes():
    """Built on the meta device from the configs: SD3.5 Medium's MMDiT-X 2.2 B parameters (2.5 B with its
    fixed position-embedding table, as the model card counts), FLUX.1-dev's 11.9 B (its "12 B")."""
    assert math.isclose(families.meta_params("sd35_medium"), 2.24e9, rel_tol=0.01)
    assert math.isclose(families.meta_params("flux_dev"), 11.9e9, rel_tol=0.01)
    flux = families.REGISTRY["flux_dev"]
    assert flux.units(flux.config()) == 19                       # 19 double-stream + 38 single-stream blocks
    assert flux.with_units(flux.config(), 2)["num_single_layers"] == 4
    assert families.denoiser("flux_dev").latent_channels == 16 and families.denoiser("sd35_medium").latent_size == 128


def _run(p1, p2, load, ph1, ph2):
    return {"status": "measured", "phase1_s_per_trajectory": 2 * p1, "phase1_s_per_teacher_step": p1,
            "phase2_s_per_step": p2, "batch_size": 1, "teacher_steps": 2, "options": {"base_precision": "bf16"},
            "peak_rss_gib": max(load, ph1, ph2) / GIB,
            "peak_rss_by_phase_bytes": {"load": load, "phase 1": ph1, "phase 2": ph2}}


def test_extrapolation_to_the_full_depth_is_the_line_through_both_depths():
    recipe = {"train_steps": 1000, "batch_size": 16, "teacher_steps": 28}
    runs = {1: _run(10.0, 30.0, 4 * GIB, 5 * GIB, 3 * GIB), 3: _run(20.0, 70.0, 6 * GIB, 6 * GIB, 8 * GIB)}
    row = depth.extrapolate(runs, 19, recipe)
    assert row["status"] == depth.EXTRAPOLATED and row["units_measured"] == [1, 3] and row["units_full"] == 19
    assert math.isclose(row["phase1_s_per_teacher_step"], 10.0 + 18 * 5.0)          # 5 s per unit
    assert math.isclose(row["phase2_s_per_step"], 30.0 + 18 * 20.0)                 # 20 s per unit
    by = row["peak_rss_by_phase_bytes"]
    assert by == {"load": 22 * GIB, "phase 1": 14 * GIB, "phase 2": round(3 * GIB + 18 * 2.5 * GIB)}
    # the phase that peaks changed with depth (phase 1 at 1 unit, phase 2 at 19): the whole run's is the largest
    assert row["peak_rss_bytes"] == by["phase 2"] and row["peak_rss_phase1_bytes"] == 22 * GIB
    assert row["estimates"]["phase2_hours_default_recipe"] == round(390.0 * 16 * 1000 / 3600, 2)
    assert set(row["measured"]) == {"1", "3"} and "extrapolated" in row["how"]
    with pytest.raises(ValueError, match="each phase's peak"):
        depth.extrapolate({1: runs[1], 3: {**runs[3], "peak_rss_by_phase_bytes": None}}, 19, recipe)


def test_the_tiny_flux_measured_at_two_depths_gives_an_extrapolated_row(tmp_path):
    out = tmp_path / "scale.json"
    assert cli.main(["--tiny", "--families", "flux_dev", "--blocks", "1,2", "--variants", "bf16-gc", "--threads", "1",
                     "--no-keymatch", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())["flux_dev"]
    row = rec["variants"]["bf16-gc"]
    assert row["status"] == depth.EXTRAPOLATED, row
    assert row["units_measured"] == [1, 2] and row["command"].startswith("python -m bench.scale")
    a, b, full = row["measured"]["1"], row["measured"]["2"], row["units_full"]
    line = a["phase2_s_per_step"] + (full - 1) * (b["phase2_s_per_step"] - a["phase2_s_per_step"])
    assert math.isclose(row["phase2_s_per_step"], line)
    assert set(rec["params_measured"]) == {"1", "2"} and rec["denoiser_params"] == families.meta_params("flux_dev", True)
    assert any("extrapolated" in s for s in rec["stand_ins"]) and "lora" not in row
    text = table.table(json.loads(out.read_text()))
    assert "**extrapolated** to" in text and "its runs with fewer blocks (measured)" in text


@pytest.mark.parametrize("argv, message", [
    (["--families", "sd15", "--blocks", "1,2"], "sd15 is measured whole"),
    (["--families", "flux_dev", "--blocks", "2,1"], "two depths A,B with 1 <= A < B"),
    (["--families", "flux_dev", "--blocks", "1,19"], "has 19 units of depth"),
    (["--families", "flux_dev", "--blocks", "1,2", "--flops"], "--blocks is for the CPU runs"),
    (["--families", "sdxl", "--variants", "nf4-gc"], "nf4-gc is not a memory option of sdxl"),
])
def test_bad_flow_options_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        cli.parse_args(argv)
    assert err.value.code == 2 and message in capsys.readouterr().err


def test_a_quantized_base_counts_its_linear_weights_at_bitsandbytes_bytes():
    """nf4: half a byte a weight plus the block scales; int8: a byte plus an fp32 scale per output row; the
    rest of the denoiser (norms, embeddings, layers nf4 cannot take) in bf16."""
    quantized = {"nf4": (6400, 100), "int8": (8000, 120)}
    bf16 = count.static_bytes(10_000, 50, {"base_precision": "bf16", "optimizer": "adamw"})
    nf4 = count.static_bytes(10_000, 50, {"base_precision": "nf4", "optimizer": "adamw"}, quantized)
    int8 = count.static_bytes(10_000, 50, {"base_precision": "int8", "optimizer": "adamw"}, quantized)
    assert bf16["denoiser_weights"] == 20_000
    assert nf4["denoiser_weights"] == round(20_000 + 6400 * (QUANTIZED_BYTES["nf4"] - 2))
    assert int8["denoiser_weights"] == 20_000 - 8000 + 4 * 120
    assert nf4["lora_weights_grads_optimizer"] == bf16["lora_weights_grads_optimizer"] == 50 * 16
    counted = count.count_family("sd35_medium", tiny=True)
    mem = counted["phase2_memory"]
    assert mem["nf4-gc"]["denoiser_weights"] < mem["int8-gc"]["denoiser_weights"] < mem["bf16-gc"]["denoiser_weights"]
    assert mem["nf4-gc"]["activations"] == mem["bf16-gc"]["activations"]         # it computes as bf16
