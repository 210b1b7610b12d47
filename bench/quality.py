"""Few-step quality benchmark on the proxy teacher (issue: proof on a proxy).

At 1, 2, 4 and 8 steps: the teacher with DDIM and with DPM-Solver++ (the 25-step DDIM teacher is
the reference), RayFlow LoRAs distilled at an equal training budget — the full recipe (``RECIPE``:
sigma 0.1, truncated-SNR loss weighting, Time Sampler, the default LoRA targets) and its ablations
(no Time Sampler, no Ray trajectory, sigma 0.03 / 0.3 / 0.5, the linear Ray path, the plain
noise-space loss, a LoRA on the attention and feed-forward projections only, start anchoring, rank
64, the one-step map of eq. 7.4) and an LCM-style consistency-distilled LoRA on the same data and steps — and the cost in NFEs
of each way of obtaining the target mean (noise mode vs a Theorem-1 probe of the teacher). The
``ray`` and ``no_ts`` LoRAs are also saved every 300 training steps to measure FD-proxy vs training
steps (the Time Sampler's efficiency). Metrics: FD-proxy, alignment and diversity
(``proxy/classifier.py``). Writes ``results.json`` (after every variant), ``results.md``,
``fd_vs_steps.png`` and ``fd_vs_training_steps.png`` to ``--out``; LoRAs already in ``--out`` are
reused, and ``--replot`` only redraws the table and plots from the ``results.json`` there.

    python -m bench.quality [--variants ray,no_ts,...] [--train-steps 1200] [--out outputs/quality]
    python -m bench.quality --seeds 0 1 2 [--workers 2] [--results docs/results/quality_multiseed.json]

``--seeds`` is the multi-seed benchmark of ``bench/multiseed.py`` (means, 95 % CIs, paired seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from proxy.demo import SIGMA
from rayflow import RayProcess, estimate_target_mean_vp, sample_ray
from training.config import ATTENTION_TARGETS, PRESETS, DistillConfig

# the recipe every RayFlow variant shares (the demo's): sigma 0.1 and the truncated-SNR loss weighting
RECIPE = dict(sigma=SIGMA, loss_weighting="truncated-snr")
VARIANTS = {              # each one changes one thing of RECIPE (plus the Time Sampler, on by default)
    "ray": dict(),
    "no_ts": dict(no_time_sampler=True),
    "no_ray": dict(no_ray=True),
    "sigma0.03": dict(sigma=0.03),
    "sigma0.3": dict(sigma=0.3),
    "sigma0.5": dict(sigma=0.5),
    "linear": dict(ray_path="linear"),
    "eps_loss": dict(loss_weighting="eps"),
    # LoRA on the attention and feed-forward projections only (no convolutions)
    "attn_lora": dict(lora_targets=",".join(ATTENTION_TARGETS)),
    # the top of the Ray process centred on the seeded start (docs/method.md eq. 7.3), over the top 10 % / 50 %
    "anchor0.1": dict(start_anchor=0.1),
    "anchor0.5": dict(start_anchor=0.5),
    # four times the LoRA rank (64 instead of 16, alpha scaled with it: the same initial update scale)
    "rank64": dict(lora_rank=64, lora_alpha=64.0),
    # eq. 7.4: start anchoring with the Ray noise tapered to the exact start point at T - 1; and half (three
    # quarters) of every batch at T - 1, the one-step sampler's timestep
    "taper_anchor0.5": dict(start_anchor=0.5, anchor_taper=True),
    "top50": dict(top_share=0.5),
    "top75": dict(top_share=0.75),
    # the Time Sampler's weak points: a gradient-norm target, half the proposal uniform,
    # 300 uniform warm-up steps, the biased objective (sampled timesteps at weight 1), one density for all
    "ts_grad": dict(time_sampler_target="grad"),
    "ts_mix50": dict(time_sampler_uniform=0.5),
    "ts_warmup": dict(time_sampler_warmup=300),
    "ts_biased": dict(time_sampler_biased=True),
    "ts_static": dict(time_sampler_input="none"),
    # the one-step preset of training.distill (--preset one-step), as the CLI applies it
    "one_step": {k: v for k, v in PRESETS["one-step"].items() if k != "recommended_steps"},
    "lcm": dict(),            # LCM-style consistency distillation on the same cache (bench/lcm_baseline.py)
}
COMBINED = {"rank64_anchor0.5": ("rank64", "anchor0.5"),      # variants that combine two of the above
            "top50_taper_anchor0.5": ("top50", "taper_anchor0.5"),
            "top75_taper_anchor0.5": ("top75", "taper_anchor0.5"),
            # the one-step preset with uniform timesteps: the Time Sampler's share in the one-step claim
            "one_step_no_ts": ("one_step", "no_ts")}
VARIANTS.update({name: {k: v for part in parts for k, v in VARIANTS[part].items()} for name, parts in COMBINED.items()})
MULTISEED_VARIANTS = ("ray", "no_ts", "no_ray", "lcm")      # the --seeds default: the recipe and its baselines
STEPS = (1, 2, 4, 8)
CURVE_VARIANTS = ("ray", "no_ts", "ts_grad", "ts_mix50", "ts_warmup", "ts_biased", "ts_static")      # LoRAs also saved every SNAPSHOT_EVERY steps: FD vs training steps
SNAPSHOT_EVERY = 300


def options(variant: str) -> dict:
    """The ``DistillConfig`` options of a variant: ``RECIPE`` with the variant's change."""
    return {**RECIPE, **VARIANTS[variant]}


