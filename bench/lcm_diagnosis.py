"""Why an LCM-LoRA of the fair benchmark gets worse as it trains: a diagnosis over its snapshots.

For one LCM job of ``bench.quality`` (its LoRA snapshots ``<out>/runs/seed<S>/lora_<variant>-step*.safetensors``
and final LoRA), at every snapshot:

* **consistency error**: RMSE between the LoRA's consistency function ``f(x_t, t)`` and the teacher's
  guided DDIM ODE endpoint from the same ``x_t`` along LCM's 50-level skipping grid (what the LCM loss
  bootstraps towards), at levels ``LEVELS``, with ``x_t`` noising (a) the job's own training images
  (the phase-1 cache) and (b) teacher samples it never saw (the benchmark's reference set). Equal
  errors on both mean no overfitting of the 576 training images;
* **distance to the training images**: the mean RMSE from each 8-step sample (fresh evaluation noise)
  to the nearest training image of its caption, beside the teacher's own 25-step samples: a student
  that memorises comes closer, one that leaves the data manifold goes farther;
* **sample quality** at 2 and 8 steps: ``fd_indep``, diversity and ``hf_ratio`` (``bench.evaluation``).

Also the base teacher without a LoRA sampled by the same ``LCMScheduler`` (what the first snapshots
start from). One thread, a few minutes per job::

    python -m bench.lcm_diagnosis --out outputs/quality_fair_2400 --variant lcm_lr3e-5 --seed 0 \\
        --save docs/results/lcm_diagnosis.json
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Dict, List

import torch

from proxy.data import caption_of
from proxy.recipe import TEACHER, TEACHER_CFG
from proxy.sampling import load_lora_unet
from rayflow.atomic_write import write_json
from training.data import load_cache

from .evaluation import Evaluation
from .lcm_baseline import SKIP, consistency_fn, eps_net, guided_ddim_step, lcm_samples, skipping_grid

LEVELS = (299, 699, 999)
PROBES = 96          # images per consistency probe (training and unseen each)


@torch.no_grad()
def ode_endpoint(model, x: torch.Tensor, t0: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """The teacher's guided DDIM solution ``[B, C, H, W]`` from ``x`` at level ``t0`` down to 0 along the skipping grid."""
    ac, teacher = model.schedule.alphas_cumprod.double(), eps_net(model.unet)
    for t in [int(t) for t in skipping_grid(len(ac)) if t <= t0][::-1]:
        tt = torch.full((len(x),), t)
        x = guided_ddim_step(teacher, x, tt, (tt - SKIP).clamp(min=0), cond, uncond, ac, TEACHER_CFG)
    return x


class Probe:
    """``x_t`` at every level of ``LEVELS`` for the clean images ``x0`` ``[B, C, H, W]`` with text states
    ``cond`` and the teacher's ODE endpoints from them (the consistency targets)."""

    def __init__(self, model, x0: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor):
        ac = model.schedule.alphas_cumprod.double()
        uncond = model.encode_prompts([""], torch.device("cpu"))["cond"].expand_as(cond)
        self.cond, self.ac = cond, ac
        self.xt = {t: (ac[t].sqrt() * x0.double() + (1 - ac[t]).sqrt() * noise.double()).float() for t in LEVELS}
        self.end = {t: ode_endpoint(model, self.xt[t], t, cond, uncond) for t in LEVELS}

    @torch.no_grad()
    def error(self, unet) -> Dict[str, float]:
        """RMSE of the consistency function of ``unet`` against the ODE endpoints, per level."""
        out, eps = {}, eps_net(unet)
        for t in LEVELS:
            f = consistency_fn(lambda x, tt: eps(x, tt, self.cond), self.xt[t],
                               torch.full((len(self.cond),), t), self.ac)
            out[str(t)] = float((f - self.end[t]).pow(2).mean().sqrt())
        return out


def nearest_training_rmse(images: torch.Tensor, captions: List[str], train: torch.Tensor, train_captions: List[str]) -> float:
    """Mean over ``images`` of the RMSE to the nearest training image with the same caption."""
    pools: Dict[str, torch.Tensor] = {}
    dists = []
    for im, c in zip(images, captions):
        if c not in pools:
            pools[c] = train[[i for i, p in enumerate(train_captions) if p == c]]
        dists.append((pools[c] - im).pow(2).mean((1, 2, 3)).sqrt().min())
    return float(torch.stack(dists).mean())


