"""How hard is the one-step map for the proxy UNet? A diagnostic for the one-step results of
``bench/quality.py``.

A one-step sample is the denoiser's clean estimate at ``t = T - 1`` from the seeded start ``z``
(``docs/method.md`` Algorithm 3). This script fine-tunes the *whole* proxy teacher UNet (every
parameter; or, with ``--lora-rank R``, a rank-``R`` LoRA on the trainer's default targets) on that
one map alone: input ``z`` at ``t = T - 1``, target the teacher's 25-step sample ``x̂0`` from a
phase-1 cache, loss in ``x̂0`` space (what the truncated-SNR weighting measures at ``T - 1``). Every ``--eval-every`` steps it reports the one-step FD-proxy, alignment,
shape accuracy and high-frequency ratio on ``bench.quality``'s evaluation set (seeds no model
trained on), and the one-step alignment on 432 of the training items, into ``--out/results.json``.
The RayFlow LoRAs' one-step numbers can then be read against what this network learns of the
one-step map when nothing else competes for its capacity.

    python -m bench.onestep_ceiling --cache outputs/quality_seeds32/work_ray/cache --steps 3600 --lr 3e-4
    python -m bench.onestep_ceiling --cache ... --lora-rank 16 --lr 1e-3 --out outputs/onestep_ceiling_lora16
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from proxy.classifier import alignment, evaluate, load_classifier
from proxy.data import all_labels, parse_caption
from proxy.recipe import CLASSIFIER, TEACHER
from proxy.sampling import evaluation_set, rayflow_samples
from rayflow import RayProcess
from rayflow.atomic_write import write_json
from training.config import DistillConfig
from training.data import load_cache
from training.models import load_base_model
from training.trainer import add_lora, warmup_cosine

from .variants import process_of

TRAIN_PROBE = 432       # training items whose one-step alignment is reported (evenly spaced through the cache)


def one_step_x0(unet, model, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The one-step sample (eq. 4.3 at ``t = T - 1``) ``[N, C, H, W]`` from start points ``z``: the
    differentiable form of ``rayflow.sample_ray_onestep`` (a sampler, so it runs without gradients)."""
    T = model.schedule.num_timesteps
    t = torch.full((z.shape[0],), T - 1)
    return RayProcess.x0_from_eps(z, unet(z, t, encoder_hidden_states=cond).sample, model.schedule.alpha_bar(t.double()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True, help="a phase-1 cache folder of the proxy teacher (bench.quality's work_ray/cache)")
    ap.add_argument("--out", default="outputs/onestep_ceiling")
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--lr", type=float, default=3e-4, help="AdamW peak learning rate (20 warm-up steps, cosine decay)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lora-rank", type=int, default=0,
                    help="train a LoRA of this rank (alpha = rank) on the default targets instead of the whole UNet (0)")
    ap.add_argument("--eval-every", type=int, default=400)
    ap.add_argument("--eval-per-caption", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    model = load_base_model(TEACHER)
    cache = load_cache(args.cache)
    classifier = load_classifier(CLASSIFIER)
    eval_labels, eval_seeds, real = evaluation_set(all_labels(), args.eval_per_caption, args.seed)
    probe = torch.linspace(0, len(cache.x0) - 1, min(TRAIN_PROBE, len(cache.x0))).round().long()
    probe_labels = torch.tensor([parse_caption(cache.prompts[int(i)]) for i in probe])

    unet = model.unet
    torch.manual_seed(args.seed)
    if args.lora_rank > 0:       # the UNet frozen, a LoRA as the trainer builds it
        unet.requires_grad_(False)
        add_lora(unet, DistillConfig(model=TEACHER, lora_rank=args.lora_rank, lora_alpha=float(args.lora_rank)))
    else:
        unet.requires_grad_(True)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = warmup_cosine(opt, 20, args.steps)
    gen = torch.Generator().manual_seed(args.seed)
    rows, t0 = [], time.time()

    def evaluate_now(step: int) -> None:
        unet.eval()
        imgs, _ = rayflow_samples(model, unet, eval_labels, eval_seeds, 1, process_of("ray"), "noise")
        with torch.no_grad():
            train_imgs = model.decode(one_step_x0(unet, model, cache.noise[probe], cache.cond["cond"][probe]))
        m = evaluate(classifier, imgs, eval_labels, real, eval_labels)
        rows.append({"step": step, **{k: m[k] for k in ("fd_proxy", "alignment", "acc_shape", "hf_ratio")},
                     "train_alignment": alignment(classifier, train_imgs, probe_labels), "seconds": time.time() - t0})
        print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()), flush=True)
        write_json(os.path.join(args.out, "results.json"),
                   {"command": "python -m bench.onestep_ceiling " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "items": len(cache.x0), "parameters": sum(p.numel() for p in params), "rows": rows}, indent=2)
        unet.train()

    unet.train()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(cache.x0), (args.batch_size,), generator=gen)
        x0 = one_step_x0(unet, model, cache.noise[idx], cache.cond["cond"][idx])
        loss = (x0 - cache.x0[idx]).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.steps:
            evaluate_now(step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