def process_of(variant: str) -> RayProcess:
    """The process the variant's LoRA is trained with, and sampled with."""
    return DistillConfig(**options(variant)).training_process()


def distil(variant: str, out: str, teacher: str, prompts: str, train_steps: int, seeds: int, seed: int,
           train_seed: int = -1, cache: str = "", save_every: int = -1) -> str:
    """Train ``variant`` into ``<out>/lora_<variant>.safetensors`` (reused when it exists) and return
    its path. ``seed`` makes the phase-1 data, ``train_seed`` phase 2 (-1: ``seed``); ``cache`` is a
    phase-1 cache to share (default: the ``ray`` variant's in ``out``); ``save_every`` the snapshot
    interval (-1: ``SNAPSHOT_EVERY`` for the ``CURVE_VARIANTS``, else none)."""
    from training.distill import run

    path = os.path.join(out, f"lora_{variant}.safetensors")
    if os.path.isfile(path):
        return path
    shared = cache or os.path.join(out, "work_ray", "cache")
    if save_every < 0:
        save_every = SNAPSHOT_EVERY if variant in CURVE_VARIANTS else 0
    if variant == "lcm":
        from bench.lcm_baseline import distil_lcm

        if not os.path.isdir(shared):
            raise SystemExit("the lcm variant trains on the phase-1 cache of the ray variant: list ray before lcm")
        return distil_lcm(teacher, shared, path, train_steps=train_steps, batch_size=32, lora_rank=16,
                          lora_alpha=16.0, learning_rate=1e-3, lr_warmup=20, cfg_scale=3.0,
                          seed=seed if train_seed < 0 else train_seed, resolution=16, progress=False,
                          checkpoint_dir=os.path.join(out, "work_lcm", "checkpoint"))
    cfg = distil_config(variant, out, teacher, prompts, train_steps, seeds, seed, train_seed, save_every)
    # every sigma-path variant reads the same phase-1 cache (same teacher, prompts, seeds): equal data and budget
    if (variant != "ray" or cache) and cfg.ray_path == "sigma" and os.path.isdir(shared) \
            and not os.path.isdir(os.path.join(cfg.work_dir, "cache")):
        os.makedirs(cfg.work_dir, exist_ok=True)
        os.symlink(os.path.abspath(shared), os.path.join(cfg.work_dir, "cache"))
    run(cfg, progress=False)
    return path


def distil_config(variant: str, out: str, teacher: str, prompts: str, train_steps: int, seeds: int, seed: int,
                  train_seed: int = -1, save_every: int = 0) -> DistillConfig:
    """The validated ``DistillConfig`` that :func:`distil` trains ``variant`` with (work dir
    ``<out>/work_<variant>``; resumes when a checkpoint is there)."""
    path = os.path.join(out, f"lora_{variant}.safetensors")
    work_dir = os.path.join(out, f"work_{variant}")
    base = dict(model=teacher, prompts=prompts, output=path, work_dir=work_dir,
                resolution=16, seeds_per_prompt=seeds, seed=seed, train_seed=train_seed, teacher_solver="dpmsolver++",
                teacher_steps=25, teacher_cfg=3.0, shard_size=64, train_steps=train_steps, batch_size=32,
                learning_rate=1e-3, lr_warmup=20, lora_rank=16, lora_alpha=16.0, checkpoint_every=200, log_every=50,
                save_every=save_every,
                # an interrupted run continues from its last checkpoint, exactly (training.distill --resume)
                resume=os.path.isdir(os.path.join(work_dir, "checkpoint")), overwrite=True)   # the bench owns its --out
    return DistillConfig(**{**base, **options(variant)}).validate()      # a variant may override the LoRA's rank