def snapshots(runs: str, seed: int, variant: str) -> Dict[str, str]:
    """``{training step: LoRA path}`` of the job's snapshots and final LoRA (``final``)."""
    folder = os.path.join(runs, f"seed{seed}")
    found = {str(int(p.rsplit("-step", 1)[1][:-len(".safetensors")])): p
             for p in sorted(glob.glob(os.path.join(folder, f"lora_{variant}-step*.safetensors")))}
    final = os.path.join(folder, f"lora_{variant}.safetensors")
    if os.path.isfile(final):
        found["final"] = final
    return found


def diagnose(out: str, variant: str, seed: int, eval_per_caption: int = 6, data_seed: int = 0) -> Dict:
    loras = snapshots(os.path.join(out, "runs"), seed, variant)
    if not loras:
        raise SystemExit(f"no LoRA of {variant} seed {seed} in {os.path.join(out, 'runs')}: run bench.quality for it first")
    ev = Evaluation(out, eval_per_caption, data_seed)
    model, es = ev.model, ev.sets["eval"]
    cache = load_cache(os.path.join(out, "data", "cache"))
    train_images = model.decode(cache.x0)
    g = torch.Generator().manual_seed(5)
    i_train = torch.randint(len(cache.x0), (PROBES,), generator=g)
    i_unseen = torch.randint(len(es.teacher), (PROBES,), generator=g)
    unseen_cond = model.encode_prompts([caption_of(l) for l in es.labels[i_unseen].tolist()], torch.device("cpu"))["cond"]
    noise = torch.randn(cache.x0[:PROBES].shape, generator=g)
    probes = {"train": Probe(model, cache.x0[i_train], cache.cond["cond"][i_train], noise),
              "unseen": Probe(model, es.teacher[i_unseen], unseen_cond, noise)}
    captions = [caption_of(l) for l in es.labels.tolist()]

    def quality(unet) -> Dict:
        row = {}
        for n in (2, 8):
            images = lcm_samples(model, unet, es.labels, es.seeds, n)[0]
            m = es.metrics(images)
            row[str(n)] = {k: m[k] for k in ("fd_indep", "diversity", "hf_ratio")}
            if n == 8:
                row["nearest_training_rmse_8"] = nearest_training_rmse(images, captions, train_images, cache.prompts)
        return row

    result = {"variant": variant, "seed": seed, "levels": list(LEVELS),     # es.teacher: the phase-1 target's samples
              "teacher_nearest_training_rmse": nearest_training_rmse(es.teacher, captions, train_images, cache.prompts),
              "rows": {"base (no LoRA)": {**quality(model.unet),
                                          **{f"consistency_{k}": p.error(model.unet) for k, p in probes.items()}}}}
    for step, path in loras.items():
        unet = load_lora_unet(TEACHER, path)
        result["rows"][step] = {**quality(unet), **{f"consistency_{k}": p.error(unet) for k, p in probes.items()}}
        r = result["rows"][step]
        print(f"{step}: 8 steps fd_indep {r['8']['fd_indep']:.1f} diversity {r['8']['diversity']:.3f}, "
              f"to training {r['nearest_training_rmse_8']:.3f}; consistency t=999 train "
              f"{r['consistency_train']['999']:.3f} unseen {r['consistency_unseen']['999']:.3f}", flush=True)
    return result


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the fair benchmark's folder (runs/, data/cache, reference.safetensors)")
    ap.add_argument("--variant", required=True, help="an LCM variant of bench.variants, e.g. lcm or lcm_lr3e-5")
    ap.add_argument("--seed", type=int, default=0, help="its training seed")
    ap.add_argument("--save", required=True, help="the JSON written")
    args = ap.parse_args(argv)
    if not args.variant.startswith("lcm"):
        ap.error(f"--variant must be an LCM variant, got {args.variant!r}")
    torch.set_num_threads(1)
    result = diagnose(args.out, args.variant, args.seed)
    result["command"] = "python -m bench.lcm_diagnosis " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(args.save, result, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
