"""bench/variants.py and bench/quality.py: variant recipes and redrawing the report from a saved results.json."""

import json
import os

import pytest

from bench.quality import main
from bench.variants import COMBINED, VARIANTS, process_of
from proxy.recipe import PHASE2, proxy_config


def options(variant):
    """The proxy recipe's options as the variant changes them."""
    return {**PHASE2, **VARIANTS[variant]}


def test_each_variant_changes_one_thing_of_the_recipe():
    assert VARIANTS["ray"] == {} and proxy_config("o.safetensors", "w", "p.txt").sigma == PHASE2["sigma"] == 0.1
    for name in set(VARIANTS) - set(COMBINED) - {"one_step"}:
        changed = {k for k, v in options(name).items() if PHASE2.get(k, None) != v}
        changed -= {"lora_alpha"} if "lora_rank" in changed else set()      # the LoRA's size: rank and alpha together
        changed -= {"anchor_taper"} if "start_anchor" in changed else set()  # the taper is a form of anchoring
        assert len(changed) <= 1, (name, changed)
    for name, parts in COMBINED.items():       # a combined variant is exactly the union of its parts
        assert VARIANTS[name] == {**VARIANTS[parts[0]], **VARIANTS[parts[1]]} != VARIANTS[parts[0]]
    assert options("rank64")["lora_rank"] == 64 and options("rank64_anchor0.5")["start_anchor"] == 0.5
    assert options("top50_taper_anchor0.5") == {**PHASE2, "start_anchor": 0.5, "anchor_taper": True, "top_share": 0.5}
    assert options("top75_taper_anchor0.5") == {**options("top50_taper_anchor0.5"), "top_share": 0.75}
    assert options("one_step") == options("top75_taper_anchor0.5")      # the CLI's --preset one-step
    assert options("one_step_no_ts") == {**options("one_step"), "no_time_sampler": True}
    assert process_of("no_ray").sigma == 1.0
    assert process_of("sigma0.3").sigma == 0.3 and process_of("linear").path == "linear"
    # the attention-only ablation drops exactly the convolutions of the default target set
    from training.config import LORA_TARGETS

    attn = set(options("attn_lora")["lora_targets"].split(","))
    assert attn < set(LORA_TARGETS) and all("conv" in t or "emb" in t for t in set(LORA_TARGETS) - attn)


