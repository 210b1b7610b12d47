"""Multi-seed quality benchmark on the proxy teacher: ``python -m bench.quality --seeds 0 1 2 ...``.

Every variant of ``bench.quality.VARIANTS`` is trained once per *training seed* on one shared
phase-1 cache (the data: ``--data-seed``), so the seed moves only what training draws: the LoRA
initialisation, the batch order, the timesteps and the Ray noise (``--train-seed``). The
evaluation noise, captions and references are the same for every variant and seed, so the
variants pair by seed (``bench/stats.py``).

Metrics at 1, 2, 4 and 8 sampling steps, on ``--eval-per-caption`` images of each of the 72
captions, from seeds no LoRA trains on:

* ``fd`` (headline): FD-proxy to the **teacher's own samples** from the same noise with the solver
  and settings that built the cache (DPM-Solver++, 25 steps, CFG 3), i.e. to the distillation
  target; its floor is ``teacher floor``, the FD between two teacher sample sets of independent
  noise;
* ``fd_data``: FD-proxy to procedurally rendered real images of the same captions;
* ``rmse``: per-image RMS pixel error to the teacher's sample from the same noise;
* ``alignment``, ``diversity``, ``hf_ratio`` as in ``proxy/classifier.py``.

Each (seed, variant) job writes ``runs/seed<k>/<variant>.json`` when it is done (its LoRA, snapshots
and checkpoints lie beside it, so an interrupted job resumes from its checkpoint), and after every
job the summary ``quality_multiseed.json`` (mean, 95 % t-interval and per-seed values per variant and
step count; paired differences to ``ray``) and ``quality_multiseed.md`` are rewritten. ``--workers N``
runs N jobs at a time (one thread each); jobs are claimed with lock files, so several invocations
on one ``--out`` share the work.

Every summary also copies the finished jobs' records (result JSON and Time Sampler records, a few
kB each) into the *archive* beside it, ``<results stem>_runs/seed<k>/`` (``--archive``). Jobs found
there are not trained again, so a committed archive lets a later session or another machine add
seeds or variants to a published result. ``--restore-runs`` writes the archive back from a summary
JSON's per-seed values (for summaries made before the archive existed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

from rayflow.atomic_write import atomic_path, write_json

from .stats import mean_ci, paired_difference, verdict

STEPS = (1, 2, 4, 8)
METRICS = ("fd", "fd_data", "rmse", "alignment", "diversity", "hf_ratio")
LOWER_IS_BETTER = {"fd": True, "fd_data": True, "rmse": True, "alignment": False}
# the target-mean modes and eta of the Ray Target Mean comparison (README: when to use the node), on "ray"
RAY_MODES = (("noise", 0.0), ("probe4", 0.0), ("noise", 1.0), ("probe4", 1.0))
TEACHER_ROWS = [("teacher DDIM", "ddim", n) for n in STEPS + (25,)] + \
               [("teacher DPM-Solver++", "dpmsolver++", n) for n in STEPS]
REFERENCE = ("dpmsolver++", 25)       # the solver and steps of the phase-1 cache: the distillation target


def mode_name(variant: str, mode: str, eta: float) -> str:
    """Row name of a variant sampled with target-mean ``mode`` and ``eta`` (plain name for the default)."""
    if (mode, eta) == ("noise", 0.0):
        return variant
    return f"{variant} [{mode}{'' if eta == 0 else f', eta {eta:g}'}]"


# ----------------------------------------------------------------------------- evaluation context
class Evaluation:
    """The fixed evaluation of every job: teacher, classifier, captions, seeds, the real images and
    the teacher's reference samples (cached in ``<out>/reference.safetensors``)."""

    def __init__(self, out: str, eval_per_caption: int, data_seed: int):
        from bench.quality import evaluation_set
        from proxy.classifier import load_classifier
        from proxy.demo import CLASSIFIER, TEACHER, generate
        from training.models import load_base_model

        self.model = load_base_model(TEACHER)
        self.classifier = load_classifier(CLASSIFIER)
        self.labels, self.seeds, self.real = evaluation_set(eval_per_caption, data_seed)
        path = os.path.join(out, "reference.safetensors")
        from safetensors.torch import load_file, save_file

        if os.path.isfile(path):
            ref = load_file(path)
        else:
            solver, steps = REFERENCE
            # the floor: the same captions from noise seeds disjoint from the evaluation's
            ref = {"teacher": generate(self.model, None, self.labels, self.seeds, solver, steps),
                   "teacher_other": generate(self.model, None, self.labels, self.seeds + len(self.seeds), solver, steps)}
            with atomic_path(path) as tmp:
                save_file(ref, tmp)
        self.teacher = ref["teacher"]
        self.teacher_other = ref["teacher_other"]
        with torch.no_grad():
            self.f_teacher = self.classifier.features(self.teacher)

    @torch.no_grad()
    def metrics(self, images: torch.Tensor) -> Dict[str, float]:
        from proxy.classifier import evaluate, frechet_distance

        base = evaluate(self.classifier, images, self.labels, self.real, self.labels)
        fd = frechet_distance(self.classifier.features(images), self.f_teacher)
        rmse = float((images - self.teacher).pow(2).flatten(1).mean(1).sqrt().mean())
        return {"fd": fd, "fd_data": base.pop("fd_proxy"), "rmse": rmse, **base}


