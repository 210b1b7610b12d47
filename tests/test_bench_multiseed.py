"""bench/stats.py and the multi-seed benchmark (bench/multiseed.py, jobs.py, archive.py, summary.py): intervals over training seeds, pairing, resumable jobs."""

import argparse
import json
import math
import os
import subprocess
import sys

import pytest

from bench import archive as job_archive
from bench import jobs, multiseed, summary
from bench.evaluation import STEPS
from rayflow.atomic_write import write_json
from bench.stats import mean_ci, paired_difference, t_quantile, verdict


def test_t_interval_of_known_samples():
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-5)       # table value
    assert t_quantile(0.975, 1000) == pytest.approx(1.962339, abs=1e-5)
    s = mean_ci([1.0, 2.0, 3.0])            # mean 2, s = 1: half width t_{.975,2} / sqrt(3)
    assert s["mean"] == 2.0 and s["n"] == 3
    assert s["ci95"] == pytest.approx([2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)], abs=1e-5)
    s = mean_ci([5.0, None, 7.0])           # a seed not measured yet: kept in per_seed, left out of the interval
    assert s["n"] == 2 and s["mean"] == 6.0 and s["per_seed"] == [5.0, None, 7.0]
    assert s["ci95"] == pytest.approx([6 - 12.706205, 6 + 12.706205], abs=1e-4)     # s = sqrt(2), n = 2
    assert mean_ci([4.0])["ci95"] is None and mean_ci([None, None])["mean"] is None


def test_pairing_cancels_what_the_seeds_share():
    seed_effect = [100.0, 40.0, 250.0, 10.0]          # a large per-seed offset both arms share
    a = [x + 1.0 for x in seed_effect]
    b = [x + 3.0 + 0.1 * k for k, x in enumerate(seed_effect)]
    unpaired = mean_ci(a)["ci95"][1] - mean_ci(a)["ci95"][0]
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(-2.15) and d["ci95"][1] - d["ci95"][0] < unpaired / 100
    assert verdict(d) == "better" and verdict(d, lower_is_better=False) == "worse"
    # only the seeds both arms have count
    d = paired_difference([1.0, None, 3.0], [0.0, 5.0, 1.0])
    assert d["n"] == 2 and d["per_seed"] == [1.0, None, 2.0]
    assert verdict(paired_difference([1.0, -1.0, 2.0], [0.0, 0.0, 0.0])) == "no difference shown"
    assert verdict(paired_difference([1.0], [0.0])) == "no difference shown"      # one seed decides nothing
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1.0, 2.0], [1.0])


def test_a_lock_held_by_a_live_process_is_respected_and_a_dead_ones_taken_over(tmp_path):
    lock = str(tmp_path / "runs" / "seed0" / "ray.lock")
    assert jobs.claim(lock) and open(lock).read() == str(os.getpid())
    assert not jobs.claim(lock)                      # ours, alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(lock, "w") as f:
        f.write(str(dead.pid))
    assert jobs.claim(lock) and open(lock).read() == str(os.getpid())


def _args(out, seeds, variants, steps=10):
    return argparse.Namespace(out=str(out), seeds=seeds, variants=variants, train_steps=steps, data_seed=0,
                              seeds_per_prompt=8, eval_per_caption=1, results=str(out / "summary.json"),
                              argv=["--seeds", *map(str, seeds)])


def _result(seed, variant, fd):
    rows = {variant: {str(n): {"fd": fd + n, "fd_data": 2 * fd, "rmse": 0.1, "alignment": 0.5, "diversity": 1.0,
                               "hf_ratio": 1.0, "nfe": n} for n in STEPS}}
    return {"variant": variant, "train_seed": seed, "train_steps": 10, "distill_seconds": 1.0, "rows": rows,
            "curve": {"5": {n: {"fd": fd + 50} for n in ("1", "2", "4")}, "10": {n: rows[variant][n] for n in ("1", "2", "4")}}}


