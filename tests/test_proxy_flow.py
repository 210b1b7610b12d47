"""The flow-matching proxy family (issue 33): the committed SD3-shaped teacher loads through the trainer's
loader and samples captions the classifier recognises; one tiny ``bench.quality --proxy flow`` job runs
end to end through ``training.distill``; and the generalised harness keeps the VP family's sampling
exactly as it was (the VP benchmark's archives stay valid)."""

import dataclasses
import json
import os

import pytest
import torch

from proxy.data import all_labels
from training.models import load_base_model
from tests.conftest import CLASSIFIER, FLOW_TEACHER, TEACHER


@pytest.fixture(scope="module")
def flow_teacher():
    if not os.path.isdir(FLOW_TEACHER):
        pytest.skip("proxy/weights/flow_teacher is absent; rebuild it with `python -m proxy.teacher_flow`")
    return load_base_model(FLOW_TEACHER, resolution=16)


def test_the_flow_teacher_is_an_sd3_model_in_pixel_space_that_samples_its_captions(flow_teacher):
    from proxy.classifier import load_classifier
    from proxy.recipe import FLOW
    from proxy.sampling import teacher_samples
    from training.flow_models import FlowModel

    m = flow_teacher
    assert isinstance(m, FlowModel) and m.architecture == "sd3" and m.vae is None
    assert m.latent_channels == 3 and m.latent_size(16) == 16 and m.text_length == 16
    # SD3's table under the shift the teacher trained with (t' = s t / (1 + (s - 1) t)), t = 1 / 1000 up to 1
    with open(os.path.join(FLOW_TEACHER, "scheduler", "scheduler_config.json")) as f:
        shift = json.load(f)["shift"]
    assert abs(float(m.schedule.sigmas[0]) - shift * 1e-3 / (1 + (shift - 1) * 1e-3)) < 1e-6
    assert abs(float(m.schedule.sigmas[-1]) - 1.0) < 1e-6
    labels = all_labels()[::3]                                       # 24 captions
    seeds = torch.arange(len(labels))
    images = teacher_samples(m, labels, seeds, FLOW.solver, FLOW.steps, FLOW.cfg)
    assert images.shape == (24, 3, 16, 16) and torch.isfinite(images).all()
    assert torch.equal(images, teacher_samples(m, labels, seeds, FLOW.solver, FLOW.steps, FLOW.cfg))
    hits = (load_classifier(CLASSIFIER).predict(images) == labels).all(1).float().mean()
    assert hits > 0.8, f"the flow teacher's 25-step samples match only {float(hits):.2f} of their captions"
    # one Euler step from noise is far from the 25-step sample: the trajectory is not trivial
    assert (teacher_samples(m, labels, seeds, FLOW.solver, 1, FLOW.cfg) - images).abs().mean() > 0.05


