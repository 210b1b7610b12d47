"""The jobs of the multi-seed benchmark: one (training seed, variant) each, claimed with lock files.

Each job trains its variant on the shared phase-1 cache (``bench.variants.distil``; its LoRA,
snapshots and checkpoints lie in ``<out>/runs/seed<k>/``, so an interrupted job resumes from its
checkpoint), evaluates it (``bench.evaluation``) and writes its record. Several processes on one
``--out`` share the work: a job is claimed by creating its lock file, and a lock whose owner died is
taken over.
"""

from __future__ import annotations

import csv
import json
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

from proxy.sampling import load_lora_unet
from rayflow.atomic_write import write_json
from training.distill import snapshot_path

from .archive import archive_paths, archived_lora, finished, job_paths
from .device import device_info
from .evaluation import RAY_MODES, STEPS, Evaluation, mode_name
from .variants import EAGER_STEP, PROXY_STEP, SNAPSHOT_EVERY, distil, is_lcm, lora_samples


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


def sampling_modes(variant: str) -> Tuple[Tuple[str, float], ...]:
    """The (target-mean mode, eta) pairs a variant's LoRA is evaluated with: every Ray arm at eta 0
    and 1, ``ray`` also with the 1-, 2- and 4-step Theorem-1 probes (``RAY_MODES``); LCM-LoRA with its
    own sampler."""
    if is_lcm(variant):
        return (("noise", 0.0),)
    return RAY_MODES if variant == "ray" else (("noise", 0.0), ("noise", 1.0))


def evaluate_lora(ev: Evaluation, variant: str, lora: str) -> Dict[str, Dict]:
    """The metrics of the LoRA file ``lora`` of ``variant``: ``rows`` (evaluation set, every sampling
    mode) and ``heldout`` (held-out set, where settings are chosen: learning rate, eta; the modes with
    the noise as target mean), each at 1/2/4/8 steps, as ``{row name: {steps: {metric: value, "nfe": ...}}}``."""
    unet = load_lora_unet(ev.recipe.teacher, lora, ev.device)
    out: Dict[str, Dict] = {"rows": {}, "heldout": {}}
    for key in ("rows", "heldout"):
        es = ev.sets["eval" if key == "rows" else "heldout"]
        # the held-out set chooses between equal-cost settings: the probes (which cost more) are not among them
        for mode, eta in [m for m in sampling_modes(variant) if key == "rows" or m[0] == "noise"]:
            for n in STEPS:
                imgs, nfe = lora_samples(ev.model, unet, variant, es.labels, es.seeds, n, mode, eta, ev.recipe)
                out[key].setdefault(mode_name(variant, mode, eta), {})[str(n)] = {**es.metrics(imgs), "nfe": nfe}
    return out


def training_curve(ev: Evaluation, variant: str, lora: str, train_steps: int, final: Dict) -> Dict:
    """Evaluation-set metrics at 1/2/4/8 steps (``STEPS``) of every snapshot of ``lora`` (every
    ``SNAPSHOT_EVERY`` training steps), and of the final LoRA (``final``: its rows at ``train_steps``)."""
    es, curve = ev.sets["eval"], {}
    for k in range(SNAPSHOT_EVERY, train_steps, SNAPSHOT_EVERY):
        snap = snapshot_path(lora, k)
        if os.path.isfile(snap):
            unet = load_lora_unet(ev.recipe.teacher, snap, ev.device)
            curve[str(k)] = {str(n): es.metrics(lora_samples(ev.model, unet, variant, es.labels, es.seeds, n,
                                                             recipe=ev.recipe)[0])
                             for n in STEPS}
    curve[str(train_steps)] = {str(n): final[variant][str(n)] for n in STEPS}
    return curve


def logged_training_seconds(log: str, batch: int) -> Optional[float]:
    """The phase-2 time a training log (``training/records.py``'s ``log.csv``: step, ..., samples_per_s)
    accounts for, from its throughput rows at batch size ``batch``; None without the log."""
    if not os.path.isfile(log):
        return None
    with open(log, encoding="utf-8") as f:
        # a resumed run may log a step again: the last row of a step counts
        rows = sorted({int(r["step"]): float(r["samples_per_s"]) for r in csv.DictReader(f) if r.get("samples_per_s")}.items())
    steps = [0] + [k for k, _ in rows]
    return sum((k - prev) * batch / sps for (k, sps), prev in zip(rows, steps) if sps > 0) or None