def test_interrupted_runs_continue_with_the_jobs_not_done_and_summaries_pair_by_seed(tmp_path, monkeypatch):
    (tmp_path / "teacher.json").write_text(json.dumps({"teacher floor": {"25": {"fd": 1.0, "alignment": 1.0}}}))
    done = []

    def fake_job(args, ev, seed, variant):
        if (seed, variant) == (1, "no_ts"):
            raise KeyboardInterrupt           # the run is stopped in the middle of a job
        folder, result, _ = job_archive.job_paths(args.out, seed, variant)
        write_json(result, _result(seed, variant, {"ray": 10.0, "no_ts": 20.0}[variant] + seed))
        done.append((seed, variant))

    monkeypatch.setattr(jobs, "run_job", fake_job)
    args = _args(tmp_path, [0, 1, 2], ["ray", "no_ts"])
    with pytest.raises(KeyboardInterrupt):
        jobs.work(args, None, multiseed.summarise)
    assert done == [(0, "ray"), (0, "no_ts"), (1, "ray")]
    assert not os.path.exists(tmp_path / "runs" / "seed1" / "no_ts.lock")      # the interrupted job's lock is freed
    partial = json.loads((tmp_path / "summary.json").read_text())            # written after every job
    assert partial["train_seeds"] == [0, 1] and partial["variants"]["no_ts"]["fd"]["2"]["per_seed"] == [22.0, None]
    monkeypatch.setattr(jobs, "run_job", lambda *a: _finish(*a, done))
    jobs.work(args, None, multiseed.summarise)
    assert done[3:] == [(1, "no_ts"), (2, "ray"), (2, "no_ts")]            # nothing done twice
    data = json.loads((tmp_path / "summary.json").read_text())
    fd2 = data["variants"]["no_ts"]["fd"]["2"]
    assert data["train_seeds"] == [0, 1, 2] and fd2["per_seed"] == [22.0, 23.0, 24.0] and fd2["mean"] == 23.0
    diff = data["variants"]["no_ts"]["paired_vs_ray"]["fd"]["2"]
    assert diff["per_seed"] == [10.0, 10.0, 10.0] and diff["verdict"] == "worse"
    assert data["variants"]["ray"]["paired_vs_no_ts"]["fd"]["4"]["verdict"] == "better"
    # a summary of another invocation on the same --out (other variants listed) still holds every finished job
    other = multiseed.summarise(_args(tmp_path, [0, 1, 2], ["no_ts"]))
    assert set(other["variants"]) == {"ray", "no_ts"} and list(other["variants"])[0] == "no_ts"
    # ray's FD at the step-5 snapshot (60 + seed) is above no_ts's final one (22 + seed): reached only at the end
    assert data["fraction_of_budget_to_reach_uniform_final_fd"]["ray"]["2"]["per_seed"] == [1.0, 1.0, 1.0]
    assert "| RayFlow no_ts |" in (tmp_path / "summary.md").read_text()


def _finish(args, ev, seed, variant, done):
    folder, result, _ = job_archive.job_paths(args.out, seed, variant)
    write_json(result, _result(seed, variant, {"ray": 10.0, "no_ts": 20.0}[variant] + seed))
    done.append((seed, variant))


def test_steps_to_reach():
    curve = {"300": {"2": 90.0}, "600": {"2": 60.0}, "1200": {"2": 50.0}}
    assert summary.steps_to_reach(curve, 60.0, "2") == 600
    assert summary.steps_to_reach(curve, 10.0, "2") is None


