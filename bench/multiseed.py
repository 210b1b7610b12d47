"""Multi-seed quality benchmark on the proxy teacher: ``python -m bench.quality --seeds 0 1 2 ...``.

Every variant of ``bench.variants.VARIANTS`` is trained once per *training seed* on one shared
phase-1 cache (the data: ``--seed`` of ``bench.quality``), so the seed moves only what training
draws: the LoRA initialisation, the batch order, the timesteps and the Ray noise (``--train-seed``).
The evaluation noise, captions and references are the same for every variant and seed, so the
variants pair by seed (``bench/stats.py``). The metrics are ``bench.evaluation``'s.

After every job the summary (``--results``; mean, 95 % t-interval and per-seed values per variant
and step count; paired differences to the baselines) and its Markdown report and plots are
rewritten, and the finished jobs' records are copied into the archive beside it
(``bench/archive.py``). ``--workers N`` runs N jobs at a time (on the CPU one thread each; on a GPU
they share it, ``bench/device.py``); jobs are claimed with lock files, so several invocations on one
``--out`` share the work (``bench/jobs.py``). Every job runs on the device of ``--device``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict

import torch
from accelerate import Accelerator

from proxy.recipe import VP, write_prompts
from training.data import build_cache
from training.prompts import read_prompts

from .archive import archive_of, archive_runs, load_runs, restore_archive
from .device import choose, worker_threads
from .evaluation import Evaluation, teacher_table
from .jobs import reevaluate, work
from .report import report, write_report
from .summary import summary


def summarise(args) -> Dict:
    """Archive the finished jobs, rebuild the summary from the archive and ``<out>/runs``, and write
    it with its report and plots to ``args.results``; returns the summary."""
    with open(os.path.join(args.out, "teacher.json")) as f:
        teacher = json.load(f)
    archive_runs(args)
    data = summary(args, load_runs(args), teacher)
    write_report(data, args.results)
    return data


def prepare(args, data: bool = True) -> Evaluation:
    """The prompts file, the shared phase-1 cache, the reference samples and the teacher's rows of the
    proxy family ``args.recipe`` (default: the VP one), on the device of ``args.device`` (default: the CPU)."""
    recipe = getattr(args, "recipe", VP)
    device = choose(getattr(args, "device", "cpu"))
    os.makedirs(args.out, exist_ok=True)
    prompts = os.path.join(args.out, "prompts.txt")
    if not os.path.isfile(prompts):
        write_prompts(prompts, getattr(args, "captions", None))
    manifest = os.path.join(args.out, "data", "cache", "manifest.json")
    if data and not (os.path.isfile(manifest) and json.load(open(manifest)).get("complete")):
        cfg = recipe.config(os.path.join(args.out, "data.safetensors"), os.path.join(args.out, "data"), prompts,
                            seeds_per_prompt=args.seeds_per_prompt, seed=args.data_seed).validate()
        build_cache(cfg, recipe.load(), read_prompts(prompts), Accelerator(), progress=False)
    ev = Evaluation(args.out, args.eval_per_caption, args.data_seed, recipe, device, getattr(args, "captions", 72))
    teacher_table(args.out, ev)
    return ev


def teacher_report(rows: Dict) -> str:
    """The teacher's rows ``{row: {steps: {metric: value}}}`` as a markdown table, one line per row and steps."""
    cols = ("fd_indep", "fd", "fd_data", "alignment", "diversity", "hf_ratio", "nfe")
    lines = ["| row | steps | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for row, cells in rows.items():
        for n, m in cells.items():
            lines.append(f"| {row} | {n} | " + " | ".join(f"{m[c]:.3g}" if c in m else "" for c in cols) + " |")
    return "\n".join(lines)


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
    if getattr(args, "teacher_only", False):     # the teacher's rows alone (its quality; no cache, no training)
        print(teacher_report(teacher_table(args.out, prepare(args, data=False))))
        return 0
    if getattr(args, "reevaluate", False):     # new metrics from the archived LoRAs, no training
        changes = reevaluate(args, prepare(args, data=False))
        print(report(summarise(args)))
        worst = max((c for _, _, c in changes), default=0.0)
        print(f"re-evaluated {len(changes)} archived jobs; largest change of an archived metric: {worst:.3g}")
        return 0
    threads = worker_threads(choose(getattr(args, "device", "cpu")), args.workers)
    if args.worker or args.workers <= 1:
        if args.worker:
            torch.set_num_threads(threads)
        work(args, prepare(args), summarise)
        if not args.worker:
            print(report(summarise(args)))
        return 0
    prepare(args)          # once, before the workers share it
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if threads > 1:        # beside a GPU: torch.compile's compile workers, a share of the cores each
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(threads))
    procs = [subprocess.Popen([sys.executable, "-m", "bench.quality", *args.argv, "--worker"], env=env)
             for _ in range(args.workers)]
    rc = max(p.wait() for p in procs)
    print(report(summarise(args)))
    return rc