def run_job(args, ev: Evaluation, seed: int, variant: str) -> None:
    """Train ``variant`` with training seed ``seed`` (resuming its checkpoint), evaluate it and its
    snapshots, and write its record ``<out>/runs/seed<k>/<variant>.json``."""
    folder, result, _ = job_paths(args.out, seed, variant)
    t0 = time.time()
    compiled = not getattr(args, "no_compile", False)
    path = distil(variant, folder, ev.recipe.teacher, os.path.join(args.out, "prompts.txt"), args.train_steps,
                  args.seeds_per_prompt, args.data_seed, train_seed=seed, cache=os.path.join(args.out, "data", "cache"),
                  recipe=ev.recipe, device=ev.device, compile=compiled)
    seconds = time.time() - t0
    if seconds < 1.0:            # the LoRA was there (trained before an interruption): the time its log recorded
        seconds = logged_training_seconds(os.path.join(folder, f"work_{variant}", "log.csv"),
                                          ev.recipe.phase2["batch_size"]) or seconds
    metrics = evaluate_lora(ev, variant, path)
    curve = training_curve(ev, variant, path, args.train_steps, metrics["rows"])
    write_json(result, {"variant": variant, "train_seed": seed, "train_steps": args.train_steps,
                        "distill_seconds": seconds, **metrics, "curve": curve, "device": device_info(ev.device),
                        "proxy_step": PROXY_STEP if compiled else EAGER_STEP, "lora": os.path.basename(path)})
    print(f"[seed {seed}] {variant}: trained in {seconds:.0f} s; " + ", ".join(
        f"{n} steps fd_indep {metrics['rows'][variant][str(n)]['fd_indep']:.1f}" for n in STEPS), flush=True)


def jobs(args) -> List[tuple]:
    """All (seed, variant) jobs, seed-major, so an interrupted run has whole seeds to pair."""
    return [(s, v) for s in args.seeds for v in args.variants]


def work(args, ev: Evaluation, summarise: Callable) -> None:
    """Run every job not yet done and not claimed by another process, calling ``summarise(args)``
    after each."""
    for seed, variant in jobs(args):
        _, result, lock = job_paths(args.out, seed, variant)
        if finished(args, seed, variant) or not claim(lock):
            continue
        try:
            if not finished(args, seed, variant):
                run_job(args, ev, seed, variant)
        finally:
            os.remove(lock)
        try:
            summarise(args)
        except Exception as exc:      # a summary that fails must not stop the jobs: their records are kept
            print(f"warning: the summary failed after job (seed {seed}, {variant}): {type(exc).__name__}: {exc}",
                  flush=True)


def reevaluate(args, ev: Evaluation) -> List[Tuple[int, str, float]]:
    """Evaluate every archived job of ``args.seeds`` x ``args.variants`` at ``args.train_steps`` again
    from its archived LoRA (no training), merge the metrics into its archived record (new metrics
    are added; the curve is computed again where ``<out>/runs`` still holds the job's snapshots, else
    kept; ``<out>/runs``' copy of the record likewise, or the next summary would archive the old one again) and return ``(seed, variant, largest change of a metric that was
    already archived)`` per job: 0.0 when the archive reproduces exactly."""
    changes = []
    for seed, variant in jobs(args):
        record, _ = archive_paths(args, seed, variant)
        lora = archived_lora(args, seed, variant)
        if not (os.path.isfile(record) and os.path.isfile(lora)):
            continue
        with open(record, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("train_steps") != args.train_steps:
            continue
        new = evaluate_lora(ev, variant, lora)
        folder, runs_copy, _ = job_paths(args.out, seed, variant)
        # snapshots are not archived: the curve is new only where <out>/runs still holds some (more than the final row)
        curve = training_curve(ev, variant, os.path.join(folder, f"lora_{variant}.safetensors"), args.train_steps, new["rows"])
        if len(curve) > 1:
            new["curve"] = curve
        change = max((abs(cell[m] - old[key][row][n][m]) for key in ("rows", "heldout") for row, cells in new[key].items()
                      for n, cell in cells.items() for m in cell if m in old.get(key, {}).get(row, {}).get(n, {})),
                     default=0.0)
        merged = {**old, **new, "reevaluated_on": device_info(ev.device)}
        write_json(record, merged)
        if os.path.isfile(runs_copy):       # the next summary archives <out>/runs' copy again: it must agree
            write_json(runs_copy, merged)
        changes.append((seed, variant, change))
        print(f"[seed {seed}] {variant}: re-evaluated from {lora}; largest change of an archived metric {change:.3g}",
              flush=True)
    return changes