def test_the_flow_teacher_folder_declares_its_time_shift_and_patch_size(tiny_flow_teacher):
    """The shift the teacher trained with is the one its scheduler (and so the trainer's schedule) reads;
    its transformer declares the patch size it was built with."""
    with open(os.path.join(tiny_flow_teacher, "scheduler", "scheduler_config.json")) as f:
        assert json.load(f)["shift"] == 2.0
    with open(os.path.join(tiny_flow_teacher, "transformer", "config.json")) as f:
        assert json.load(f)["patch_size"] == 1
    m = load_base_model(tiny_flow_teacher, resolution=16)
    # shifted sigma at u = 0.5: s u / (1 + (s - 1) u) = 2/3 for s = 2
    assert abs(float(m.schedule.sigmas[len(m.schedule.sigmas) // 2]) - 2 / 3) < 5e-3


def test_a_tiny_flow_benchmark_job_runs_end_to_end(tiny_flow_teacher, tmp_path, monkeypatch, capsys):
    """``--teacher-only`` then a ``ray`` and an ``lcm`` job (2 teacher steps, 2 LoRA steps, 3 captions) on a
    teacher written by ``proxy.teacher_flow``: the teacher's Euler and DPM-Solver++ rows, a SD3 LoRA from
    ``training.distill`` and the flow-ODE LCM-LoRA (``bench/lcm_flow.py``), their metrics and the summary."""
    import bench.evaluation as evaluation
    import proxy.recipe as recipe
    from bench import quality
    from safetensors import safe_open

    labels = all_labels()[:3]
    cheap = dataclasses.replace(recipe.FLOW, teacher=tiny_flow_teacher, steps=2)       # cheap references
    monkeypatch.setitem(quality.RECIPES, "flow", cheap)
    monkeypatch.setattr(evaluation, "all_labels", lambda: labels)
    monkeypatch.setattr(recipe, "all_labels", lambda: labels)
    out, results = tmp_path / "bench", tmp_path / "s.json"
    argv = ["--proxy", "flow", "--seeds", "0", "--variants", "ray,lcm", "--train-steps", "2", "--seeds-per-prompt", "2",
            "--eval-per-caption", "2", "--out", str(out), "--results", str(results)]
    assert quality.main(argv + ["--teacher-only"]) == 0
    assert "| teacher Euler | 25 |" in capsys.readouterr().out and not (out / "data").exists()
    assert quality.main(argv) == 0
    record = json.loads((out / "runs" / "seed0" / "ray.json").read_text())
    for n in ("1", "2", "4", "8"):
        assert record["rows"]["ray"][n]["nfe"] == int(n) and record["rows"]["ray"][n]["fd_indep"] >= 0
    assert record["rows"]["ray [probe4, eta 1]"]["2"]["nfe"] == 2 + 8
    with safe_open(str(out / "runs" / "seed0" / "lora_ray.safetensors"), "pt") as f:
        assert f.metadata()["rayflow.architecture"] == "sd3"
    lcm = json.loads((out / "runs" / "seed0" / "lcm.json").read_text())
    assert [lcm["rows"]["lcm"][n]["nfe"] for n in ("1", "2", "4", "8")] == [1, 2, 4, 8]
    with safe_open(str(out / "runs" / "seed0" / "lora_lcm.safetensors"), "pt") as f:
        assert f.metadata()["lcm.path"] == "flow"
    summary = json.loads(results.read_text())
    assert summary["proxy"] == "flow" and summary["data"]["teacher"] == "proxy/weights/flow_teacher, Euler 2 steps, CFG 3"
    assert load_base_model(tiny_flow_teacher, resolution=16).text_length == 16          # model_index.json declares it
    assert {"teacher Euler", "teacher DPM-Solver++", "teacher floor"} <= set(summary["teacher"])
    assert summary["variants"]["ray"] and summary["variants"]["lcm"]


def test_the_vp_family_samples_as_before_the_generalisation():
    """``rayflow_samples`` of the VP teacher through ``BaseModel.ray_sample`` equals the former inline
    ``sample_ray`` call (eps of the UNet, target mean z or the DDIM probe, eta noise from ETA_SEED)."""
    from proxy.recipe import SIGMA, TEACHER_CFG
    from proxy.sampling import ETA_SEED, noise_and_cond, probe_target_mean, rayflow_samples
    from rayflow import RayProcess, sample_ray

    if not os.path.isdir(TEACHER):
        pytest.skip("proxy/weights/teacher is absent")
    model = load_base_model(TEACHER)
    labels, seeds, process = all_labels()[:4], torch.arange(4) + 7, RayProcess(sigma=SIGMA)
    z, cond = noise_and_cond(model, labels, seeds)
    for mode, eta in (("noise", 0.0), ("noise", 1.0), ("probe2", 1.0)):
        mu = z if mode == "noise" else probe_target_mean(model, z, cond, 2, process, TEACHER_CFG)
        x0 = sample_ray(lambda x, t: model.unet(x, t, encoder_hidden_states=cond["cond"]).sample, z, mu, process,
                        model.schedule, model.schedule.ray_timesteps(2), eta=eta,
                        generator=torch.Generator().manual_seed(ETA_SEED))
        images, _ = rayflow_samples(model, model.unet, labels, seeds, 2, process, mode, eta)
        assert torch.equal(images, model.decode(x0)), (mode, eta)


def test_teacher_recovery_measures_a_flow_teacher_and_refuses_a_vp_one(tiny_flow_teacher):
    """``bench.teacher_recovery``: one row per noise level (attribute accuracies and RMSE to the real
    images); from a low level the image barely moves, from pure noise it is the teacher's own sample."""
    from bench.teacher_recovery import ATTRIBUTES, SIZES, recovery

    labels = all_labels()[[0, 1, 36, 37]]          # two small captions, two large
    assert labels[:, 0].tolist() == [0, 0, 1, 1]
    rows = recovery(load_base_model(tiny_flow_teacher, resolution=16), labels, [0.05, 1.0], steps=2)
    assert set(rows) == {"0.05", "1"} and all(set(r) == {*ATTRIBUTES, *(f"shape_{s}" for s in SIZES), "rmse"} for r in rows.values())
    for r in rows.values():      # 2 of the 4 captions are small, 2 large: shape is their mean
        assert abs(r["shape"] - (r["shape_small"] + r["shape_large"]) / 2) < 1e-6
    assert rows["0.05"]["rmse"] < 0.2 < rows["1"]["rmse"]
    with pytest.raises(SystemExit, match="flow-matching teachers"):
        recovery(load_base_model(TEACHER), all_labels()[:4], [0.5], steps=1)


def test_teacher_recovery_cli_takes_the_guidance_and_refuses_bad_values(capsys):
    from bench.teacher_recovery import parse_args
    from proxy.recipe import TEACHER_CFG

    assert parse_args([]).cfg == TEACHER_CFG and parse_args(["--cfg", "5", "--levels", "1"]).cfg == 5.0
    for bad in (["--cfg", "-1"], ["--levels", "0"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
        assert "--cfg at least 0" in capsys.readouterr().err