def test_time_sampler_records_are_gathered_per_seed_with_the_last_record_of_a_step(tmp_path):
    for seed in (0, 2):
        work = tmp_path / "runs" / f"seed{seed}" / "work_ray"
        work.mkdir(parents=True)
        records = [{"step": 5, "t_hist": [1.0, 3.0], "profile": [0.0, 1.0], "density": [0.5, 0.5]},
                   {"step": 5, "t_hist": [2.0, 2.0], "profile": [0.0, 2.0], "density": [0.25, 0.75]},   # resumed: repeats step 5
                   {"step": 10, "t_hist": [0.0, 4.0 + seed], "profile": [1.0, 1.0], "density": [0.1, 0.9]}]
        (work / "time_sampler.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    diag = summary.time_sampler_diagnostics(_args(tmp_path, [0, 1, 2], ["ray"]), [0, 1, 2])
    assert set(diag) == {"ray"} and set(diag["ray"]) == {"5", "10"}
    assert diag["ray"]["5"]["t_hist"] == {"0": [0.5, 0.5], "2": [0.5, 0.5]}        # shares, the later record
    assert diag["ray"]["5"]["density"]["2"] == [0.25, 0.75] and diag["ray"]["10"]["profile"]["0"] == [1.0, 1.0]
    assert diag["ray"]["10"]["t_hist"]["2"] == [0.0, 1.0]


def test_the_one_step_recipe_pairs_with_lcm_and_the_report_redraws_from_the_json_alone(tmp_path):
    (tmp_path / "teacher.json").write_text(json.dumps({"teacher floor": {"25": {"fd": 1.0, "alignment": 1.0}}}))
    for seed in (0, 1, 2):
        for variant, fd in (("one_step", 10.0), ("lcm", 30.0), ("one_step_no_ts", 12.0)):
            folder, result, _ = job_archive.job_paths(str(tmp_path), seed, variant)
            os.makedirs(folder, exist_ok=True)
            write_json(result, _result(seed, variant, fd + seed * seed))
    args = _args(tmp_path, [0, 1, 2], ["one_step", "lcm", "one_step_no_ts"])
    data = multiseed.summarise(args)
    diff = data["variants"]["one_step"]["paired_vs_lcm"]["fd"]["1"]
    assert diff["per_seed"] == [-20.0, -20.0, -20.0] and diff["verdict"] == "better"
    uniform = data["variants"]["one_step"]["paired_vs_one_step_no_ts"]["fd"]["1"]
    assert uniform["per_seed"] == [-2.0, -2.0, -2.0] and uniform["verdict"] == "better"
    assert "paired_vs_lcm" not in data["variants"]["lcm"] and "paired_vs_ray" not in data["variants"]["one_step"]
    report = (tmp_path / "summary.md").read_text()
    assert "Paired difference to `lcm`" in report and "Paired difference to `ray`" not in report
    assert "Paired difference to `one_step_no_ts`" in report
    (tmp_path / "summary.md").unlink()
    import shutil

    shutil.rmtree(tmp_path / "runs")            # the raw runs are gone: --replot needs only the summary JSON
    args.replot = True
    assert multiseed.main(args) == 0 and (tmp_path / "summary.md").read_text() == report
    assert json.loads((tmp_path / "summary.json").read_text()) == data


def test_the_archive_keeps_finished_jobs_so_a_fresh_out_continues_and_a_summary_restores_it(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "teacher.json").write_text(json.dumps({"teacher floor": {"25": {"fd": 1.0, "alignment": 1.0}}}))
    done = []
    monkeypatch.setattr(jobs, "run_job", lambda *a: _finish(*a, done))
    args = _args(out, [0, 1], ["ray", "no_ts"])
    args.results = str(tmp_path / "docs" / "summary.json")
    os.makedirs(tmp_path / "docs")
    work = out / "runs" / "seed1" / "work_ray"
    work.mkdir(parents=True)
    (work / "time_sampler.jsonl").write_text(json.dumps({"step": 5, "t_hist": [1.0, 3.0], "profile": [0.0, 1.0],
                                                         "density": [0.5, 0.5]}) + "\n")
    jobs.work(args, None, multiseed.summarise)
    first = json.loads((tmp_path / "docs" / "summary.json").read_text())
    archive = tmp_path / "docs" / "summary_runs"
    assert sorted(p.name for p in (archive / "seed1").iterdir()) == ["no_ts.json", "ray.json", "ray.time_sampler.jsonl"]
    import shutil

    shutil.rmtree(out / "runs")             # a fresh machine: only the committed summary and archive
    fresh = _args(out, [0, 1, 2], ["ray", "no_ts"])
    fresh.results = args.results
    jobs.work(fresh, None, multiseed.summarise)
    assert done[4:] == [(2, "ray"), (2, "no_ts")]               # the archived seeds are not trained again
    grown = json.loads((tmp_path / "docs" / "summary.json").read_text())
    assert grown["variants"]["no_ts"]["fd"]["2"]["per_seed"] == [22.0, 23.0, 24.0]
    assert grown["time_sampler_diagnostics"]["ray"]["5"]["t_hist"] == {"1": [0.25, 0.75]}
    # an archive written back from the summary alone rebuilds the same summary
    restored = tmp_path / "restored"
    written = job_archive.restore_archive(first, str(restored))
    assert len(written) == 5 and json.loads((restored / "seed0" / "ray.json").read_text())["restored_from_summary"]
    shutil.rmtree(out / "runs")
    again = _args(out, [0, 1], ["ray", "no_ts"])
    again.results, again.archive = str(tmp_path / "again.json"), str(restored)
    rebuilt = multiseed.summarise(again)
    for key in ("train_seeds", "variants", "curves", "convergence_2step_last_quarter",
                "fraction_of_budget_to_reach_uniform_final_fd", "time_sampler_diagnostics", "distill_seconds"):
        assert rebuilt[key] == first[key], key


def test_holm_adjustment_of_known_p_values():
    from bench.stats import holm, holm_verdict, paired_p_value

    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> made monotone: 0.06
    adjusted = holm([0.01, 0.04, 0.03, None, 0.005])
    assert adjusted[3] is None
    assert [adjusted[i] for i in (0, 1, 2, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    # a paired t-test: differences 1, 2, 3 -> t = 2 / (1 / sqrt 3), 2 dof
    from scipy.stats import t as t_dist

    p = paired_p_value(paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]))
    assert p == pytest.approx(2 * t_dist.sf(2 * math.sqrt(3), 2))
    assert paired_p_value(paired_difference([1.0], [0.0])) is None
    assert holm_verdict(-3.0, 0.01) == "better" and holm_verdict(3.0, 0.01) == "worse"
    assert holm_verdict(-3.0, 0.2) == "no difference shown"
    assert holm_verdict(0.2, 0.01, lower_is_better=False) == "better"


def test_the_headline_family_is_judged_after_holm(tmp_path):
    from bench.summary import headline

    # ray beats a by 5 in every seed (p tiny), b by a noisy 1 (p large): 2 baselines x 4 steps = 8 comparisons
    per = {"ray": {"fd_indep": {str(n): [10.0, 11.0, 12.0, 13.0] for n in STEPS}},
           "a": {"fd_indep": {str(n): [15.0, 16.1, 16.9, 18.0] for n in STEPS}},
           "b": {"fd_indep": {str(n): [12.0, 10.0, 14.0, 13.5] for n in STEPS}}}
    fam = headline(per, "ray:a,b")
    assert fam["family_size"] == 8 and fam["arm"] == "ray"
    by = {(c["baseline"], c["steps"]): c for c in fam["comparisons"]}
    assert all(by[("a", n)]["verdict"] == "better" for n in STEPS)
    assert all(by[("b", n)]["verdict"] == "no difference shown" for n in STEPS)
    assert all(c["p_holm"] >= c["p"] for c in fam["comparisons"])
    assert headline(per, None) is None


def test_learning_rates_are_chosen_on_the_held_out_set():
    from bench.summary import lr_selection

    low, high = [10.0, 12.0, 11.0, None], [20.0, 22.0, 21.0, 99.0]
    heldout = {"lcm": {"fd_indep": {str(n): high for n in STEPS}},
               "lcm_lr3e-4": {"fd_indep": {str(n): low for n in STEPS}},
               "ray": {"fd_indep": {str(n): low for n in STEPS}}}
    sel = lr_selection(heldout, [0, 1, 2, 3])
    assert sel["lcm"]["chosen"] == "lcm_lr3e-4" and sel["lcm"]["seeds"] == [0, 1, 2]     # the seeds both have
    assert sel["lcm"]["score"] == {"lcm": 21.0, "lcm_lr3e-4": 11.0}
    assert "ray" not in sel                               # one setting: nothing to choose


def test_eta_is_chosen_on_the_held_out_set_between_equal_cost_rows():
    from bench.summary import eta_selection

    heldout = {"ray": {"fd_indep": {str(n): [70.0, 72.0] for n in STEPS}},
               "ray [noise, eta 1]": {"fd_indep": {str(n): [50.0, 52.0] for n in STEPS}},
               "ray [probe4, eta 1]": {"fd_indep": {str(n): [20.0, 20.0] for n in STEPS}},      # costs more: not a candidate
               "no_ray": {"fd_indep": {str(n): [30.0, 30.0] for n in STEPS}},
               "no_ray [noise, eta 1]": {"fd_indep": {str(n): [900.0, 950.0] for n in STEPS}}}
    sel = eta_selection(heldout, [0, 1])
    assert sel["ray"]["chosen"] == "ray [noise, eta 1]" and sel["ray"]["score"] == {"ray": 71.0, "ray [noise, eta 1]": 51.0}
    assert sel["no_ray"]["chosen"] == "no_ray" and sel["no_ray"]["setting"] == "eta"
    assert set(sel) == {"ray", "no_ray"}


def test_the_headline_compares_each_arm_at_its_held_out_choices():
    from bench.summary import chosen_rows, headline

    lr_sel = {"lcm": {"chosen": "lcm_lr3e-4"}, "ray": {"chosen": "ray"}}
    eta_sel = {"ray": {"chosen": "ray [noise, eta 1]"}, "no_ray": {"chosen": "no_ray"}}
    chosen = chosen_rows(lr_sel, eta_sel)
    assert chosen["ray"] == "ray [noise, eta 1]" and chosen["lcm"] == "lcm_lr3e-4" and chosen["no_ray"] == "no_ray"
    per = {"ray": {"fd_indep": {str(n): [70.0, 71.0, 72.0] for n in STEPS}},
           "ray [noise, eta 1]": {"fd_indep": {str(n): [20.0, 21.0, 22.5] for n in STEPS}},
           "lcm": {"fd_indep": {str(n): [10.0, 10.0, 10.0] for n in STEPS}},
           "lcm_lr3e-4": {"fd_indep": {str(n): [40.0, 41.0, 41.5] for n in STEPS}}}
    fam = headline(per, "ray:lcm", chosen)
    assert fam["arm_row"] == "ray [noise, eta 1]" and {c["baseline_row"] for c in fam["comparisons"]} == {"lcm_lr3e-4"}
    assert all(c["mean"] < -15 for c in fam["comparisons"])      # eta 1 against the tuned LCM, not eta 0 against lcm


def test_a_setting_with_fewer_seeds_than_the_others_is_not_chosen_yet():
    """A sweep still running: one seed of lcm_lr3e-5 against three of lcm chooses nothing; with three it joins."""
    from bench.summary import lr_selection

    heldout = {"lcm": {"fd_indep": {str(n): [30.0, 31.0, 32.0] for n in STEPS}},
               "lcm_lr3e-5": {"fd_indep": {str(n): [5.0, None, None] for n in STEPS}}}
    assert "lcm" not in lr_selection(heldout, [0, 1, 2])
    heldout["lcm_lr3e-5"]["fd_indep"] = {str(n): [5.0, 6.0, 7.0] for n in STEPS}
    assert lr_selection(heldout, [0, 1, 2])["lcm"]["chosen"] == "lcm_lr3e-5"
    # a third setting with one seed stays out, and does not shrink the others' common seeds
    heldout["lcm_lr1e-5"] = {"fd_indep": {str(n): [1.0, None, None] for n in STEPS}}
    sel = lr_selection(heldout, [0, 1, 2])
    assert sel["lcm"]["seeds"] == [0, 1, 2] and set(sel["lcm"]["score"]) == {"lcm", "lcm_lr3e-5"}
