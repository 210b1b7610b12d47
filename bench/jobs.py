"""The jobs of the multi-seed benchmark: one (training seed, variant) each, claimed with lock files.

Each job trains its variant on the shared phase-1 cache (``bench.variants.distil``; its LoRA,
snapshots and checkpoints lie in ``<out>/runs/seed<k>/``, so an interrupted job resumes from its
checkpoint), evaluates it (``bench.evaluation``) and writes its record. Several processes on one
``--out`` share the work: a job is claimed by creating its lock file, and a lock whose owner died is
taken over.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, List

from proxy.recipe import TEACHER
from proxy.sampling import load_lora_unet
from rayflow.atomic_write import write_json
from training.distill import snapshot_path

from .archive import finished, job_paths
from .evaluation import RAY_MODES, STEPS, Evaluation, mode_name
from .variants import CURVE_VARIANTS, SNAPSHOT_EVERY, distil, lora_samples

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
                imgs, nfe = lora_samples(ev.model, unet, variant, ev.labels, ev.seeds, n, mode, eta)
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
        summarise(args)