def teacher_table(out: str, ev: Evaluation) -> Dict:
    """The teacher's rows (no training seed: one value each), cached in ``<out>/teacher.json``."""
    from proxy.demo import generate

    path = os.path.join(out, "teacher.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    rows: Dict[str, Dict] = {"teacher floor": {"25": {**ev.metrics(ev.teacher_other), "nfe": 50}}}
    for name, solver, n in TEACHER_ROWS:
        rows.setdefault(name, {})[str(n)] = {**ev.metrics(generate(ev.model, None, ev.labels, ev.seeds, solver, n)),
                                            "nfe": 2 * n}
    write_json(path, rows)
    return rows


# ----------------------------------------------------------------------------- jobs
def job_paths(out: str, seed: int, variant: str):
    folder = os.path.join(out, "runs", f"seed{seed}")
    return folder, os.path.join(folder, f"{variant}.json"), os.path.join(folder, f"{variant}.lock")


def claim(lock: str) -> bool:
    """Take ``lock`` (a file holding the owner's pid); a lock whose owner is gone is taken over."""
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            return True
        except FileExistsError:
            try:
                with open(lock) as f:
                    pid = int(f.read().strip() or 0)
                os.kill(pid, 0)
                return False            # alive: someone else's job
            except (ValueError, ProcessLookupError, FileNotFoundError):
                try:
                    os.remove(lock)     # stale: its owner died
                except FileNotFoundError:
                    pass
            except PermissionError:
                return False
    return False


def run_job(args, ev: Evaluation, seed: int, variant: str) -> None:
    from bench.quality import CURVE_VARIANTS, SNAPSHOT_EVERY, distil, process_of, rayflow_samples
    from proxy.demo import TEACHER, load_lora_unet
    from training.distill import snapshot_path

    folder, result, _ = job_paths(args.out, seed, variant)
    t0 = time.time()
    path = distil(variant, folder, TEACHER, os.path.join(args.out, "prompts.txt"), args.train_steps,
                  args.seeds_per_prompt, args.data_seed, train_seed=seed, cache=os.path.join(args.out, "data", "cache"))
    seconds = time.time() - t0

    def sample(lora: str, modes, steps) -> Dict[str, Dict[str, Dict[str, float]]]:
        unet = load_lora_unet(TEACHER, lora)
        rows: Dict[str, Dict[str, Dict[str, float]]] = {}
        for mode, eta in modes:
            for n in steps:
                if variant == "lcm":
                    from bench.lcm_baseline import lcm_samples

                    imgs, nfe = lcm_samples(ev.model, unet, ev.labels, ev.seeds, n)
                else:
                    imgs, nfe = rayflow_samples(ev.model, unet, ev.labels, ev.seeds, n, process_of(variant), mode, eta)
                rows.setdefault(mode_name(variant, mode, eta), {})[str(n)] = {**ev.metrics(imgs), "nfe": nfe}
        return rows

    rows = sample(path, RAY_MODES if variant == "ray" else [("noise", 0.0)], STEPS)
    curve = {}
    if variant in CURVE_VARIANTS:
        for k in range(SNAPSHOT_EVERY, args.train_steps, SNAPSHOT_EVERY):
            if os.path.isfile(snapshot_path(path, k)):
                curve[str(k)] = sample(snapshot_path(path, k), [("noise", 0.0)], (1, 2, 4))[variant]
        curve[str(args.train_steps)] = {n: rows[variant][n] for n in ("1", "2", "4")}
    write_json(result, {"variant": variant, "train_seed": seed, "train_steps": args.train_steps,
                        "distill_seconds": seconds, "rows": rows, "curve": curve})
    print(f"[seed {seed}] {variant}: trained in {seconds:.0f} s; " + ", ".join(
        f"{n} steps fd {rows[variant][str(n)]['fd']:.1f}" for n in STEPS), flush=True)


# ----------------------------------------------------------------------------- the archive of finished jobs
def archive_of(args) -> str:
    """The folder that keeps every finished job's record beside the summary (``<results stem>_runs``):
    small JSON files meant to be committed with the summary, so that a later session, another machine
    or ``--seeds`` with more seeds continues from them instead of training them again."""
    return getattr(args, "archive", None) or os.path.splitext(args.results)[0] + "_runs"


def archive_paths(args, seed: int, variant: str):
    folder = os.path.join(archive_of(args), f"seed{seed}")
    return os.path.join(folder, f"{variant}.json"), os.path.join(folder, f"{variant}.time_sampler.jsonl")


def job_records(root: str, train_steps: int):
    """``(seed, folder, result)`` of every finished job at ``train_steps`` in ``root``
    (``<out>/runs`` or an archive: ``seed<k>/<variant>.json``)."""
    for folder in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if not folder.startswith("seed") or not folder[4:].isdigit():
            continue
        for name in sorted(os.listdir(os.path.join(root, folder))):
            if name.endswith(".json"):
                with open(os.path.join(root, folder, name)) as f:
                    run = json.load(f)
                if run.get("train_steps") == train_steps:
                    yield int(folder[4:]), os.path.join(root, folder), run


def archive_runs(args) -> None:
    """Copy every finished job of ``<out>/runs`` (its result and Time Sampler records) into the archive."""
    for seed, folder, run in job_records(os.path.join(args.out, "runs"), args.train_steps):
        result, records = archive_paths(args, seed, run["variant"])
        os.makedirs(os.path.dirname(result), exist_ok=True)
        write_json(result, run)
        jsonl = os.path.join(folder, f"work_{run['variant']}", "time_sampler.jsonl")
        if os.path.isfile(jsonl):
            shutil.copyfile(jsonl, records)


def restore_archive(data: Dict, archive: str) -> List[str]:
    """Write the archive of the summary ``data`` back from its per-seed values: one job record per
    (seed, variant) with every row and metric the summary holds, the training curve (FD) and the Time
    Sampler records, each marked ``restored_from_summary``. It is what the summary needs to be
    rebuilt or extended by more seeds or variants; the raw sample sets are not in it."""
    seeds, written = data["train_seeds"], []
    jobs_: Dict[tuple, Dict] = {}
    for row, metrics in data["variants"].items():
        variant = row.split(" [")[0]
        for m in METRICS:
            for n, stat in metrics.get(m, {}).items():
                for seed, value in zip(seeds, stat["per_seed"]):
                    if value is not None:
                        job = jobs_.setdefault((seed, variant), {"rows": {}, "curve": {}})
                        job["rows"].setdefault(row, {}).setdefault(n, {})[m] = value
    for variant, ks in data.get("curves", {}).items():
        for k, by_n in ks.items():
            for n, stat in by_n.items():
                for seed, value in zip(seeds, stat["per_seed"]):
                    if value is not None and (seed, variant) in jobs_:
                        jobs_[(seed, variant)]["curve"].setdefault(k, {})[n] = {"fd": value}
    for (seed, variant), job in sorted(jobs_.items()):
        folder = os.path.join(archive, f"seed{seed}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{variant}.json")
        write_json(path, {"variant": variant, "train_seed": seed, "train_steps": data["train_steps"],
                          "distill_seconds": data["distill_seconds"].get(f"{variant} seed {seed}"),
                          "rows": job["rows"], "curve": job["curve"], "restored_from_summary": True})
        written.append(path)
    for arm, steps in data.get("time_sampler_diagnostics", {}).items():
        for seed in seeds:
            records = [{"step": int(step), **{key: cell[key][str(seed)] for key in ("t_hist", "density", "profile")
                                              if str(seed) in cell.get(key, {})}}
                       for step, cell in sorted(steps.items(), key=lambda kv: int(kv[0])) if str(seed) in cell.get("t_hist", {})]
            if records:
                path = os.path.join(archive, f"seed{seed}", f"{arm}.time_sampler.jsonl")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in records)
                written.append(path)
    return written


