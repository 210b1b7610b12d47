"""``python -m bench.quality``: the few-step quality benchmark on the proxy teacher (command line).

Two modes over the variants of ``bench/variants.py`` (the proxy recipe and its ablations, and the
LCM-LoRA baseline), all trained at an equal budget on one phase-1 cache. ``--proxy flow`` runs the
multi-seed mode on the flow-matching proxy teacher (``proxy.recipe.FLOW``: an SD3-shaped teacher
distilled through the SD3 family's code path) instead of the VP one:

* ``--seeds 0 1 2 ...``: the multi-seed benchmark (``bench/multiseed.py``): every variant once per
  training seed, means with 95 % CIs, paired differences, an archive of every job; the tables of
  ``docs/benchmarks.md``. It runs on a GPU where one is available (``--device``, ``bench/device.py``;
  ``scripts/gpu_rerun.sh`` runs the fair benchmark's whole rerun there).
* without ``--seeds``: one training seed (the lab notebook's earlier single-seed runs,
  ``docs/experiments.md``): at 1, 2, 4 and 8 steps the teacher with DDIM and DPM-Solver++ (the
  25-step DDIM teacher is the reference) and every variant's LoRA; the ``ray`` LoRA also with the
  Theorem-1 probe target mean (its NFE cost beside it); FD-proxy to real images, alignment and
  diversity (``proxy/classifier.py``). Every variant's snapshots (every 300 training steps) are
  also evaluated (FD vs training steps). Writes ``results.json`` (after every variant), ``results.md``,
  ``fd_vs_steps.png`` and ``fd_vs_training_steps.png`` to ``--out``; LoRAs already in ``--out`` are
  reused, and ``--replot`` only redraws the table and plots from the ``results.json`` there.

    python -m bench.quality --seeds 0 1 2 [--workers 2] [--results docs/results/quality_multiseed.json] [--device cuda]
    python -m bench.quality --proxy flow --seeds 0 1 2 --variants ray,no_ts,no_ray [--results ...]
    python -m bench.quality [--variants ray,no_ts,...] [--train-steps 1200] [--out outputs/quality]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from proxy.classifier import evaluate, load_classifier
from proxy.data import all_labels
from proxy.recipe import CLASSIFIER, RECIPES, TEACHER, write_prompts
from proxy.sampling import evaluation_set, load_lora_unet, teacher_samples
from rayflow.atomic_write import write_json, write_text
from training.distill import snapshot_path
from training.models import load_base_model

from . import multiseed
from .device import DEVICES
from .evaluation import STEPS
from .variants import ALL_VARIANTS, MULTISEED_VARIANTS, SNAPSHOT_EVERY, distil, is_lcm, lora_samples


def write_report(results: dict, curves: dict, out: str) -> None:
    """``results.md``, ``fd_vs_steps.png`` and ``fd_vs_training_steps.png`` from the measured results
    (the ``curve <variant> @<step>`` rows of the intermediate LoRAs, which results.json keeps with all
    their metrics, appear only in the training-steps table)."""
    results = {k: v for k, v in results.items() if not k.startswith("curve ")}
    lines = ["| method | " + " | ".join(f"{n} step{'s' if n > 1 else ''}" for n in STEPS) + " |",
             "|---|" + "---|" * len(STEPS)]
    for name, per in results.items():
        cells = [f"{per[str(n)]['fd_proxy']:.2f} / {per[str(n)]['alignment']:.2f} / {per[str(n)]['nfe']}"
                 if str(n) in per else "" for n in STEPS]
        if "25" in per:
            cells = [f"25 steps: {per['25']['fd_proxy']:.2f} / {per['25']['alignment']:.2f} / 50"] + [""] * (len(STEPS) - 1)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if curves:
        lines += ["", "FD-proxy vs training steps (1 / 2 / 4 sampling steps):", "",
                  "| variant | " + " | ".join(f"{k} steps" for k in next(iter(curves.values()))) + " |",
                  "|---|" + "---|" * len(next(iter(curves.values())))]
        for variant, per in curves.items():
            lines.append(f"| {variant} | " + " | ".join(" / ".join(f"{fd:.1f}" for fd in c.values()) for c in per.values()) + " |")
    write_text(os.path.join(out, "results.md"), "Cells: FD-proxy / alignment / NFE per image.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.figure(figsize=(6, 4))
        shown = [name for name, per in results.items() if any(str(n) in per for n in STEPS)
                 and ("[noise]" in name or name.startswith(("teacher D", "LCM")))]
        colours = plt.get_cmap("tab20")
        for i, name in enumerate(shown):
            per = results[name]
            xs = [n for n in STEPS if str(n) in per]
            plt.plot(xs, [per[str(n)]["fd_proxy"] for n in xs], marker="o", label=name, color=colours((2 * i) % 20 + (2 * i) // 20 % 2),
                     linestyle="--" if name.startswith("teacher") else "-")
        ref = results["teacher DDIM (reference)"]["25"]["fd_proxy"]
        plt.axhline(ref, color="k", linestyle="--", label="teacher DDIM 25 steps")
        plt.xscale("log", base=2)
        plt.yscale("log")
        plt.xlabel("sampling steps")
        plt.ylabel("FD-proxy (lower is better)")
        plt.legend(fontsize=7)
        plt.tight_layout()
        plt.savefig(os.path.join(out, "fd_vs_steps.png"), dpi=120)
        if curves:
            fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
            for ax, n in zip(axes, ("1", "2", "4")):
                for variant, per in curves.items():
                    ax.plot([int(k) for k in per], [c[n] for c in per.values()], marker="o",
                            label={"ray": "Time Sampler", "no_ts": "uniform t"}.get(variant, variant))
                ax.set_title(f"{n}-step sampling")
                ax.set_xlabel("training steps")
                ax.set_yscale("log")
            axes[0].set_ylabel("FD-proxy")
            axes[0].legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(os.path.join(out, "fd_vs_training_steps.png"), dpi=120)
    except ImportError:
        print("matplotlib not installed: no plot")


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench.quality``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/quality")
    ap.add_argument("--variants", default=None, help="comma-separated, from " + ", ".join(ALL_VARIANTS) +
                    f" (default: all; with --seeds: {','.join(MULTISEED_VARIANTS)})")
    ap.add_argument("--train-steps", type=int, default=1200)
    ap.add_argument("--seeds-per-prompt", type=int, default=8)
    ap.add_argument("--eval-per-caption", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0, help="the seed of the data (with --seeds: of the shared phase-1 cache and real images)")
    ap.add_argument("--replot", action="store_true",
                    help="only rewrite results.md and the plots from the results.json already in --out "
                         "(with --seeds: the report and plots from the --results JSON)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                    help="multi-seed mode (bench/multiseed.py): train every variant once per training seed on one "
                         "phase-1 cache and report means, 95%% CIs and paired differences")
    ap.add_argument("--workers", type=int, default=1, help="with --seeds: jobs run at a time (one thread each)")
    ap.add_argument("--results", default=None,
                    help="with --seeds: the summary JSON (default <out>/quality_multiseed.json; .md beside it)")
    ap.add_argument("--archive", default=None, metavar="DIR",
                    help="with --seeds: where every finished job's record is kept, to commit beside the summary and "
                         "continue from in a later run (default <results stem>_runs)")
    ap.add_argument("--restore-runs", action="store_true",
                    help="with --seeds: rebuild the archive from the per-seed values of the --results JSON, so that it "
                         "can be extended by more seeds or variants without training the ones it holds again")
    ap.add_argument("--holm-family", default=None, metavar="ARM:BASE,...",
                    help="with --seeds: the headline family, ARM against each BASE at 1/2/4/8 steps on fd_indep, "
                         "judged by Holm-adjusted paired t-tests (e.g. ray:no_ts,no_ray,lcm)")
    ap.add_argument("--reevaluate", action="store_true",
                    help="with --seeds: compute every metric again from the archived LoRAs (no training), add new "
                         "metrics to the archived records, report the largest change of an archived one, and rebuild "
                         "the summary")
    ap.add_argument("--proxy", choices=sorted(RECIPES), default="vp",
                    help="the proxy family (proxy/recipe.py): vp, the epsilon teacher (default), or flow, the SD3-shaped "
                         "rectified-flow teacher (with --seeds; its LCM-LoRA variants are the flow-ODE form, bench/lcm_flow.py, "
                         "and not among the default variants)")
    ap.add_argument("--teacher-only", action="store_true",
                    help="with --seeds: only the reference samples and the teacher's rows (<out>/teacher.json, printed): "
                         "no phase-1 cache, no training; a later run in the same --out reuses them")
    ap.add_argument("--device", choices=DEVICES, default="auto",
                    help="with --seeds: where training and sampling run (bench/device.py): auto = CUDA when available, "
                         "else the CPU; the workers share the one GPU; every record names its device")
    ap.add_argument("--captions", type=int, default=72, choices=range(1, 73), metavar="N",
                    help="with --seeds: only the first N of the 72 proxy captions, for training and evaluation (a "
                         "smaller benchmark for smoke runs, scripts/gpu_rerun.sh --tiny; every table uses all 72)")
    ap.add_argument("--no-compile", action="store_true",
                    help="with --seeds: train the RayFlow step eagerly instead of through torch.compile (no compilation "
                         "time: short runs, CPU tests; the record's proxy_step says so)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    args.recipe = RECIPES[args.proxy]
    if args.proxy != "vp" and args.seeds is None:
        ap.error(f"--proxy {args.proxy} runs the multi-seed benchmark: give --seeds")
    if args.seeds is not None:
        args.argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--worker"]
        default = [v for v in MULTISEED_VARIANTS if args.proxy == "vp" or not is_lcm(v)]
        args.variants = (args.variants or ",".join(default)).split(",")
        unknown = [v for v in args.variants if v not in ALL_VARIANTS]
        if unknown:
            ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(ALL_VARIANTS)}")
        args.data_seed = args.seed
        args.results = args.results or os.path.join(args.out, "quality_multiseed.json")
        return multiseed.main(args)
    args.variants = args.variants or ",".join(ALL_VARIANTS)
    if args.replot:
        with open(os.path.join(args.out, "results.json")) as f:
            saved = json.load(f)
        write_report(saved["results"], saved["curves"], args.out)
        return 0
    os.makedirs(args.out, exist_ok=True)
    prompts = write_prompts(os.path.join(args.out, "prompts.txt"))
    model = load_base_model(TEACHER)
    classifier = load_classifier(CLASSIFIER)
    eval_labels, eval_seeds, real = evaluation_set(all_labels(), args.eval_per_caption, args.seed)
    results = {}

    def record(name, steps, nfe, imgs, extra=None):
        results.setdefault(name, {})[str(steps)] = {**evaluate(classifier, imgs, eval_labels, real, eval_labels),
                                                    "nfe": nfe, **(extra or {})}
        print(f"{name:28s} {steps} steps  NFE {nfe:3d}  " + "  ".join(
            f"{k} {v:.3f}" for k, v in results[name][str(steps)].items() if k != "nfe"), flush=True)

    record("teacher DDIM (reference)", 25, 50, teacher_samples(model, eval_labels, eval_seeds, "ddim", 25))
    for n in STEPS:
        record("teacher DDIM", n, 2 * n, teacher_samples(model, eval_labels, eval_seeds, "ddim", n))
        record("teacher DPM-Solver++", n, 2 * n, teacher_samples(model, eval_labels, eval_seeds, "dpmsolver++", n))
    timings, curves = {}, {}

    def report() -> None:        # rewritten after every variant, so an interrupted run keeps what it measured
        out = {"command": "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:]),
               "seed": args.seed, "train_steps": args.train_steps, "distill_seconds": timings,
               "results": results, "curves": curves}
        write_json(os.path.join(args.out, "results.json"), out, indent=2)

    def evaluate_lora(variant, path, modes, steps=STEPS, name=None):
        unet = load_lora_unet(TEACHER, path)
        for mode in modes:
            for n in steps:
                imgs, nfe = lora_samples(model, unet, variant, eval_labels, eval_seeds, n, mode)
                record(name or (f"LCM-LoRA {variant}" if is_lcm(variant) else f"RayFlow {variant} [{mode}]"), n, nfe, imgs)

    for variant in args.variants.split(","):
        t0 = time.time()
        path = distil(variant, args.out, TEACHER, prompts, args.train_steps, args.seeds_per_prompt, args.seed)
        timings[variant] = time.time() - t0
        evaluate_lora(variant, path, ["noise", "probe2", "probe4"] if variant == "ray" else ["noise"])
        for k in range(SNAPSHOT_EVERY, args.train_steps, SNAPSHOT_EVERY):      # FD-proxy vs training steps
            snap = snapshot_path(path, k)
            if os.path.isfile(snap):
                evaluate_lora(variant, snap, ["noise"], steps=(1, 2, 4), name=f"curve {variant} @{k}")
        for k in range(SNAPSHOT_EVERY, args.train_steps + 1, SNAPSHOT_EVERY):
            name = f"curve {variant} @{k}" if k < args.train_steps else (
                f"LCM-LoRA {variant}" if is_lcm(variant) else f"RayFlow {variant} [noise]")
            if name in results:
                curves.setdefault(variant, {})[str(k)] = {n: results[name][n]["fd_proxy"] for n in ("1", "2", "4")}
        report()
    write_report(results, curves, args.out)      # the table leaves the "curve ..." rows out; results.json keeps them
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
