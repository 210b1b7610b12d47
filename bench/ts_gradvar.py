"""Variance of the phase-2 gradient estimator with and without the Time Sampler.

For each training seed of a multi-seed run (``bench.quality --seeds``), the ``ray`` job's final
checkpoint (LoRA, Time Sampler and loss profile) is loaded and, at that one parameter point, the
LoRA gradient of the training loss ``mean(w * lam * mse)`` is drawn ``--draws`` times on each of
``--batches`` fixed batches:

* ``time_sampler``: timesteps from the trained Time Sampler's proposal, importance weights ``w``;
* ``uniform``: uniform timesteps, ``w = 1`` (what ``--no-time-sampler`` trains with).

Draw ``k`` of both arms uses the same Ray noise, so only the timesteps differ. Both are unbiased
estimators of the same gradient; the figure of merit is the relative variance
``E||g - mean g||^2 / ||mean g||^2`` (per batch, averaged over batches), reported per seed, as a
mean with its 95 % CI over seeds, and as the paired log-ratio ``log(var_ts / var_uniform)``
(negative: the Time Sampler lowers the variance).

    python -m bench.ts_gradvar --out outputs/quality_multiseed_2400 --seeds 0 1 2 --train-steps 2400 \\
        --results docs/results/ts_gradvar.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List

import torch
from accelerate import Accelerator

from proxy.recipe import TEACHER
from rayflow.atomic_write import write_json
from training.data import load_cache
from training.models import load_base_model
from training.trainer import Trainer

from .stats import mean_ci, paired_difference, verdict
from .variants import SNAPSHOT_EVERY, distil_config


def flat_grad(params: List[torch.nn.Parameter]) -> torch.Tensor:
    """The gradients of ``params`` as one float64 vector ``[P]`` (zeros where a gradient is absent)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().flatten()
                      for p in params])


def relative_variance(grads: torch.Tensor) -> float:
    """``E||g - mean g||^2 / ||mean g||^2`` of gradient draws ``grads`` ``[K, P]`` (unbiased, K - 1)."""
    mean = grads.mean(0)
    var = (grads - mean).pow(2).sum(1).sum() / (grads.shape[0] - 1)
    return float(var / mean.pow(2).sum())


def gradient_draws(trainer, idx: torch.Tensor, arm: str, draws: int, seed: int) -> torch.Tensor:
    """``draws`` LoRA gradients ``[draws, P]`` of batch ``idx`` ``[B]`` with timesteps of ``arm``."""
    T = trainer.model.schedule.num_timesteps
    feats = trainer.features(idx)
    gen_t = torch.Generator().manual_seed(seed + (0 if arm == "time_sampler" else 1_000_003))
    out = []
    for k in range(draws):
        trainer.gen_noise.manual_seed(seed * 7919 + k)         # draw k: the same Ray noise in both arms
        if arm == "time_sampler":
            t, w = trainer.ts.sample(feats, T, generator=gen_t)
        else:
            t, w = torch.randint(0, T, (idx.numel(),), generator=gen_t), torch.ones(idx.numel())
        for p in trainer.params:
            p.grad = None
        loss, _, _ = trainer.weighted_loss(idx, t, w)
        loss.backward()
        out.append(flat_grad(trainer.params))
    return torch.stack(out)


def measure(trainer, batches: int, draws: int, seed: int) -> Dict[str, float]:
    """Relative variance per arm (mean over ``batches`` fixed batches) and the cosine between the two
    arms' mean gradients (both estimate the same gradient: near 1 when ``draws`` suffice)."""
    gen = torch.Generator().manual_seed(seed)
    rel = {"time_sampler": [], "uniform": []}
    cos = []
    for b in range(batches):
        idx = torch.randint(0, trainer.cache.x0.shape[0], (trainer.cfg.batch_size,), generator=gen)
        means = {}
        for arm in rel:
            g = gradient_draws(trainer, idx, arm, draws, seed * 101 + b)
            rel[arm].append(relative_variance(g))
            means[arm] = g.mean(0)
        cos.append(float(torch.nn.functional.cosine_similarity(means["time_sampler"], means["uniform"], dim=0)))
    return {**{arm: sum(v) / len(v) for arm, v in rel.items()}, "cosine_of_means": sum(cos) / len(cos)}


def load_trainer(out: str, seed: int, train_steps: int, seeds_per_prompt: int, data_seed: int):
    """The ``ray`` job of training seed ``seed`` in multi-seed folder ``out``, at its last checkpoint."""
    folder = os.path.join(out, "runs", f"seed{seed}")
    cfg = distil_config("ray", folder, TEACHER, os.path.join(out, "prompts.txt"), train_steps, seeds_per_prompt,
                        data_seed, train_seed=seed, save_every=SNAPSHOT_EVERY)
    cache = load_cache(os.path.join(cfg.work_dir, "cache"))
    cfg.resolve_sigma(cache.sigma_star)
    trainer = Trainer(cfg, load_base_model(TEACHER), cache, Accelerator(cpu=not torch.cuda.is_available()))
    if not trainer.try_resume():
        raise SystemExit(f"no checkpoint in {trainer.ckpt_dir}: run the multi-seed benchmark first")
    return trainer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/quality_multiseed", help="the --out of a bench.quality --seeds run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-steps", type=int, default=1200, help="the --train-steps of that run")
    ap.add_argument("--seeds-per-prompt", type=int, default=8)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--draws", type=int, default=32)
    ap.add_argument("--results", default=None, help="summary JSON (default <out>/ts_gradvar.json)")
    args = ap.parse_args(argv)
    results = args.results or os.path.join(args.out, "ts_gradvar.json")
    per_seed = {}
    for seed in args.seeds:
        trainer = load_trainer(args.out, seed, args.train_steps, args.seeds_per_prompt, args.data_seed)
        per_seed[seed] = measure(trainer, args.batches, args.draws, seed)
        print(f"[seed {seed}] step {trainer.step}: relative gradient variance, Time Sampler "
              f"{per_seed[seed]['time_sampler']:.3f}, uniform {per_seed[seed]['uniform']:.3f} "
              f"(cosine of the mean gradients {per_seed[seed]['cosine_of_means']:.3f})", flush=True)
    seeds = list(per_seed)
    log_ts = [math.log(per_seed[s]["time_sampler"]) for s in seeds]
    log_un = [math.log(per_seed[s]["uniform"]) for s in seeds]
    diff = paired_difference(log_ts, log_un)
    data = {"command": "python -m bench.ts_gradvar " + " ".join(argv if argv is not None else sys.argv[1:]),
            "train_seeds": seeds, "train_steps": args.train_steps, "batches": args.batches, "draws": args.draws,
            "per_seed": {str(s): v for s, v in per_seed.items()},
            "time_sampler": mean_ci([per_seed[s]["time_sampler"] for s in seeds]),
            "uniform": mean_ci([per_seed[s]["uniform"] for s in seeds]),
            "log_ratio_time_sampler_vs_uniform": {**diff, "verdict": verdict(diff)}}
    os.makedirs(os.path.dirname(os.path.abspath(results)), exist_ok=True)
    write_json(results, data)
    print(json.dumps({k: data[k] for k in ("time_sampler", "uniform", "log_ratio_time_sampler_vs_uniform")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
