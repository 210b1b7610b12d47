"""scripts/gpu_rerun.sh (issue 37's whole rerun on one GPU) and the device a benchmark job runs on
(bench/device.py): the plan the script runs (``--dry-run``: every stage's command, parsed by
``bench.quality``'s own parser), the full and the tiny one, and the tiny setting end to end on this
machine's device, whose records name it."""

import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan(tmp_path, *flags, env=None):
    """``[(stage name, parsed bench.quality arguments)]`` of ``gpu_rerun.sh --dry-run``."""
    from bench.quality import parser

    run = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_rerun.sh"), "--dry-run", *flags],
                         env={**os.environ, "PYTHON": sys.executable, "GPU_RERUN_TINY_DIR": str(tmp_path), **(env or {})},
                         capture_output=True, text=True, check=True)
    stages = re.findall(r"^== \S+ stage (\S+): python -m bench.quality (.*)$", run.stdout, re.M)
    return [(name, parser().parse_args(shlex.split(args))) for name, args in stages]


SWEEP = ("ray,anchor0.5,no_ray,lcm,ray_lr3e-4,anchor0.5_lr3e-4,no_ray_lr3e-4,lcm_lr1e-5,lcm_lr3e-5,lcm_lr3e-4,lcm_lr1e-3,"
         "lcm_huber,lcm_huber_lr3e-4,lcm_huber_lr1e-3")


def test_the_plan_runs_the_sweep_the_headline_and_the_one_step_preset_in_order(tmp_path):
    from bench.variants import ALL_VARIANTS, LR_SWEEP

    plan = _plan(tmp_path)
    flow = os.path.isfile(os.path.join(ROOT, "proxy", "weights", "flow_teacher", "model_index.json"))
    assert [name for name, _ in plan] == ["a-sweep", "b-headline", "c-lcm-ema", "c2-diagnosis", "d-one-step"] + \
        ["e-flow", "e2-flow-lcm"] * flow
    (_, a), (_, b), (_, c), (_, c2), (_, d) = plan[:5]
    if flow:          # the flow proxy's verdict: its own summary, the VP arms, then its LCM-LoRA's sweep
        e = plan[5][1]
        assert (e.proxy, e.seeds, e.variants, e.train_steps) == ("flow", [0, 1, 2], "ray,anchor0.5,no_ray,no_ts", 2400)
        e2 = plan[6][1]           # its consistency baseline, swept as the VP one over both losses and three rates
        assert (e2.proxy, e2.seeds, e2.train_steps) == ("flow", [0, 1, 2], 2400)
        assert set(e2.variants.split(",")) == {"lcm", "lcm_lr3e-4", "lcm_lr1e-3", "lcm_huber", "lcm_huber_lr3e-4",
                                               "lcm_huber_lr1e-3"}
        for x in (e, e2):
            assert x.results == "docs/results/quality_flow_2400.json" and x.holm_family == "anchor0.5:ray,no_ray,lcm"
    # the sweep holds every candidate setting of every arm, ray first (the others train on its phase-1 cache)
    assert a.seeds == [0, 1, 2] and a.variants == SWEEP and a.train_steps == 2400
    assert set(a.variants.split(",")) == {v for settings in LR_SWEEP.values() for v in settings}
    assert b.seeds == [0, 1, 2, 3, 4] and b.variants.split(",")[-1] == "no_ts" and b.variants.startswith("ray")
    assert c.seeds == [0, 1, 2] and c.variants == "lcm_ema" and c2.variants == "sigma0.03,rank64" and c2.seeds == [0, 1, 2]
    for args in (a, b, c, c2):        # one summary, one headline family
        assert (args.out, args.results) == ("outputs/quality_fair_2400", "docs/results/quality_fair_2400.json")
        assert args.holm_family == "anchor0.5:ray,no_ray,lcm" and args.seeds_per_prompt == 8 and args.captions == 72
    assert d.seeds == [0, 1, 2, 3] and d.train_steps == 7200 and d.seeds_per_prompt == 64
    assert d.results == "docs/results/quality_onestep_fair_7200.json"
    for _, args in plan:
        assert args.workers == 8 and args.device == "auto" and not args.no_compile
        assert set(args.variants.split(",")) <= set(ALL_VARIANTS)


