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
import json
import os
import sys
import time
from typing import Dict, List

import torch

from rayflow import RayProcess, sample_ray

from .data import all_labels, caption_of, render
from .estimate import plan_line
from .workdir import config_key, prepare_work_dir

HERE = os.path.dirname(os.path.abspath(__file__))
TEACHER = os.path.join(HERE, "weights", "teacher")
CLASSIFIER = os.path.join(HERE, "weights", "classifier.safetensors")

SETTINGS = {
    # seeds per caption in the training cache, optimizer steps, eval captions (every k-th) x samples per caption;
    # checkpoint_every: steps between resumable checkpoints and LoRA snapshots (under a minute of training
    # on 2 CPU cores; a checkpoint of these small LoRAs takes well under a second)
    "full": dict(seeds_per_prompt=8, train_steps=1200, batch_size=32, eval_caption_stride=1, eval_per_caption=6,
                 lora_rank=16, checkpoint_every=100),
    "quick": dict(seeds_per_prompt=1, train_steps=120, batch_size=16, eval_caption_stride=2, eval_per_caption=2,
                  lora_rank=8, checkpoint_every=20),
}
TEACHER_STEPS, TEACHER_CFG = 25, 3.0
# Ray variance coefficient: the Theorem-1 spread of this teacher's trajectories is about 0.1 (what
# --sigma auto picks); a single-seed sweep favoured it over 0.3 and 0.5 (docs/experiments.md)
SIGMA = 0.1