def finished(args, seed: int, variant: str) -> bool:
    """Whether the job's result is in ``<out>/runs`` or in the archive (at this ``--train-steps``)."""
    for path in (job_paths(args.out, seed, variant)[1], archive_paths(args, seed, variant)[0]):
        if os.path.isfile(path):
            with open(path) as f:
                if json.load(f).get("train_steps") == args.train_steps:
                    return True
    return False


def jobs(args) -> List[tuple]:
    """All (seed, variant) jobs, seed-major, so an interrupted run has whole seeds to pair."""
    return [(s, v) for s in args.seeds for v in args.variants]


def work(args, ev: Evaluation) -> None:
    """Run every job not yet done and not claimed by another process, summarising after each."""
    for seed, variant in jobs(args):
        _, result, lock = job_paths(args.out, seed, variant)
        if finished(args, seed, variant) or not claim(lock):
            continue
        try:
            if not finished(args, seed, variant):
                run_job(args, ev, seed, variant)
        finally:
            os.remove(lock)
        summarise(args)


# ----------------------------------------------------------------------------- summary
def load_runs(args) -> Dict[tuple, Dict]:
    """Every finished job in the archive and under ``<out>/runs`` (also those of other ``--seeds`` /
    ``--variants`` invocations on the same ``--out``): ``{(seed, variant): result}``."""
    return {(seed, run["variant"]): run for root in (archive_of(args), os.path.join(args.out, "runs"))
            for seed, _, run in job_records(root, args.train_steps)}


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