def test_replot_rewrites_the_table_and_plots_from_results_json(tmp_path):
    cell = {"fd_proxy": 10.0, "alignment": 0.9, "diversity": 1.0, "nfe": 1}
    saved = {"results": {"teacher DDIM (reference)": {"25": {**cell, "fd_proxy": 120.0}},
                         "RayFlow ray [noise]": {str(n): {**cell, "fd_proxy": 100.0 / n, "nfe": n} for n in (1, 2, 4, 8)},
                         "curve ray @300": {str(n): cell for n in (1, 2, 4)}},
             "curves": {"ray": {"300": {"1": 50.0, "2": 20.0, "4": 10.0}}}}
    (tmp_path / "results.json").write_text(json.dumps(saved))
    assert main(["--replot", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text()
    assert "| RayFlow ray [noise] | 100.00 / 0.90 / 1 | 50.00 / 0.90 / 2 | 25.00 / 0.90 / 4 | 12.50 / 0.90 / 8 |" in table
    assert "| ray | 50.0 / 20.0 / 10.0 |" in table and "curve ray" not in table
    assert (tmp_path / "fd_vs_steps.png").stat().st_size > 0
    assert (tmp_path / "fd_vs_training_steps.png").stat().st_size > 0


def test_onestep_ceiling_trains_the_whole_unet_on_the_one_step_map(small_cache, tmp_path):
    import torch

    from bench.onestep_ceiling import main as ceiling, one_step_x0
    from proxy.data import caption_of
    from proxy.recipe import TEACHER
    from proxy.sampling import load_lora_unet, rayflow_samples
    from training.data import item_noise
    from training.models import load_base_model

    out, labels = small_cache
    # its one-step sample is the benchmark's one-step RayFlow sample (Algorithm 3), for any UNet
    model = load_base_model(TEACHER)
    unet = load_lora_unet(TEACHER, str(out / "ray.safetensors"))
    seeds = torch.arange(len(labels))
    imgs, nfe = rayflow_samples(model, unet, labels, seeds, 1, process_of("ray"), "noise")
    cond = model.encode_prompts([caption_of(l) for l in labels.tolist()], torch.device("cpu"))["cond"]
    with torch.no_grad():
        mine = model.decode(one_step_x0(unet, model, item_noise(0, seeds, (3, 16, 16)), cond))
    assert nfe == 1 and torch.allclose(mine, imgs, atol=1e-5)

    assert ceiling(["--cache", str(out / "w" / "cache"), "--out", str(tmp_path), "--steps", "3", "--eval-every", "2",
                    "--eval-per-caption", "1"]) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["step"] for r in saved["rows"]] == [2, 3] and saved["items"] == 12
    assert saved["parameters"] == sum(p.numel() for p in model.unet.parameters())     # every parameter trains
    for row in saved["rows"]:
        assert 0 <= row["alignment"] <= 1 and 0 <= row["train_alignment"] <= 1 and row["fd_proxy"] > 0
    # training moved the network: the two evaluations differ
    assert saved["rows"][0]["fd_proxy"] != saved["rows"][1]["fd_proxy"]
    # --lora-rank trains a LoRA instead, on the trainer's default targets
    assert ceiling(["--cache", str(out / "w" / "cache"), "--out", str(tmp_path / "lora"), "--steps", "1",
                    "--eval-per-caption", "1", "--lora-rank", "2"]) == 0
    lora = json.loads((tmp_path / "lora" / "results.json").read_text())
    assert 0 < lora["parameters"] < saved["parameters"] / 10 and len(lora["rows"]) == 1


def test_an_interrupted_variant_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import bench.variants
    from bench.variants import distil

    seen = []
    monkeypatch.setattr(bench.variants, "run", lambda cfg, progress=True: seen.append(cfg))
    distil("anchor0.5", str(tmp_path), "teacher", "prompts.txt", 100, 8, 0)
    (tmp_path / "work_anchor0.5" / "checkpoint").mkdir(parents=True)
    distil("anchor0.5", str(tmp_path), "teacher", "prompts.txt", 100, 8, 0)
    assert [c.resume for c in seen] == [False, True] and seen[0].checkpoint_every <= 200


def test_reevaluation_from_an_archived_lora_reproduces_its_metrics(small_cache, tmp_path, monkeypatch):
    """A job's archived LoRA evaluated again (``--reevaluate``: no training) gives the archived
    metrics exactly, on both sets, and a metric added later is merged into the record; where the
    job's snapshots are still under ``<out>/runs`` its training curve is computed again."""
    import argparse
    import shutil

    import dataclasses

    import bench.evaluation as evaluation
    from bench import jobs
    from bench.archive import archive_paths, archived_lora
    from proxy.recipe import VP
    from rayflow.atomic_write import write_json

    out, labels = small_cache
    monkeypatch.setattr(evaluation, "all_labels", lambda: labels)       # 3 captions
    monkeypatch.setattr(jobs, "STEPS", (1, 2))
    monkeypatch.setattr(jobs, "SNAPSHOT_EVERY", 1)
    ev = evaluation.Evaluation(str(tmp_path / "bench"), 2, 0, dataclasses.replace(VP, solver="ddim", steps=2))  # cheap references
    args = argparse.Namespace(out=str(tmp_path / "bench"), results=str(tmp_path / "docs" / "s.json"), archive=None,
                              seeds=[0], variants=["ray"], train_steps=2)
    record, _ = archive_paths(args, 0, "ray")
    os.makedirs(os.path.dirname(record))
    shutil.copyfile(out / "ray.safetensors", archived_lora(args, 0, "ray"))
    metrics = jobs.evaluate_lora(ev, "ray", archived_lora(args, 0, "ray"))
    assert set(metrics["rows"]) == {"ray", "ray [noise, eta 1]", "ray [probe1, eta 1]", "ray [probe2, eta 1]",
                                    "ray [probe4, eta 1]"} and set(metrics["heldout"]) == {"ray", "ray [noise, eta 1]"}
    assert metrics["rows"]["ray [probe1, eta 1]"]["1"]["nfe"] == 1 + 2
    assert metrics["rows"]["ray [probe4, eta 1]"]["2"]["nfe"] == 2 + 8
    del metrics["rows"]["ray"]["1"]["fd_indep"]                          # a metric the archive does not have yet
    old_curve = {"2": {n: metrics["rows"]["ray"][n] for n in ("1",)}}     # before 8 steps joined the curve
    write_json(record, {"variant": "ray", "train_seed": 0, "train_steps": 2, "distill_seconds": 1.0, **metrics,
                        "curve": old_curve})
    runs_copy = jobs.job_paths(args.out, 0, "ray")[1]                       # the job's own record under <out>/runs
    os.makedirs(os.path.dirname(runs_copy))
    shutil.copyfile(record, runs_copy)
    # the job's snapshot after training step 1 (here the final LoRA itself: its metrics are known)
    shutil.copyfile(out / "ray.safetensors", os.path.join(os.path.dirname(runs_copy), "lora_ray-step000001.safetensors"))
    [(seed, variant, change)] = jobs.reevaluate(args, ev)
    assert (seed, variant, change) == (0, "ray", 0.0)
    for path in (record, runs_copy):      # both: the next summary copies <out>/runs into the archive again
        with open(path) as f:
            new = json.load(f)
        assert "fd_indep" in new["rows"]["ray"]["1"]            # merged in
        assert set(new["curve"]) == {"1", "2"} and set(new["curve"]["1"]) == {"1", "2"}
        assert new["curve"]["1"]["2"]["fd_indep"] == new["rows"]["ray"]["2"]["fd_indep"]


def test_a_job_whose_lora_was_already_trained_records_the_time_its_log_accounts_for(tmp_path):
    from bench.jobs import logged_training_seconds

    log = tmp_path / "log.csv"
    log.write_text("step,loss,lr,t_mean,t_std,w_mean,w_max,samples_per_s\n"
                   "50,0.1,0.001,500,1,1,1,32\n100,0.1,0.001,500,1,1,1,16\n"
                   "100,0.1,0.001,500,1,1,1,64\n150,0.1,0.001,500,1,1,1,40\n")     # step 100 again after a resume
    assert logged_training_seconds(str(log), 32) == pytest.approx(50 * 32 / 32 + 50 * 32 / 64 + 50 * 32 / 40)
    assert logged_training_seconds(str(tmp_path / "none.csv"), 32) is None