def load_lora_unet(teacher: str, lora_path: str):
    """A fresh teacher UNet with the exported LoRA loaded through diffusers' LoRA loader."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(teacher, subfolder="unet", torch_dtype=torch.float32)
    state, alphas = StableDiffusionPipeline.lora_state_dict(lora_path)
    unet.load_lora_adapter(state, prefix="unet", network_alphas=alphas, adapter_name="rayflow")
    return unet.eval()


@torch.no_grad()
def generate(model, unet, labels: torch.Tensor, seeds: torch.Tensor, method: str, steps: int) -> torch.Tensor:
    """Images ``[N, 3, 16, 16]`` for captions ``labels`` ``[N, 4]`` and per-item seeds ``[N]``."""
    from training.data import item_noise, teacher_trajectory

    captions = [caption_of(l) for l in labels.tolist()]
    cond = model.encode_prompts(captions, torch.device("cpu"))          # {"cond": [N, L, D]}
    z = item_noise(0, seeds, (model.latent_channels, 16, 16))
    if method == "rayflow":
        ehs = cond["cond"]

        def eps_model(x, t):
            return unet(x, t, encoder_hidden_states=ehs).sample
        x0 = sample_ray(eps_model, z, z, RayProcess(sigma=SIGMA), model.schedule, model.schedule.ray_timesteps(steps))
    else:
        empty = model.encode_prompts([""], torch.device("cpu"))
        uncond = {k: v.expand(len(captions), *v.shape[1:]) for k, v in empty.items()}
        x0, _, _ = teacher_trajectory(model, z, cond, uncond, method, steps, TEACHER_CFG, 16)
    return model.decode(x0)


def save_grid(rows: Dict[str, torch.Tensor], path: str, scale: int = 4) -> None:
    from PIL import Image, ImageDraw

    names = list(rows)
    n = rows[names[0]].shape[0]
    label_w, cell = 150, 16 * scale
    img = Image.new("RGB", (label_w + n * cell, len(names) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r, name in enumerate(names):
        draw.text((4, r * cell + cell // 2 - 6), name, fill=(0, 0, 0))
        tiles = ((rows[name].clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        for c in range(n):
            tile = Image.fromarray(tiles[c]).resize((cell, cell), Image.NEAREST)
            img.paste(tile, (label_w + c * cell, r * cell))
    img.save(path)


def _snapshot_keeper(lora_path: str):
    """A ``training.distill.run`` snapshot hook that keeps only the newest ``<lora>-step<N>`` file."""
    stem = os.path.basename(lora_path)[: -len(".safetensors")] + "-step"
    folder = os.path.dirname(lora_path) or "."

    def keep_latest(path: str, step: int) -> None:
        for name in os.listdir(folder):
            if name.startswith(stem) and name.endswith(".safetensors") and name != os.path.basename(path):
                os.remove(os.path.join(folder, name))
    return keep_latest


def distil_config(args, s: Dict, prompts_path: str, lora_path: str):
    """The ``DistillConfig`` of this demo run, its work folder not yet chosen."""
    from training.config import DistillConfig

    every = s["checkpoint_every"]
    return DistillConfig(model=args.teacher, prompts=prompts_path, output=lora_path, work_dir="",
                         resolution=16, seeds_per_prompt=s["seeds_per_prompt"], seed=args.seed,
                         teacher_solver="dpmsolver++", teacher_steps=TEACHER_STEPS, teacher_cfg=TEACHER_CFG,
                         sigma=SIGMA, shard_size=64, train_steps=s["train_steps"], batch_size=s["batch_size"],
                         learning_rate=1e-3, lr_warmup=20, lora_rank=s["lora_rank"], lora_alpha=float(s["lora_rank"]),
                         checkpoint_every=every, save_every=every, log_every=min(20, every), recommended_steps=2,
                         resume=False)


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
    from training.distill import INPUT_ERRORS, run
    from training.models import load_base_model

    from .classifier import evaluate, load_classifier

    # 1. prompts: every caption of the proxy data
    labels = all_labels()
    prompts_path = os.path.join(args.out, "prompts.txt")
    with open(prompts_path, "w", encoding="utf-8") as f:
        f.writelines(caption_of(l) + "\n" for l in labels.tolist())
    # 2-3. distil through the same CLI code path as SD1.5 / SDXL / PixArt, in this configuration's own folder
    lora_path = os.path.join(args.out, "rayflow_proxy.safetensors")
    cfg = distil_config(args, s, prompts_path, lora_path)
    key = config_key(mode, cfg)
    cfg.work_dir = args.work_dir or os.path.join(args.out, "work", key)
    eval_images = len(labels[::s["eval_caption_stride"]]) * s["eval_per_caption"]
    print(plan_line(mode, len(labels) * s["seeds_per_prompt"], TEACHER_STEPS, TEACHER_CFG, s["train_steps"],
                    s["batch_size"], eval_images, cfg.work_dir), flush=True)
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
    t0 = time.time()
    try:
        run(cfg, on_snapshot=_snapshot_keeper(lora_path))
    except INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to continue (checkpoints every {s['checkpoint_every']} "
              f"steps in {cfg.work_dir})", file=sys.stderr)
        return 130
    _snapshot_keeper(lora_path)(lora_path, s["train_steps"])           # the final LoRA supersedes the snapshots
    t_distill = time.time() - t0
    # 4. evaluate
    model = load_base_model(teacher)
    unet = load_lora_unet(teacher, lora_path)
    classifier = load_classifier(args.classifier)
    k = s["eval_per_caption"]
    eval_labels = labels[::s["eval_caption_stride"]].repeat_interleave(k, 0)
    eval_seeds = 10_000_000 + torch.arange(len(eval_labels))             # disjoint from training seeds
    real = render(eval_labels, torch.Generator().manual_seed(args.seed + 99))
    results, images = {}, {}
    runs = [("teacher DDIM 25", "ddim", TEACHER_STEPS)] + [(f"RayFlow {n}", "rayflow", n) for n in (1, 2, 4)] \
        + [(f"DDIM {n}", "ddim", n) for n in (1, 2, 4)]
    for name, method, steps in runs:
        imgs = generate(model, unet if method == "rayflow" else None, eval_labels, eval_seeds, method, steps)
        images[name] = imgs
        results[name] = {**evaluate(classifier, imgs, eval_labels, real, eval_labels), "steps": steps,
                         "nfe_per_image": steps * (1 if method == "rayflow" else 2)}
    results["real data"] = evaluate(classifier, real, eval_labels,
                                    render(eval_labels, torch.Generator().manual_seed(args.seed + 7)), eval_labels)
    pick = torch.arange(0, len(eval_labels), max(1, len(eval_labels) // 10))[:10]
    save_grid({name: images[name][pick] for name in images}, os.path.join(args.out, "samples.png"))
    report = {"mode": mode, "seed": args.seed, "work_dir": cfg.work_dir, "distill_seconds": round(t_distill, 1),
              "total_seconds": round(time.time() - t_start, 1), "settings": s, "metrics": results}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    lines = [f"# RayFlow proxy demo ({mode})", "", f"Command: `python -m proxy.demo{' --quick' if args.quick else ''} "
             f"--seed {args.seed}`; distillation {t_distill:.0f} s, total {time.time() - t_start:.0f} s.", "",
             "| sampler | steps | NFE / image | FD-proxy | alignment | diversity |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r.get('steps', '')} | {r.get('nfe_per_image', '')} | {r['fd_proxy']:.3f} | "
                     f"{r['alignment']:.3f} | {r['diversity']:.3f} |")
    lines += ["", "FD-proxy: Frechet distance in the proxy classifier's features to real images of the same captions "
              "(lower is better). Alignment: all four caption attributes recognised. Diversity: within-caption "
              "feature spread relative to real data. Grid: `samples.png` (rows: samplers; columns: the same "
              "captions and seeds)."]
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {lora_path}, samples.png, metrics.json and report.md to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
