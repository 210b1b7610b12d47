"""``python -m bench.scale``: the command line of the benchmark."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Dict, List, Optional

import diffusers
import peft
import torch

from .cost import MFU, counted_record
from .count import count_family
from .families import FAMILIES, REGISTRY, REPO
from .gpu import GPU_FAMILIES, GPU_OPTIONS, measure
from .harness import bench_family, bnb_version, write_results
from .recipe import MEMORY_OPTIONS, PROMPTS, recipe
from .table import table
from .watchdog import device_info

DESCRIPTION = ("Real-scale readiness: both phases of ``training.distill`` on full-size "
               f"{', '.join(f.label for f in REGISTRY.values())} ({', '.join(FAMILIES)}). Writes peak memory, "
               "s/trajectory, s/step, LoRA size and key-match counts per family.")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line, checked; ``families`` and ``variants`` as lists (their defaults depend on the mode)."""
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=DESCRIPTION)
    p.add_argument("--families", default=None, help=f"comma-separated, of {', '.join(FAMILIES)} (default: all; "
                                                      f"with --gpu-measure: {','.join(GPU_FAMILIES)})")
    p.add_argument("--variants", default=None,
                   help=f"memory options to run, comma-separated, of {', '.join(MEMORY_OPTIONS)} (fp32/bf16/nf4/int8: "
                        f"--base-precision, nf4 and int8 for the flow families only; gc: --gradient-checkpointing; "
                        f"adamw8bit: --optimizer adamw8bit; default: all of each family's; with --gpu-measure: "
                        f"{','.join(GPU_OPTIONS)})")
    p.add_argument("--blocks", default=None, metavar="A,B",
                   help="measure at full width with A and then B units of depth instead of all, and extrapolate every "
                        "figure linearly to the full depth (labelled as extrapolated), for a family whose full model does "
                        "not fit this machine's memory; a unit: " + "; ".join(
                            f"{f.key} {', '.join(f'{n} {k}' for k, n in f.block_unit.items())} (of {f.units(f.config())})"
                            for f in REGISTRY.values() if f.block_unit))
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
    p.add_argument("--flops", action="store_true",
                   help="count each family's FLOPs (teacher step, phase-2 step) and phase-2 memory on the meta device "
                        "and estimate GPU hours of the default recipe (a few minutes on a CPU, no weights; default --out "
                        "docs/results/scale_flops.json)")
    p.add_argument("--mfu", type=float, default=MFU,
                   help=f"with --flops: the model-FLOPs utilisation the GPU estimates assume (default: {MFU})")
    p.add_argument("--gpu-measure", action="store_true",
                   help="time teacher steps and phase-2 steps and read the peak memory on this machine's GPU, full size "
                        "in bf16 (a few minutes; with --tiny: the tiny models, on the CPU without a GPU; default --out "
                        "docs/results/scale_gpu.json)")
    p.add_argument("--out", default="", help="results JSON (default: docs/results/scale_cpu.json; with --tiny: required)")
    p.add_argument("--table", nargs="+", default=[], metavar="FILE",
                   help="print the README tables of a CPU results file, with the GPU estimates of a --flops file and "
                        "the measurements of a --gpu-measure file when given after it, and exit")
    args = p.parse_args(argv)
    args.families = _names(args.families, GPU_FAMILIES if args.gpu_measure else FAMILIES)
    for f in args.families:
        if f not in FAMILIES:
            p.error(f"--families: unknown family {f!r} (one of {', '.join(FAMILIES)})")
    given = args.variants is not None
    args.variants = _names(args.variants, GPU_OPTIONS if args.gpu_measure else MEMORY_OPTIONS)
    for v in args.variants:
        if v not in MEMORY_OPTIONS:
            p.error(f"--variants: unknown variant {v!r} (one of {', '.join(MEMORY_OPTIONS)})")
        for f in args.families:
            if given and v not in REGISTRY[f].memory_options:
                p.error(f"--variants: {v} is not a memory option of {f} (its options: "
                        f"{', '.join(REGISTRY[f].memory_options)})")
    args.blocks = _blocks(p, args)
    if not 1 <= args.prompts <= len(PROMPTS):
        p.error(f"--prompts must be in [1, {len(PROMPTS)}]")
    for name in ("steps", "batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.teacher_steps < 2:      # one prediction has no Theorem-1 spread, and --sigma auto needs one
        p.error("--teacher-steps must be >= 2")
    if args.tiny and not args.out and not args.table:
        p.error("--tiny needs --out (the committed results file is for the full-size run)")
    if args.flops and args.gpu_measure:
        p.error("--flops and --gpu-measure are separate runs (each writes its own results file)")
    if not 0 < args.mfu <= 1:
        p.error("--mfu must be in (0, 1]")
    return args


def _blocks(p: argparse.ArgumentParser, args) -> List[int]:
    """``--blocks A,B`` checked: two depths, increasing, below each family's full depth."""
    if args.blocks is None:
        return []
    try:
        blocks = [int(b) for b in args.blocks.split(",")]
    except ValueError:
        blocks = []
    if len(blocks) != 2 or not 1 <= blocks[0] < blocks[1]:
        p.error(f"--blocks takes two depths A,B with 1 <= A < B, got {args.blocks!r}")
    for f in args.families:
        fam = REGISTRY[f]
        if not fam.block_unit:
            p.error(f"--blocks: {f} is measured whole (it has no unit of depth)")
        if not args.tiny and blocks[1] >= fam.units(fam.config()):
            p.error(f"--blocks: {f} has {fam.units(fam.config())} units of depth; measure fewer")
    if args.flops or args.gpu_measure:
        p.error("--blocks is for the CPU runs (--flops and --gpu-measure take the full model)")
    return blocks


def _names(given: Optional[str], default) -> List[str]:
    return list(default) if given is None else [n.strip() for n in given.split(",") if n.strip()]


def _load(path: str) -> Dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(argv: Optional[List[str]] = None) -> int:
    """Print the tables (``--table``), count (``--flops``), measure on a GPU (``--gpu-measure``) or
    run the CPU benchmark; returns the exit code."""
    args = parse_args(argv)
    if args.table:
        files = [_load(path) for path in args.table]
        kinds = {f.get("kind", "cpu"): f for f in files}
        print(table(kinds.get("cpu", {}), kinds.get("counted"), kinds.get("gpu measurement")))
        return 0
    shown = list(sys.argv[1:] if argv is None else argv)
    command = "python -m bench.scale " + shlex.join(shown)
    if args.flops or args.gpu_measure:
        return _gpu_run(args, command)
    out = args.out or os.path.join(REPO, "docs", "results", "scale_cpu.json")
    # families measured before (another --families run) are kept
    results: Dict = _load(out) if os.path.isfile(out) else {}
    # what one invocation ran with belongs to the rows it measured (a file gathers several --families runs);
    # only the default recipe that the estimates scale to is the file's own
    for key in ("command", "measured", "device", "bitsandbytes"):
        results.pop(key, None)
    results["recipe"] = recipe()
    args.command = command
    args.device = device_info(args.threads)
    args.bitsandbytes = bnb_version()
    all_variants = args.variants
    for family in args.families:
        print(f"bench.scale: {family} ...", flush=True)
        args.variants = [v for v in all_variants if v in REGISTRY[family].memory_options]
        rec = bench_family(family, args, results, out)
        write_results(out, results)
        for name, v in rec.get("variants", {}).items():
            print(f"  {name}: {v.get('status')}" + (f", peak RSS {v['peak_rss_gib']} GiB, {v['phase2_s_per_step']:.2f} s/step"
                                                     if v.get("status") in ("measured", "extrapolated") else ""), flush=True)
    print(f"bench.scale: wrote {out}")
    return 0


def _gpu_run(args, command: str) -> int:
    """``--flops`` (count on the meta device, estimate GPU hours) or ``--gpu-measure`` (time on the
    GPU): write the results file, the figures of an earlier run's other families kept."""
    name = "scale_flops.json" if args.flops else "scale_gpu.json"
    out = args.out or os.path.join(REPO, "docs", "results", name)
    if args.flops:
        old = _load(out).get("families", {}) if os.path.isfile(out) else {}
        counts = {f: {k: v for k, v in c.items() if k != "estimates"} for f, c in old.items()}
        for family in args.families:
            print(f"bench.scale: counting {family} on the meta device ...", flush=True)
            counts[family] = count_family(family, tiny=args.tiny)
        results = counted_record(counts, args.mfu)
    else:
        old = _load(out).get("families", {}) if os.path.isfile(out) else {}
        try:
            results = measure(args.families, args.variants, tiny=args.tiny)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        results["families"] = {**old, **results["families"]}
    versions = {m.__name__: m.__version__ for m in (torch, diffusers, peft)}
    write_results(out, {"command": command, "versions": versions, **results})
    print(f"bench.scale: wrote {out}")
    return 0
