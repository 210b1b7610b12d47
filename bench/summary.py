"""The multi-seed summary: per-variant means and 95 % CIs over training seeds, paired differences
to the baselines, training curves and the Time Sampler's records (``docs/results/quality_*.json``)."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from proxy.recipe import VP

from .archive import archive_paths
from .evaluation import HEADLINE, LOWER_IS_BETTER, METRICS, STEPS, mode_name
from .stats import holm, holm_verdict, mean_ci, paired_difference, paired_p_value, verdict
from .variants import LR_SWEEP

# the arms paired against uniform timesteps (the Time Sampler's own comparison)
TS_ARMS = ("ray", "ts_grad", "ts_mix50", "ts_warmup", "ts_biased", "ts_static")
# every baseline besides ray that some rows are paired against: uniform timesteps for the Time Sampler arms,
# LCM-LoRA and the same recipe with uniform timesteps for the one-step recipe (its claim: ahead of LCM at 1 step,
# same data, budget and seeds)
PAIRED_BASELINES = {"no_ts": TS_ARMS, "lcm": ("one_step",), "one_step_no_ts": ("one_step",)}


def paired_block(values: Dict[str, Dict[str, List]], base: Dict[str, Dict[str, List]]) -> Dict:
    """Paired difference and verdict per metric and step count of one row against another."""
    return {m: {n: {**paired_difference(v, base[m][n]), "verdict": verdict(paired_difference(v, base[m][n]), LOWER_IS_BETTER[m])}
                for n, v in by_steps.items() if n in base.get(m, {})}
            for m, by_steps in values.items() if m in LOWER_IS_BETTER}


def steps_to_reach(curve: Dict[str, Dict[str, float]], target: float, n: str) -> Optional[int]:
    """The first training step whose ``n``-step FD is at most ``target`` (None: never)."""
    for k in sorted(curve, key=int):
        if n in curve[k] and curve[k][n] <= target:
            return int(k)
    return None


def per_seed_values(runs: Dict[tuple, Dict], seeds: List[int], key: str = "rows") -> Dict[str, Dict[str, Dict[str, List]]]:
    """``{row: {metric: {steps: per-seed values}}}`` of the jobs' ``key`` section (``rows``: the
    evaluation set, ``heldout``: the held-out set); a metric a job did not measure is ``None``."""
    per: Dict[str, Dict[str, Dict[str, List]]] = {}
    for (seed, _), run in runs.items():
        for row, cells in run.get(key, {}).items():
            for n, cell in cells.items():
                for m in METRICS:
                    if m in cell:
                        per.setdefault(row, {}).setdefault(m, {}).setdefault(n, [None] * len(seeds))[seeds.index(seed)] = cell[m]
    return per


SELECTION_SEEDS = 3        # the training seeds a setting needs before it is chosen (issue 37: >= 3)


def heldout_selection(heldout: Dict[str, Dict[str, Dict[str, List]]], seeds: List[int],
                      candidates: Dict[str, tuple], what: str) -> Dict:
    """For each arm of ``candidates`` (arm -> its candidate rows: one per setting of ``what``) with two
    or more rows measured on the held-out set on enough training seeds (``SELECTION_SEEDS``, or as
    many as the best-covered row has where that is fewer): each row's score (the headline metric at
    1, 2, 4 and 8 steps, averaged over the step counts and over the training seeds every such row
    has) and the chosen one, the lowest."""
    def measured(v: str) -> List[int]:       # the seed indices row v has at every step count
        return [i for i in range(len(seeds)) if all(
            heldout[v][HEADLINE].get(str(n), [None] * len(seeds))[i] is not None for n in STEPS)]

    out = {}
    for arm, settings in candidates.items():
        coverage = {v: measured(v) for v in settings if HEADLINE in heldout.get(v, {})}
        # a setting joins once it has as many seeds as the best-covered one, up to SELECTION_SEEDS: a sweep
        # that is still running chooses nothing from one seed against three
        need = min(SELECTION_SEEDS, max((len(m) for m in coverage.values()), default=0))
        present = [v for v, m in coverage.items() if len(m) >= need]
        if len(present) < 2:
            continue
        common = [i for i in range(len(seeds)) if all(i in coverage[v] for v in present)]
        if not common:
            continue
        score = {v: sum(heldout[v][HEADLINE][str(n)][i] for n in STEPS for i in common) / (len(STEPS) * len(common))
                 for v in present}
        out[arm] = {"metric": f"{HEADLINE} on the held-out set, mean over 1/2/4/8 steps and seeds", "setting": what,
                    "seeds": [seeds[i] for i in common], "score": score, "chosen": min(score, key=score.get)}
    return out


def lr_selection(heldout: Dict[str, Dict[str, Dict[str, List]]], seeds: List[int]) -> Dict:
    """The learning rate of each arm of ``LR_SWEEP`` (and LCM's loss), chosen on the held-out set
    (:func:`heldout_selection`)."""
    return heldout_selection(heldout, seeds, LR_SWEEP, "learning rate (LCM: and loss)")


def eta_selection(heldout: Dict[str, Dict[str, Dict[str, List]]], seeds: List[int]) -> Dict:
    """The sampler's eta (0 or 1, target mean from the noise: equal cost) of every Ray-sampled arm,
    chosen on the held-out set (:func:`heldout_selection`)."""
    arms = {row: (row, mode_name(row, "noise", 1.0)) for row in heldout if "[" not in row}
    return heldout_selection(heldout, seeds, arms, "eta")


def chosen_rows(lr_sel: Dict, eta_sel: Dict) -> Dict[str, str]:
    """Each arm's row as chosen on the held-out set: its learning rate (``lr_sel``), then that
    setting's eta (``eta_sel``); an arm with nothing chosen is its own row."""
    out = {}
    for arm in set(LR_SWEEP) | set(eta_sel):
        variant = lr_sel.get(arm, {}).get("chosen", arm)
        out[arm] = eta_sel.get(variant, {}).get("chosen", variant)
    return out


def headline(per: Dict[str, Dict[str, Dict[str, List]]], family: Optional[str],
             chosen: Optional[Dict[str, str]] = None) -> Optional[Dict]:
    """The headline family ``ARM:BASE1,BASE2,...``: ``ARM - BASE`` on the headline metric at 1, 2, 4
    and 8 steps for every baseline, paired over seeds, with Holm-adjusted paired t-tests over the
    whole family (the verdict holds where the adjusted p-value is below 0.05). Each name stands for
    its row in ``chosen`` (the settings chosen on the held-out set, :func:`chosen_rows`) where it has one."""
    if not family:
        return None
    chosen = chosen or {}
    arm, _, bases = family.partition(":")
    rows = []
    for base in [b for b in bases.split(",") if b]:
        for n in STEPS:
            a, b = (per.get(chosen.get(v, v), {}).get(HEADLINE, {}).get(str(n)) for v in (arm, base))
            if a is None or b is None:
                continue
            diff = paired_difference(a, b)
            rows.append({"baseline": base, "baseline_row": chosen.get(base, base), "steps": n, "mean": diff["mean"],
                         "ci95": diff["ci95"], "n": diff["n"], "per_seed": diff["per_seed"], "p": paired_p_value(diff)})
    for row, p_holm in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = p_holm
        row["verdict"] = holm_verdict(row["mean"], p_holm, LOWER_IS_BETTER[HEADLINE])
    return {"metric": HEADLINE, "arm": arm, "arm_row": chosen.get(arm, arm), "family_size": len(rows), "comparisons": rows}


def summary(args, runs: Dict[tuple, Dict], teacher: Dict) -> Dict:
    """The machine-readable result (``docs/results/quality_multiseed.json``) of the proxy family
    ``args.recipe`` (default: the VP one)."""
    recipe, captions = getattr(args, "recipe", VP), getattr(args, "captions", 72)
    seeds = sorted({s for s, _ in runs})
    order = list(args.variants) + sorted({v for _, v in runs} - set(args.variants))
    runs = dict(sorted(runs.items(), key=lambda kv: (order.index(kv[0][1]), kv[0][0])))
    per = per_seed_values(runs, seeds)
    heldout = per_seed_values(runs, seeds, "heldout")
    variants = {}
    for row, metrics in per.items():
        variants[row] = {m: {n: mean_ci(v) for n, v in by_steps.items()} for m, by_steps in metrics.items()}
        if row != "ray" and "ray" in per:
            variants[row]["paired_vs_ray"] = paired_block(metrics, per["ray"])
        for base, arms in PAIRED_BASELINES.items():
            if row in arms and base in per:
                variants[row][f"paired_vs_{base}"] = paired_block(metrics, per[base])
    curves, curves_indep = {}, {}
    for (seed, variant), run in runs.items():
        for k, cells in run.get("curve", {}).items():
            for n, cell in cells.items():
                for metric, into in (("fd", curves), (HEADLINE, curves_indep)):
                    if metric in cell:
                        into.setdefault(variant, {}).setdefault(k, {}).setdefault(n, [None] * len(seeds))[seeds.index(seed)] = cell[metric]
    curve_stats = {v: {k: {n: mean_ci(vals) for n, vals in by_n.items()} for k, by_n in ks.items()}
                   for v, ks in curves.items()}
    convergence = {}
    for v, ks in curves.items():       # the relative move of the 2-step FD over the last quarter of training
        last, q = str(args.train_steps), str(args.train_steps * 3 // 4)
        if last in ks and q in ks:
            convergence[v] = mean_ci([None if a is None or b is None else (a - b) / b
                                      for a, b in zip(ks[last]["2"], ks[q]["2"])])
    reach = {}      # training steps (fraction of the budget) to reach uniform's final FD, same seed
    per_seed_curves: Dict[str, Dict[int, Dict]] = {}
    for (seed, variant), run in runs.items():
        if run.get("curve"):
            per_seed_curves.setdefault(variant, {})[seed] = run["curve"]
    if "no_ts" in per_seed_curves:
        for v, by_seed in per_seed_curves.items():
            if v == "no_ts":
                continue
            reach[v] = {}
            for n in ("2", "4"):
                frac = [None] * len(seeds)
                for seed, curve in by_seed.items():
                    base = per_seed_curves["no_ts"].get(seed, {}).get(str(args.train_steps), {}).get(n)
                    if base is not None:
                        k = steps_to_reach({a: {m: c["fd"] for m, c in cells.items()} for a, cells in curve.items()}, base["fd"], n)
                        frac[seeds.index(seed)] = 1.0 if k is None else k / args.train_steps   # never: counted as the whole budget
                reach[v][n] = mean_ci(frac)
    out = {"command": "python -m bench.quality " + " ".join(args.argv), "train_seeds": seeds,
            "train_steps": args.train_steps, "metric": f"fd = FD-proxy to the teacher's samples ({recipe.target()}, "
            f"CFG {recipe.cfg:g}) from the same noise; fd_data = FD-proxy to real images",
            "data": {"data_seed": args.data_seed, "captions": captions, "seeds_per_prompt": args.seeds_per_prompt,
                     "trajectories": captions * args.seeds_per_prompt, "eval_images": captions * args.eval_per_caption,
                     "teacher": recipe.describe()},
            "distill_seconds": {f"{v} seed {s}": r["distill_seconds"] for (s, v), r in runs.items()},
            "teacher": teacher, "variants": variants, "curves": curve_stats, "convergence_2step_last_quarter": convergence,
            "fraction_of_budget_to_reach_uniform_final_fd": reach,
            "time_sampler_diagnostics": time_sampler_diagnostics(args, seeds)}
    if heldout or curves_indep:          # the fair benchmark's additions (absent from the earlier summaries)
        out["metric"] = (f"{HEADLINE} (headline) = FD-proxy to the teacher's samples ({recipe.target()}, CFG "
                         f"{recipe.cfg:g}) from independent noise; fd = the same from the same noise; fd_data = FD-proxy to real images")
        for (_, _), run in runs.items():      # the model evaluations per image of each row (the same for every seed)
            for row, cells in run.get("rows", {}).items():
                if row in variants:
                    variants[row].setdefault("nfe", {}).update({n: cell["nfe"] for n, cell in cells.items() if "nfe" in cell})
        out["heldout"] = {row: {m: {n: mean_ci(v) for n, v in by_steps.items()} for m, by_steps in metrics.items()}
                          for row, metrics in heldout.items()}
        out["lr_selection"] = lr_selection(heldout, seeds)
        out["eta_selection"] = eta_selection(heldout, seeds)
        out["chosen"] = chosen_rows(out["lr_selection"], out["eta_selection"])     # what the headline compares
        out["curves_indep"] = {v: {k: {n: mean_ci(vals) for n, vals in by_n.items()} for k, by_n in ks.items()}
                               for v, ks in curves_indep.items()}
        out["devices"] = sorted({r.get("device", "not recorded") for r in runs.values()})
        out["proxy_steps"] = sorted({r.get("proxy_step", "eager (before the compiled step)") for r in runs.values()})
    if recipe is not VP:                 # the flow proxy's summaries name their family (the VP ones stay as they were)
        out["proxy"] = recipe.name
    family = headline(per, getattr(args, "holm_family", None), out.get("chosen"))
    if family is not None:
        out["headline"] = family
    return out


def time_sampler_diagnostics(args, seeds: List[int]) -> Dict:
    """The Time Sampler's records (``training/trainer.py`` ``record_diagnostics``) of the ``ray`` and
    ``no_ts`` jobs, per arm and training step: the share of drawn timesteps per bin (``t_hist``), the
    proposal's mass per bin (``density``, ``ray`` only) and the loss profile (``profile``), each as
    per-seed lists (the last record of a step counts: a resumed run may repeat one)."""
    out: Dict[str, Dict[str, Dict[str, List]]] = {}
    for arm in ("ray", "no_ts"):
        for seed in seeds:
            path = os.path.join(args.out, "runs", f"seed{seed}", f"work_{arm}", "time_sampler.jsonl")
            if not os.path.isfile(path):
                path = archive_paths(args, seed, arm)[1]
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as f:
                records = {r["step"]: r for r in map(json.loads, filter(str.strip, f))}
            for step, r in records.items():
                cell = out.setdefault(arm, {}).setdefault(str(step), {})
                total = sum(r["t_hist"]) or 1.0
                for key, values in (("t_hist", [h / total for h in r["t_hist"]]), ("density", r.get("density")),
                                    ("profile", r["profile"])):
                    if values is not None:
                        cell.setdefault(key, {})[str(seed)] = values
    return out