def summary(args, runs: Dict[tuple, Dict], teacher: Dict) -> Dict:
    """The machine-readable result (``docs/results/quality_multiseed.json``)."""
    seeds = sorted({s for s, _ in runs})
    order = list(args.variants) + sorted({v for _, v in runs} - set(args.variants))
    runs = dict(sorted(runs.items(), key=lambda kv: (order.index(kv[0][1]), kv[0][0])))
    per: Dict[str, Dict[str, Dict[str, List]]] = {}        # row -> metric -> steps -> per-seed values
    for (seed, _), run in runs.items():
        for row, cells in run["rows"].items():
            for n, cell in cells.items():
                for m in METRICS:
                    per.setdefault(row, {}).setdefault(m, {}).setdefault(n, [None] * len(seeds))[seeds.index(seed)] = cell[m]
    variants = {}
    for row, metrics in per.items():
        variants[row] = {m: {n: mean_ci(v) for n, v in by_steps.items()} for m, by_steps in metrics.items()}
        if row != "ray" and "ray" in per:
            variants[row]["paired_vs_ray"] = paired_block(metrics, per["ray"])
        for base, arms in PAIRED_BASELINES.items():
            if row in arms and base in per:
                variants[row][f"paired_vs_{base}"] = paired_block(metrics, per[base])
    curves = {}
    for (seed, variant), run in runs.items():
        for k, cells in run.get("curve", {}).items():
            for n, cell in cells.items():
                curves.setdefault(variant, {}).setdefault(k, {}).setdefault(n, [None] * len(seeds))[seeds.index(seed)] = cell["fd"]
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
    return {"command": "python -m bench.quality " + " ".join(args.argv), "train_seeds": seeds,
            "train_steps": args.train_steps, "metric": "fd = FD-proxy to the teacher's samples (DPM-Solver++ 25, CFG 3) "
            "from the same noise; fd_data = FD-proxy to real images",
            "data": {"data_seed": args.data_seed, "captions": 72, "seeds_per_prompt": args.seeds_per_prompt,
                     "trajectories": 72 * args.seeds_per_prompt, "eval_images": 72 * args.eval_per_caption,
                     "teacher": "proxy/weights/teacher, DPM-Solver++ 25 steps, CFG 3"},
            "distill_seconds": {f"{v} seed {s}": r["distill_seconds"] for (s, v), r in runs.items()},
            "teacher": teacher, "variants": variants, "curves": curve_stats, "convergence_2step_last_quarter": convergence,
            "fraction_of_budget_to_reach_uniform_final_fd": reach,
            "time_sampler_diagnostics": time_sampler_diagnostics(args, seeds)}


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