def test_the_tiny_plan_shrinks_every_stage_and_the_headline_takes_the_settings_the_sweep_chose(tmp_path):
    results = tmp_path / "results" / "quality_fair_2400.json"
    results.parent.mkdir()
    results.write_text(json.dumps({"lr_selection": {"lcm": {"chosen": "lcm_huber_lr3e-4"},
                                                    "no_ray": {"chosen": "no_ray_lr3e-4"}}}))
    plan = dict(_plan(tmp_path, "--tiny", "--workers", "1", "--device", "cpu"))
    flow = os.path.isfile(os.path.join(ROOT, "proxy", "weights", "flow_teacher", "model_index.json"))
    assert len(plan) == 5 + 2 * flow
    if flow:          # the tiny flow LCM stage: both losses, enough to check it
        assert plan["e2-flow-lcm"].variants == "lcm,lcm_huber"
    for args in plan.values():
        assert args.out.startswith(str(tmp_path)) and args.results.startswith(str(tmp_path))
        assert args.seeds == [0] and args.train_steps <= 3 and args.captions == 3 and args.eval_per_caption == 2
        assert args.workers == 1 and args.device == "cpu" and args.no_compile
    assert plan["b-headline"].variants == "ray,no_ray_lr3e-4,anchor0.5,lcm_huber_lr3e-4,no_ts"
    assert plan["d-one-step"].variants == "one_step,lcm_huber_lr3e-4"
    assert plan["d-one-step"].holm_family == "one_step:lcm_huber_lr3e-4"


def test_the_device_is_chosen_once_and_named(monkeypatch):
    from bench.device import choose, device_info, worker_threads

    monkeypatch.setenv("ACCELERATE_USE_CPU", "")       # choose("cpu") sets it beside a GPU: undone after the test
    cpu = torch.device("cpu")
    assert choose("cpu") == cpu and worker_threads(cpu, 8) == 1        # CPU workers: one thread each, as before
    assert device_info(cpu).startswith("CPU ")
    if not torch.cuda.is_available():
        assert choose("auto") == cpu
        with pytest.raises(SystemExit, match="no CUDA device"):
            choose("cuda")
    else:
        assert choose("auto").type == "cuda" and "CUDA" in device_info(torch.device("cuda"))
        assert worker_threads(torch.device("cuda"), 2) == max(1, (os.cpu_count() or 1) // 2)


@pytest.mark.slow
def test_the_tiny_rerun_runs_every_stage_end_to_end_and_every_record_names_its_device(tmp_path):
    """``gpu_rerun.sh --tiny`` through ``device_rerun.sh`` (what a lent GPU runs) on this machine's device
    (the CPU here; about 4 minutes on a busy 2-core CPU): both summaries are written, stage d trains the
    LCM the sweep chose, every job's record names the device it ran on and its eager step, and the
    results come back packed in ``$OUT``."""
    from bench.device import choose, device_info
    from bench.variants import EAGER_STEP

    env = {**os.environ, "PYTHON": sys.executable, "GPU_RERUN_TINY_DIR": str(tmp_path), "OUT": str(tmp_path / "out")}
    run = subprocess.run(["bash", os.path.join(ROOT, "scripts", "device_rerun.sh"), "850", "--tiny", "--workers", "1"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    flow = os.path.isfile(os.path.join(ROOT, "proxy", "weights", "flow_teacher", "model_index.json"))
    assert len(re.findall(r"^== stage \S+ done in \d+ s", run.stdout, re.M)) == 5 + 2 * flow     # per-stage timings
    with open(tmp_path / "results" / "quality_fair_2400.json") as f:
        fair = json.load(f)
    assert set(fair["variants"]) >= {*SWEEP.split(","), "no_ts", "lcm_ema", "sigma0.03", "rank64"}
    chosen = fair["lr_selection"]["lcm"]["chosen"]
    with open(tmp_path / "results" / "quality_onestep_fair_7200.json") as f:
        onestep = json.load(f)
    assert set(onestep["variants"]) >= {"one_step", chosen} and onestep["data"]["captions"] == 3
    device = device_info(choose("auto")).split(",")[0]           # the thread count may differ in the job
    records = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) if d.endswith(os.path.join("runs", "seed0"))
               for f in files if f.endswith(".json")]
    # <out>/runs and the archive: 18 jobs of the fair run (diagnosis arms included), 2 of the one-step, 4 + 2 of the flow proxy's
    assert len(records) == 2 * (18 + 2 + 6 * flow)
    for path in records:
        with open(path) as f:
            record = json.load(f)
        assert record["device"].split(",")[0] == device and record["proxy_step"] == EAGER_STEP
    assert [d.split(",")[0] for d in fair["devices"]] == [device]
    parts = sorted((tmp_path / "out").glob("results.tgz.*"))              # what the device tool brings back
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("results/quality_fair_2400.json") for n in names)
    assert any(n.endswith("quality_onestep_fair_7200_runs/seed0/one_step.json") for n in names)
