"""Few-step quality benchmark on the proxy teacher (issue: proof on a proxy).

At 1, 2, 4 and 8 steps: the teacher with DDIM and with DPM-Solver++ (the 25-step DDIM teacher is
the reference), RayFlow LoRAs distilled at an equal training budget — the full recipe and its
ablations (no Time Sampler, no Ray trajectory, sigma 0.1 / 0.5) — and the cost in NFEs of each
way of obtaining the target mean (noise mode vs a Theorem-1 probe of the teacher). Metrics: FD-proxy,
alignment and diversity (``proxy/classifier.py``). Writes ``results.json``, ``results.md`` and
``fd_vs_steps.png`` to ``--out``.

    python -m bench.quality [--variants ray,no_ts,no_ray,sigma0.1,sigma0.5] [--train-steps 1200] [--out outputs/quality]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from rayflow import RayProcess, estimate_target_mean_vp, sample_ray

VARIANTS = {
    "ray": dict(),
    "no_ts": dict(no_time_sampler=True),
    "no_ray": dict(no_ray=True),
    "sigma0.1": dict(sigma=0.1),
    "sigma0.5": dict(sigma=0.5),
    "linear": dict(ray_path="linear"),
}
STEPS = (1, 2, 4, 8)


def distil(variant: str, out: str, teacher: str, prompts: str, train_steps: int, seeds: int, seed: int) -> str:
    from training.config import DistillConfig
    from training.distill import run

    path = os.path.join(out, f"lora_{variant}.safetensors")
    if os.path.isfile(path):
        return path
    cfg = DistillConfig(model=teacher, prompts=prompts, output=path, work_dir=os.path.join(out, f"work_{variant}"),
                        resolution=16, seeds_per_prompt=seeds, seed=seed, teacher_solver="dpmsolver++",
                        teacher_steps=25, teacher_cfg=3.0, shard_size=64, train_steps=train_steps, batch_size=32,
                        learning_rate=1e-3, lr_warmup=20, lora_rank=16, lora_alpha=16.0, checkpoint_every=100_000,
                        log_every=50, **VARIANTS[variant])
    cfg.validate()
    # every variant reads the same phase-1 cache (same teacher, prompts, seeds): equal data and budget
    shared = os.path.join(out, "work_ray", "cache")
    if variant != "ray" and os.path.isdir(shared) and not os.path.isdir(os.path.join(cfg.work_dir, "cache")):
        os.makedirs(cfg.work_dir, exist_ok=True)
        os.symlink(os.path.abspath(shared), os.path.join(cfg.work_dir, "cache"))
    run(cfg, progress=False)
    return path


@torch.no_grad()
def rayflow_samples(model, unet, labels, seeds, steps, process, mu_mode: str):
    from training.data import item_noise

    from proxy.data import caption_of

    captions = [caption_of(l) for l in labels.tolist()]
    cond = model.encode_prompts(captions, torch.device("cpu"))             # {"cond": [N, L, D]}
    z = item_noise(0, seeds, (model.latent_channels, 16, 16))
    extra_nfe = 0
    mu = z
    if mu_mode.startswith("probe"):
        P = int(mu_mode[len("probe"):])
        uncond = {k: v.expand(len(captions), *v.shape[1:]) for k, v in model.encode_prompts([""], torch.device("cpu")).items()}
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}

        def teacher_eps(x, t):       # the base model with CFG 3 (2 evaluations per probe step)
            e = model.denoise(torch.cat([x, x]), torch.cat([t, t]).round().long(), both, 16)
            eu, ec = e.chunk(2)
            return eu + 3.0 * (ec - eu)

        mu = estimate_target_mean_vp(teacher_eps, z, model.schedule, P, process).eps_mu
        extra_nfe = 2 * P

    def eps_model(x, t):
        return unet(x, t, encoder_hidden_states=cond["cond"]).sample

    x0 = sample_ray(eps_model, z, mu, process, model.schedule, model.schedule.ray_timesteps(steps))
    return model.decode(x0), steps + extra_nfe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/quality")
    ap.add_argument("--variants", default="ray,no_ts,no_ray,sigma0.1,sigma0.5")
    ap.add_argument("--train-steps", type=int, default=1200)
    ap.add_argument("--seeds-per-prompt", type=int, default=8)
    ap.add_argument("--eval-per-caption", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from proxy.classifier import evaluate, load_classifier
    from proxy.data import all_labels, caption_of, render
    from proxy.demo import CLASSIFIER, TEACHER, generate, load_lora_unet
    from training.models import load_base_model

    os.makedirs(args.out, exist_ok=True)
    labels = all_labels()
    prompts = os.path.join(args.out, "prompts.txt")
    with open(prompts, "w") as f:
        f.writelines(caption_of(l) + "\n" for l in labels.tolist())
    model = load_base_model(TEACHER)
    classifier = load_classifier(CLASSIFIER)
    eval_labels = labels.repeat_interleave(args.eval_per_caption, 0)
    eval_seeds = 10_000_000 + torch.arange(len(eval_labels))
    real = render(eval_labels, torch.Generator().manual_seed(args.seed + 99))
    results = {}

    def record(name, steps, nfe, imgs, extra=None):
        results.setdefault(name, {})[str(steps)] = {**evaluate(classifier, imgs, eval_labels, real, eval_labels),
                                                    "nfe": nfe, **(extra or {})}
        print(f"{name:28s} {steps} steps  NFE {nfe:3d}  " + "  ".join(
            f"{k} {v:.3f}" for k, v in results[name][str(steps)].items() if k != "nfe"), flush=True)

    record("teacher DDIM (reference)", 25, 50, generate(model, None, eval_labels, eval_seeds, "ddim", 25))
    for n in STEPS:
        record("teacher DDIM", n, 2 * n, generate(model, None, eval_labels, eval_seeds, "ddim", n))
        record("teacher DPM-Solver++", n, 2 * n, generate(model, None, eval_labels, eval_seeds, "dpmsolver++", n))
    timings = {}
    for variant in args.variants.split(","):
        t0 = time.time()
        path = distil(variant, args.out, TEACHER, prompts, args.train_steps, args.seeds_per_prompt, args.seed)
        timings[variant] = time.time() - t0
        unet = load_lora_unet(TEACHER, path)
        v = VARIANTS[variant]
        process = RayProcess(sigma=1.0) if v.get("no_ray") else RayProcess(sigma=v.get("sigma", 0.3), path=v.get("ray_path", "sigma"))
        modes = ["noise", "probe2", "probe4"] if variant == "ray" else ["noise"]
        for mode in modes:
            for n in STEPS:
                imgs, nfe = rayflow_samples(model, unet, eval_labels, eval_seeds, n, process, mode)
                record(f"RayFlow {variant} [{mode}]", n, nfe, imgs)
    report = {"command": "python -m bench.quality " + " ".join(argv or []), "seed": args.seed,
              "train_steps": args.train_steps, "distill_seconds": timings, "results": results}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    lines = ["| method | " + " | ".join(f"{n} step{'s' if n > 1 else ''}" for n in STEPS) + " |",
             "|---|" + "---|" * len(STEPS)]
    for name, per in results.items():
        cells = [f"{per[str(n)]['fd_proxy']:.2f} / {per[str(n)]['alignment']:.2f} / {per[str(n)]['nfe']}"
                 if str(n) in per else "" for n in STEPS]
        if "25" in per:
            cells = [f"25 steps: {per['25']['fd_proxy']:.2f} / {per['25']['alignment']:.2f} / 50"] + [""] * (len(STEPS) - 1)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("Cells: FD-proxy / alignment / NFE per image.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.figure(figsize=(6, 4))
        for name, per in results.items():
            xs = [n for n in STEPS if str(n) in per]
            if xs and ("[noise]" in name or name.startswith("teacher D")):
                plt.plot(xs, [per[str(n)]["fd_proxy"] for n in xs], marker="o", label=name)
        ref = results["teacher DDIM (reference)"]["25"]["fd_proxy"]
        plt.axhline(ref, color="k", linestyle="--", label="teacher DDIM 25 steps")
        plt.xscale("log", base=2)
        plt.yscale("log")
        plt.xlabel("sampling steps")
        plt.ylabel("FD-proxy (lower is better)")
        plt.legend(fontsize=7)
        plt.tight_layout()
        plt.savefig(os.path.join(args.out, "fd_vs_steps.png"), dpi=120)
    except ImportError:
        print("matplotlib not installed: no plot")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
