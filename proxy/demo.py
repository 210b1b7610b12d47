"""The main job on the embedded default: distil and evaluate a RayFlow LoRA for the proxy teacher.

1. proxy captions -> a prompts file; 2. the committed proxy teacher (``proxy/weights/teacher``);
3. ``training.distill`` (the same code path as for SD1.5) -> ``rayflow_proxy.safetensors``;
4. the exported file is loaded back through diffusers' LoRA loader and evaluated against the
teacher: a sample grid (teacher 25 steps, RayFlow 1/2/4 steps, DDIM 1/2/4 steps; same seeds and
captions) and FD-proxy / alignment / diversity in ``metrics.json`` and ``report.md``.

    python -m proxy.demo [--quick] [--out outputs/demo] [--work-dir DIR]

Each configuration trains in its own work folder (``proxy/workdir.py``), checkpoints every few
dozen steps and keeps the latest LoRA snapshot next to the output, so a stopped run continues
where it stopped when the same command runs again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List

from training.config import DEFAULT_PRESET, preset_options
from training.distill import INPUT_ERRORS, run

from .data import all_labels
from .demo_eval import DemoEvaluation
from .estimate import plan_line
from .recipe import CLASSIFIER, TEACHER, TEACHER_CFG, TEACHER_STEPS, proxy_config, write_prompts
from .workdir import config_key, prepare_work_dir

SETTINGS = {
    # seeds per caption in the training cache, optimizer steps, eval captions (every k-th) x samples per caption;
    # checkpoint_every: steps between resumable checkpoints and LoRA snapshots (under a minute of training
    # on 2 CPU cores; a checkpoint of these small LoRAs takes well under a second)
    "full": dict(seeds_per_prompt=8, train_steps=1200, batch_size=32, eval_caption_stride=1, eval_per_caption=6,
                 lora_rank=16, checkpoint_every=100, eval_every=300),
    "quick": dict(seeds_per_prompt=1, train_steps=120, batch_size=16, eval_caption_stride=2, eval_per_caption=2,
                  lora_rank=8, checkpoint_every=20, eval_every=60),
}


def _remove_snapshots(lora_path: str, keep: str = "") -> None:
    """Delete the ``<lora>-step<N>.safetensors`` snapshots next to ``lora_path``, except ``keep``."""
    stem = os.path.basename(lora_path)[: -len(".safetensors")] + "-step"
    folder = os.path.dirname(lora_path) or "."
    for name in os.listdir(folder):
        if name.startswith(stem) and name.endswith(".safetensors") and name != os.path.basename(keep):
            os.remove(os.path.join(folder, name))


def _snapshot_hook(lora_path: str, every: int, write):
    """A ``training.distill.run`` snapshot hook: keep only the newest snapshot, and every ``every``
    steps call ``write(path, step)`` to evaluate it (grid, metrics, report)."""
    def on_snapshot(path: str, step: int) -> None:
        _remove_snapshots(lora_path, keep=path)
        if every and step % every == 0:
            write(path, step)
    return on_snapshot


def distil_config(args, s: Dict, prompts_path: str, lora_path: str):
    """The ``DistillConfig`` of this demo run (the proxy recipe at this mode's size, with the values of
    ``python -m training.distill``'s default preset), its work folder not yet chosen."""
    every = s["checkpoint_every"]
    return proxy_config(lora_path, "", prompts_path, **preset_options(DEFAULT_PRESET), model=args.teacher,
                        seeds_per_prompt=s["seeds_per_prompt"],
                        seed=args.seed, train_steps=s["train_steps"], batch_size=s["batch_size"],
                        lora_rank=s["lora_rank"], lora_alpha=float(s["lora_rank"]), checkpoint_every=every,
                        save_every=every, log_every=min(20, every), recommended_steps=2,
                        resume=False, overwrite=True)   # the demo owns its --out folder


def main(argv: List[str] = None) -> int:
    """``python -m proxy.demo``; returns the exit code (2 for bad input, 130 when interrupted)."""
    try:
        return _demo(argv)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again; the LoRA training is kept and not repeated", file=sys.stderr)
        return 130


def _demo(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller run (CI's smoke test); the run prints its estimated duration")
    ap.add_argument("--out", default="outputs/demo", help="output folder")
    ap.add_argument("--work-dir", default=None,
                    help="folder for the phase-1 cache, checkpoints and logs (default: <out>/work/<mode>-<hash of the "
                         "settings>); one that holds a run of other settings is renamed to <folder>.set-aside-<its key>")
    ap.add_argument("--seed", type=int, default=0, help="seed of the distillation and of the evaluation noise")
    ap.add_argument("--teacher", default=TEACHER, help="proxy teacher folder (default: the committed one)")
    ap.add_argument("--classifier", default=CLASSIFIER, help="metrics classifier (default: the committed one)")
    args = ap.parse_args(argv)
    teacher = args.teacher
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    for path, what, cmd in ((teacher, "proxy teacher", "python -m proxy.teacher"),
                            (args.classifier, "proxy classifier", "python -m proxy.classifier")):
        if not os.path.exists(path):
            print(f"error: the {what} is missing ({os.path.relpath(path)}); rebuild it with `{cmd}`", file=sys.stderr)
            return 2
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    # 1. prompts: every caption of the proxy data
    labels = all_labels()
    prompts_path = write_prompts(os.path.join(args.out, "prompts.txt"))
    # 2-3. distil through the same CLI code path as SD1.5 / SDXL / PixArt, in this configuration's own folder
    lora_path = os.path.join(args.out, "rayflow_proxy.safetensors")
    cfg = distil_config(args, s, prompts_path, lora_path)
    key = config_key(mode, cfg)
    cfg.work_dir = args.work_dir or os.path.join(args.out, "work", key)
    eval_images = len(labels[::s["eval_caption_stride"]]) * s["eval_per_caption"]
    print(plan_line(mode, len(labels) * s["seeds_per_prompt"], TEACHER_STEPS, TEACHER_CFG, s["train_steps"],
                    s["batch_size"], eval_images, cfg.work_dir, (s["train_steps"] - 1) // s["eval_every"]), flush=True)
    try:
        continuing = prepare_work_dir(cfg.work_dir, key, {"mode": mode, "seed": args.seed, **s})
    except OSError as exc:
        print(f"error: cannot use the work folder {cfg.work_dir}: {exc}", file=sys.stderr)
        return 2
    ckpt = os.path.join(cfg.work_dir, "checkpoint")
    cfg.resume = os.path.isdir(ckpt) or os.path.isdir(ckpt + ".old")
    if continuing:
        print(f"continuing the stopped run in {cfg.work_dir} ({'from its last checkpoint' if cfg.resume else 'phase-1 shards kept'})",
              flush=True)
    evaluation = DemoEvaluation(teacher, args.classifier, labels, s["eval_caption_stride"], s["eval_per_caption"],
                                args.seed, TEACHER_STEPS, args.out)
    command = f"python -m proxy.demo{' --quick' if args.quick else ''} --seed {args.seed}"
    heading = f"# RayFlow proxy demo ({mode})"
    report = {"mode": mode, "seed": args.seed, "work_dir": cfg.work_dir, "settings": s}

    def write_snapshot(path: str, step: int) -> None:
        status = (f"LoRA snapshot after {step} of {s['train_steps']} steps ({os.path.basename(path)}); "
                  f"training goes on, the final report replaces this one.")
        evaluation.write(*evaluation.evaluate(path), report, heading, command, status, snapshot=step)

    t0 = time.time()
    try:
        run(cfg, on_snapshot=_snapshot_hook(lora_path, s["eval_every"], write_snapshot))
    except INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to continue (checkpoints every {s['checkpoint_every']} "
              f"steps in {cfg.work_dir})", file=sys.stderr)
        return 130
    _remove_snapshots(lora_path)                                          # the final LoRA supersedes them
    t_distill = time.time() - t0
    # 4. evaluate the final LoRA
    results, images = evaluation.evaluate(lora_path)
    total = time.time() - t_start
    report.update(distill_seconds=round(t_distill, 1), total_seconds=round(total, 1))
    lines = evaluation.write(results, images, report, heading, command,
                             f"distillation {t_distill:.0f} s, total {total:.0f} s.")
    print("\n".join(lines))
    print(f"\nwrote {lora_path}, samples.png, metrics.json and report.md to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