@torch.no_grad()
def rayflow_samples(model, unet, labels, seeds, steps, process, mu_mode: str, eta: float = 0.0):
    """RayFlow images of ``unet`` for captions ``labels`` ``[N, 4]`` from the seeded noise of ``seeds``
    ``[N]`` in ``steps`` Ray steps, with the target mean of ``mu_mode`` (``noise``, or ``probeP``: a
    P-step Theorem-1 probe of the teacher with CFG 3) and stochasticity ``eta`` (its noise from a fixed
    generator, the same for every LoRA). Returns ``(images [N, 3, 16, 16], NFE per image)``."""
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

    x0 = sample_ray(eps_model, z, mu, process, model.schedule, model.schedule.ray_timesteps(steps), eta=eta,
                    generator=torch.Generator().manual_seed(20_000_000))
    return model.decode(x0), steps + extra_nfe


def evaluation_set(eval_per_caption: int, seed: int):
    """The benchmark's evaluation set: every caption ``eval_per_caption`` times (labels ``[N, 4]``),
    per-image seeds ``[N]`` that no LoRA trains on, and real images ``[N, 3, 16, 16]`` of the same
    captions for FD-proxy."""
    from proxy.data import all_labels, render

    labels = all_labels().repeat_interleave(eval_per_caption, 0)
    seeds = 10_000_000 + torch.arange(len(labels))
    return labels, seeds, render(labels, torch.Generator().manual_seed(seed + 99))


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
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("Cells: FD-proxy / alignment / NFE per image.\n\n" + "\n".join(lines) + "\n")
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/quality")
    ap.add_argument("--variants", default=None, help="comma-separated, from " + ", ".join(VARIANTS) +
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
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.seeds is not None:
        from bench import multiseed

        args.argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--worker"]
        args.variants = (args.variants or ",".join(MULTISEED_VARIANTS)).split(",")
        unknown = [v for v in args.variants if v not in VARIANTS]
        if unknown:
            ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        args.data_seed = args.seed
        args.results = args.results or os.path.join(args.out, "quality_multiseed.json")
        return multiseed.main(args)
    args.variants = args.variants or ",".join(VARIANTS)
    if args.replot:
        with open(os.path.join(args.out, "results.json")) as f:
            saved = json.load(f)
        write_report(saved["results"], saved["curves"], args.out)
        return 0
    from proxy.classifier import evaluate, load_classifier
    from proxy.data import all_labels, caption_of
    from proxy.demo import CLASSIFIER, TEACHER, generate, load_lora_unet
    from training.models import load_base_model

    os.makedirs(args.out, exist_ok=True)
    labels = all_labels()
    prompts = os.path.join(args.out, "prompts.txt")
    with open(prompts, "w") as f:
        f.writelines(caption_of(l) + "\n" for l in labels.tolist())
    model = load_base_model(TEACHER)
    classifier = load_classifier(CLASSIFIER)
    eval_labels, eval_seeds, real = evaluation_set(args.eval_per_caption, args.seed)
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
    timings, curves = {}, {}

    def report() -> None:        # rewritten after every variant, so an interrupted run keeps what it measured
        out = {"command": "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:]),
               "seed": args.seed, "train_steps": args.train_steps, "distill_seconds": timings,
               "results": results, "curves": curves}
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(out, f, indent=2)

    def evaluate_lora(variant, path, modes, steps=STEPS, name=None):
        unet = load_lora_unet(TEACHER, path)
        process = process_of(variant)
        for mode in modes:
            for n in steps:
                if variant == "lcm":
                    from bench.lcm_baseline import lcm_samples

                    imgs, nfe = lcm_samples(model, unet, eval_labels, eval_seeds, n)
                else:
                    imgs, nfe = rayflow_samples(model, unet, eval_labels, eval_seeds, n, process, mode)
                record(name or (f"LCM-LoRA baseline" if variant == "lcm" else f"RayFlow {variant} [{mode}]"), n, nfe, imgs)

    for variant in args.variants.split(","):
        t0 = time.time()
        path = distil(variant, args.out, TEACHER, prompts, args.train_steps, args.seeds_per_prompt, args.seed)
        timings[variant] = time.time() - t0
        evaluate_lora(variant, path, ["noise", "probe2", "probe4"] if variant == "ray" else ["noise"])
        if variant in CURVE_VARIANTS:      # FD-proxy vs training steps (Time Sampler efficiency)
            from training.distill import snapshot_path

            for k in range(SNAPSHOT_EVERY, args.train_steps, SNAPSHOT_EVERY):
                snap = snapshot_path(path, k)
                if os.path.isfile(snap):
                    evaluate_lora(variant, snap, ["noise"], steps=(1, 2, 4), name=f"curve {variant} @{k}")
            for k in range(SNAPSHOT_EVERY, args.train_steps + 1, SNAPSHOT_EVERY):
                name = f"curve {variant} @{k}" if k < args.train_steps else f"RayFlow {variant} [noise]"
                if name in results:
                    curves.setdefault(variant, {})[str(k)] = {n: results[name][n]["fd_proxy"] for n in ("1", "2", "4")}
        report()
    write_report(results, curves, args.out)      # the table leaves the "curve ..." rows out; results.json keeps them
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