def fmt(stat: Dict, digits: int = 1) -> str:
    if stat is None or stat.get("mean") is None:
        return ""
    if stat.get("ci95") is None:
        return f"{stat['mean']:.{digits}f} (n={stat['n']})"
    lo, hi = stat["ci95"]
    return f"{stat['mean']:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def report(data: Dict) -> str:
    """Markdown tables: the headline (mean ± 95 % CI half-width), then paired differences to ray."""
    lines = [f"Training seeds {data['train_seeds']}, {data['train_steps']} steps; cells: mean ± 95 % CI half-width "
             f"over training seeds (n = seeds measured). FD to the teacher's samples / alignment.", "",
             "| method | " + " | ".join(f"{n} step{'s' if n > 1 else ''}" for n in STEPS) + " |",
             "|---|" + "---|" * len(STEPS)]
    for name, cells in data["teacher"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{cells[str(n)]['fd']:.1f} / {cells[str(n)]['alignment']:.2f}" if str(n) in cells else "" for n in STEPS) +
            (f" (25 steps: {cells['25']['fd']:.1f} / {cells['25']['alignment']:.2f})" if "25" in cells else "") + " |")
    for name, v in data["variants"].items():
        lines.append(f"| RayFlow {name} | " if name != "lcm" else "| LCM-LoRA | ")
        lines[-1] += " | ".join(f"{fmt(v['fd'].get(str(n)))} / {fmt(v['alignment'].get(str(n)), 2)}"
                                if str(n) in v["fd"] else "" for n in STEPS) + " |"
    for base in ("ray", *PAIRED_BASELINES):
        key = f"paired_vs_{base}"
        if not any(key in v for v in data["variants"].values()):
            continue
        lines += ["", f"Paired difference to `{base}` (variant − {base}, mean ± 95 % CI; verdict for the variant):", "",
                  "| variant | metric | " + " | ".join(f"{n} step{'s' if n > 1 else ''}" for n in STEPS) + " |",
                  "|---|---|" + "---|" * len(STEPS)]
        for name, v in data["variants"].items():
            for m, by_n in v.get(key, {}).items():
                if m in ("fd", "fd_data", "alignment"):
                    lines.append(f"| {name} | {m} | " + " | ".join(
                        f"{fmt(by_n[str(n)], 2 if m == 'alignment' else 1)} ({by_n[str(n)]['verdict']})" if str(n) in by_n else ""
                        for n in STEPS) + " |")
    if data["curves"]:
        lines += ["", "FD to the teacher vs training steps (mean over seeds; 1 / 2 / 4 sampling steps):", ""]
        for v, ks in data["curves"].items():
            lines.append(f"- {v}: " + "; ".join(f"@{k}: " + " / ".join(fmt(c[n]) for n in ("1", "2", "4") if n in c)
                                                for k, c in sorted(ks.items(), key=lambda kv: int(kv[0]))))
        for v, c in data["convergence_2step_last_quarter"].items():
            lines.append(f"- {v}: 2-step FD change over the last quarter of training {fmt(c, 3)} (relative)")
    return "\n".join(lines) + "\n"


