"""The archive of finished benchmark jobs: one small record per (training seed, variant).

A job writes ``<out>/runs/seed<k>/<variant>.json`` when it is done; every summary copies the
finished jobs' records (result JSON and Time Sampler records, a few kB each) into the *archive*
beside it, ``<results stem>_runs/seed<k>/`` (``--archive``). Jobs found there are not trained again,
so a committed archive lets a later session or another machine add seeds or variants to a
published result. :func:`restore_archive` writes the archive back from a summary JSON's per-seed
values (for summaries made before the archive existed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from typing import Dict, List

from rayflow.atomic_write import atomic_path, write_json, write_text

from .evaluation import METRICS

def job_paths(out: str, seed: int, variant: str):
    folder = os.path.join(out, "runs", f"seed{seed}")
    return folder, os.path.join(folder, f"{variant}.json"), os.path.join(folder, f"{variant}.lock")


def archive_of(args) -> str:
    """The folder that keeps every finished job's record beside the summary (``<results stem>_runs``):
    small JSON files meant to be committed with the summary, so that a later session, another machine
    or ``--seeds`` with more seeds continues from them instead of training them again."""
    return getattr(args, "archive", None) or os.path.splitext(args.results)[0] + "_runs"


def archive_paths(args, seed: int, variant: str):
    """The archive's record and Time Sampler records of one job."""
    folder = os.path.join(archive_of(args), f"seed{seed}")
    return os.path.join(folder, f"{variant}.json"), os.path.join(folder, f"{variant}.time_sampler.jsonl")


def archived_lora(args, seed: int, variant: str) -> str:
    """The archive's copy of one job's final LoRA file (what re-evaluation reads)."""
    return os.path.join(archive_of(args), f"seed{seed}", f"{variant}.safetensors")


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
    """Copy every finished job of ``<out>/runs`` (its record, Time Sampler records and final LoRA)
    into the archive."""
    for seed, folder, run in job_records(os.path.join(args.out, "runs"), args.train_steps):
        result, records = archive_paths(args, seed, run["variant"])
        os.makedirs(os.path.dirname(result), exist_ok=True)
        write_json(result, run)
        jsonl = os.path.join(folder, f"work_{run['variant']}", "time_sampler.jsonl")
        for source, target in ((jsonl, records), (os.path.join(folder, run.get("lora", "")),
                                                  archived_lora(args, seed, run["variant"]))):
            if os.path.isfile(source) and not _same_file(source, target):
                with atomic_path(target) as tmp:
                    shutil.copyfile(source, tmp)


def _same_file(a: str, b: str) -> bool:
    if not os.path.isfile(b) or os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


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
                write_text(path, "".join(json.dumps(r) + "\n" for r in records))
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


def load_runs(args) -> Dict[tuple, Dict]:
    """Every finished job in the archive and under ``<out>/runs`` (also those of other ``--seeds`` /
    ``--variants`` invocations on the same ``--out``): ``{(seed, variant): result}``."""
    return {(seed, run["variant"]): run for root in (archive_of(args), os.path.join(args.out, "runs"))
            for seed, _, run in job_records(root, args.train_steps)}


def measurement_parser(description: str, variants: str, items: int) -> argparse.ArgumentParser:
    """The command line every measurement over archived LoRAs shares (``bench.map_sensitivity``,
    ``bench.lcm_consistency``): the benchmark folder, its summary (whose archive holds the LoRAs),
    seeds, variants (default ``variants``), cache items (default ``items``) and the results file."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", required=True, help="the multi-seed benchmark folder (its phase-1 cache)")
    ap.add_argument("--results", required=True, help="the benchmark's summary JSON (its archive holds the LoRAs)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", default=variants, help="variants, comma-separated")
    ap.add_argument("--items", type=int, default=items, help="cache items measured (every k-th, all captions)")
    ap.add_argument("--save", required=True, help="where the results JSON goes")
    return ap


def measurement_args(ap: argparse.ArgumentParser, argv, allowed, kind: str) -> argparse.Namespace:
    """Parse ``argv`` with ``ap`` (:func:`measurement_parser`); variants outside ``allowed`` (``kind``
    names them in the message) or a folder without a phase-1 cache are one line before any work."""
    args = ap.parse_args(argv)
    args.variants = args.variants.split(",")
    unknown = [v for v in args.variants if v not in allowed]
    if unknown:
        ap.error(f"not {kind} variants of bench.variants: {', '.join(unknown)}")
    if not os.path.isfile(os.path.join(args.out, "data", "cache", "manifest.json")):
        ap.error(f"{args.out} has no phase-1 cache: run bench.quality with this --out first")
    return args


def unmeasured(args: argparse.Namespace, settings: Dict) -> tuple:
    """``(saved, todo)``: the results file ``args.save`` so far (refused in one line when it was made
    with other ``settings``) and the archived (seed, variant) jobs it does not hold yet."""
    saved = json.load(open(args.save)) if os.path.isfile(args.save) else {}
    if saved and any(saved.get(k) != v for k, v in settings.items()):
        raise SystemExit(f"{args.save} was made with other settings ({', '.join(f'{k} {saved.get(k)}' for k in settings)}); "
                         f"give another --save")
    return saved, [(s, v) for s in args.seeds for v in args.variants
                   if str(s) not in saved.get("runs", {}).get(v, {}) and os.path.isfile(archived_lora(args, s, v))]
