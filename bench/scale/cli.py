"""``python -m bench.scale``: the command line of the benchmark."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Dict, List, Optional

from .families import FAMILIES, REPO
from .harness import bench_family, bnb_version, write_results
from .recipe import MEMORY_OPTIONS, PROMPTS, recipe
from .table import table
from .watchdog import device_info

DESCRIPTION = ("Real-scale readiness: both phases of ``training.distill`` on full-size SD1.5, SDXL and PixArt-Sigma. "
               "Writes peak memory, s/trajectory, s/step, LoRA size and key-match counts per family.")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=DESCRIPTION)
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    p.add_argument("--variants", default=",".join(MEMORY_OPTIONS),
                   help=f"memory options to run, comma-separated, of {', '.join(MEMORY_OPTIONS)} (fp32/bf16: "
                        f"--base-precision; gc: --gradient-checkpointing; adamw8bit: --optimizer adamw8bit)")
    p.add_argument("--steps", type=int, default=2, help="phase-2 LoRA steps per run (default: 2)")
    p.add_argument("--teacher-steps", type=int, default=2, help="teacher solver steps of phase 1 (default: 2)")
    p.add_argument("--prompts", type=int, default=1, help=f"prompts (trajectories) in phase 1, at most {len(PROMPTS)} (default: 1)")
    p.add_argument("--batch-size", type=int, default=1, help="phase-2 batch size (default: 1)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the runs (default: 2)")
    p.add_argument("--max-rss-gib", type=float, default=12.0, help="stop a run whose RSS passes this (default: 12)")
    p.add_argument("--timeout", type=float, default=3600.0, help="stop a run after this many seconds (default: 3600)")
    p.add_argument("--grid", action="store_true", help="also time the final validation grid (skipped by default)")
    p.add_argument("--no-keymatch", action="store_true", help="skip the diffusers / ComfyUI key-match checks")
    p.add_argument("--keys-first", action="store_true",
                   help="run the key match before the training runs, on an untrained LoRA exported from the full-size "
                        "model (the same keys; without it: on the first measured run's LoRA, or that one when none finished)")
    p.add_argument("--comfyui", default="", help="ComfyUI source folder for the key match (default: $COMFYUI_PATH, "
                                                  "else ../shared/comfyui beside the repository)")
    p.add_argument("--comfyui-python", default="", help="Python that runs ComfyUI (default: .venv-comfyui/bin/python "
                                                         "when present, else this one)")
    p.add_argument("--tiny", action="store_true", help="the tiny models of training/tiny.py (seconds; the test path)")
    p.add_argument("--out", default="", help="results JSON (default: docs/results/scale_cpu.json; with --tiny: required)")
    p.add_argument("--table", default="", metavar="FILE", help="print the README tables of a results file and exit")
    args = p.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for f in args.families:
        if f not in FAMILIES:
            p.error(f"--families: unknown family {f!r} (one of {', '.join(FAMILIES)})")
    for v in args.variants:
        if v not in MEMORY_OPTIONS:
            p.error(f"--variants: unknown variant {v!r} (one of {', '.join(MEMORY_OPTIONS)})")
    if not 1 <= args.prompts <= len(PROMPTS):
        p.error(f"--prompts must be in [1, {len(PROMPTS)}]")
    for name in ("steps", "batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.teacher_steps < 2:      # one prediction has no Theorem-1 spread, and --sigma auto needs one
        p.error("--teacher-steps must be >= 2")
    if args.tiny and not args.out and not args.table:
        p.error("--tiny needs --out (the committed results file is for the full-size run)")
    return args


def _load(path: str) -> Dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.table:
        print(table(_load(args.table)))
        return 0
    out = args.out or os.path.join(REPO, "docs", "results", "scale_cpu.json")
    # families measured before (another --families run) are kept
    results: Dict = _load(out) if os.path.isfile(out) else {}
    shown = list(sys.argv[1:] if argv is None else argv)
    # what one invocation ran with belongs to the rows it measured (a file gathers several --families runs);
    # only the default recipe that the estimates scale to is the file's own
    for key in ("command", "measured", "device", "bitsandbytes"):
        results.pop(key, None)
    results["recipe"] = recipe()
    args.command = "python -m bench.scale " + shlex.join(shown)
    args.device = device_info(args.threads)
    args.bitsandbytes = bnb_version()
    for family in args.families:
        print(f"bench.scale: {family} ...", flush=True)
        rec = bench_family(family, args, results, out)
        write_results(out, results)
        for name, v in rec.get("variants", {}).items():
            print(f"  {name}: {v.get('status')}" + (f", peak RSS {v['peak_rss_gib']} GiB, {v['phase2_s_per_step']:.2f} s/step"
                                                     if v.get("status") == "measured" else ""), flush=True)
    print(f"bench.scale: wrote {out}")
    return 0