PLOT_ROWS = ("ray", "no_ts", "no_ray", "lcm", "one_step")       # the rows drawn in the FD-vs-sampling-steps plot


def plot(data: Dict, stem: str) -> List[str]:
    """``<stem>_fd_vs_steps.png`` (FD to the teacher vs sampling steps, mean and 95 % CI per variant,
    the teacher's DPM-Solver++ beside them) and, when there are curves, ``<stem>_fd_vs_training_steps.png``
    (2- and 4-step FD vs training steps, mean and 95 % CI band). Returns the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib not installed: no plot")
        return []
    paths = []
    if not any(c.get("ci95") for name in PLOT_ROWS for c in data["variants"].get(name, {}).get("fd", {}).values()):
        return paths            # no interval yet (fewer than two seeds): nothing to draw
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in PLOT_ROWS:
        fd = data["variants"].get(name, {}).get("fd")
        if not fd:
            continue
        ns = [n for n in STEPS if str(n) in fd and fd[str(n)].get("ci95")]
        mean = [fd[str(n)]["mean"] for n in ns]
        err = [[m - fd[str(n)]["ci95"][0] for n, m in zip(ns, mean)], [fd[str(n)]["ci95"][1] - m for n, m in zip(ns, mean)]]
        ax.errorbar(ns, mean, yerr=err, marker="o", capsize=3, label="LCM-LoRA" if name == "lcm" else f"RayFlow {name}")
    dpm = data["teacher"].get("teacher DPM-Solver++", {})
    ns = [n for n in STEPS if str(n) in dpm]
    if ns:
        ax.plot(ns, [dpm[str(n)]["fd"] for n in ns], "k--", marker="x", label="teacher DPM-Solver++")
    floor = data["teacher"].get("teacher floor", {}).get("25", {}).get("fd")
    if floor is not None:
        ax.axhline(floor, color="grey", lw=0.8, ls=":", label="teacher floor")
    ax.set(xscale="log", yscale="log", xticks=list(STEPS), xticklabels=[str(n) for n in STEPS], xlabel="sampling steps",
           ylabel="FD-proxy to the teacher", title=f"mean and 95 % CI over training seeds {data['train_seeds']}")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(f"{stem}_fd_vs_steps.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    if data.get("curves"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for ax, n in zip(axes, ("2", "4")):
            for v, ks in data["curves"].items():
                if v not in ("ray", "no_ts"):
                    continue
                xs = sorted(ks, key=int)
                cells = [ks[k][n] for k in xs]
                mean = [c["mean"] for c in cells]
                ax.plot([int(k) for k in xs], mean, marker="o", label={"ray": "Time Sampler", "no_ts": "uniform t"}[v])
                if all(c.get("ci95") for c in cells):
                    ax.fill_between([int(k) for k in xs], [c["ci95"][0] for c in cells], [c["ci95"][1] for c in cells], alpha=0.2)
            ax.set(xlabel="training steps", ylabel=f"{n}-step FD-proxy to the teacher", yscale="log")
            ax.legend(fontsize=7)
        fig.suptitle(f"mean and 95 % CI over training seeds {data['train_seeds']}", fontsize=9)
        fig.tight_layout()
        paths.append(f"{stem}_fd_vs_training_steps.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    diag = data.get("time_sampler_diagnostics", {}).get("ray")
    if diag:            # timestep histogram, learned density and loss profile at four points of training
        steps = sorted(diag, key=int)
        picks = sorted({steps[min(len(steps) - 1, round(q * (len(steps) - 1)))] for q in (0.1, 0.33, 0.66, 1.0)}, key=int)
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        for ax, key, label in zip(axes, ("t_hist", "density", "profile"),
                                  ("share of drawn timesteps", "proposal mass per bin", "loss profile log sqrt E[l²]")):
            for i, step in enumerate(picks):
                per_seed = diag[step].get(key, {})
                if not per_seed:
                    continue
                bins = len(next(iter(per_seed.values())))
                x = [(b + 0.5) / bins for b in range(bins)]
                colour = plt.cm.viridis(i / max(1, len(picks) - 1))
                for values in per_seed.values():
                    ax.plot(x, values, color=colour, lw=0.5, alpha=0.4)
                ax.plot(x, [sum(v) / len(per_seed) for v in zip(*per_seed.values())], color=colour, lw=1.6,
                        label=f"step {step}")
            if key == "t_hist":
                ax.axhline(1 / 20, color="grey", ls=":", lw=0.8, label="uniform")
            ax.set(xlabel="t / T", ylabel=label)
            ax.legend(fontsize=7)
        fig.suptitle(f"Time Sampler of the ray arm: thin lines per seed, thick the mean over seeds "
                     f"{sorted({s for c in diag.values() for s in c.get('t_hist', {})}, key=int)}", fontsize=9)
        fig.tight_layout()
        paths.append(f"{stem}_time_sampler.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def write_report(data: Dict, results: str) -> None:
    """``results`` (the JSON), the markdown report and the plots beside it."""
    write_json(results, data)
    stem = os.path.splitext(results)[0]
    with open(stem + ".md", "w", encoding="utf-8") as f:
        f.write(report(data))
    plot(data, stem)


def summarise(args) -> Dict:
    with open(os.path.join(args.out, "teacher.json")) as f:
        teacher = json.load(f)
    archive_runs(args)
    data = summary(args, load_runs(args), teacher)
    write_report(data, args.results)
    return data


# ----------------------------------------------------------------------------- entry point
def prepare(args) -> Evaluation:
    """The prompts file, the shared phase-1 cache, the reference samples and the teacher's rows."""
    from proxy.data import all_labels, caption_of
    from proxy.demo import TEACHER, TEACHER_CFG, TEACHER_STEPS

    os.makedirs(args.out, exist_ok=True)
    prompts = os.path.join(args.out, "prompts.txt")
    if not os.path.isfile(prompts):
        with open(prompts, "w") as f:
            f.writelines(caption_of(l) + "\n" for l in all_labels().tolist())
    if not os.path.isfile(os.path.join(args.out, "data", "cache", "manifest.json")) or \
            not json.load(open(os.path.join(args.out, "data", "cache", "manifest.json"))).get("complete"):
        from accelerate import Accelerator

        from training.config import DistillConfig
        from training.data import build_cache
        from training.models import load_base_model
        from training.prompts import read_prompts

        cfg = DistillConfig(model=TEACHER, prompts=prompts, output=os.path.join(args.out, "data.safetensors"),
                            work_dir=os.path.join(args.out, "data"), resolution=16, seeds_per_prompt=args.seeds_per_prompt,
                            seed=args.data_seed, teacher_solver=REFERENCE[0], teacher_steps=REFERENCE[1],
                            teacher_cfg=TEACHER_CFG, shard_size=64).validate()
        assert TEACHER_STEPS == REFERENCE[1]
        build_cache(cfg, load_base_model(TEACHER), read_prompts(prompts), Accelerator(), progress=False)
    ev = Evaluation(args.out, args.eval_per_caption, args.data_seed)
    teacher_table(args.out, ev)
    return ev


def main(args) -> int:
    """``args``: the ``bench.quality`` namespace with ``seeds``, ``variants`` (a list), ``workers``,
    ``results`` and ``argv``."""
    restore = getattr(args, "restore_runs", False)
    if args.replot or restore:     # redraw the report and plots (or write the archive) from the summary JSON alone
        with open(args.results) as f:
            data = json.load(f)
        if restore:
            written = restore_archive(data, archive_of(args))
            print(f"restored {len(written)} files into {archive_of(args)}")
            return 0
        write_report(data, args.results)
        print(report(data))
        return 0
    if args.worker or args.workers <= 1:
        if args.worker:
            torch.set_num_threads(1)
        work(args, prepare(args))
        if not args.worker:
            print(report(summarise(args)))
        return 0
    prepare(args)          # once, before the workers share it
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "bench.quality", *args.argv, "--worker"], env=env)
             for _ in range(args.workers)]
    rc = max(p.wait() for p in procs)
    print(report(summarise(args)))
    return rc
