"""Where the LCM-LoRA baseline loses quality: its consistency function per timestep, and what each
step of multistep LCM sampling keeps.

For archived LCM LoRAs of a multi-seed benchmark (``<results stem>_runs/seed<k>/<variant>.safetensors``)
and ``--items`` items of its phase-1 cache (every ``576 / items``-th: all captions):

* ``consistency``: at training-grid timesteps ``t``, the RMSE of the student's consistency function
  ``f(x_t, t)`` (``bench.lcm_baseline.consistency_fn``) to the teacher sample ``x0`` that ``x_t`` was
  noised from (fixed noise). The reference ``teacher_x0_rmse`` is the teacher's own guided
  x0-prediction at ``x_t`` (one evaluation with CFG): at small ``t`` a consistency function should be
  as close to ``x0`` as that, since both are nearly the identity there;
* ``multistep``: the per-image standard deviation of the denoised sample after every step of
  ``LCMScheduler`` sampling at 1/2/4/8 steps (the benchmark's sampler, from the items' own noise),
  beside the teacher samples' (``x0_std``): a sampler that re-noises and denoises with a smoothing
  denoiser loses a little of the image's contrast at every step.

    python -m bench.lcm_consistency --out outputs/quality_fair_2400 \\
        --results docs/results/quality_fair_2400.json --seeds 0 --variants lcm \\
        --save docs/results/lcm_consistency.json

Results are written after every (seed, variant), and a rerun skips what the file already holds.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

import torch

from proxy.recipe import TEACHER, TEACHER_CFG
from proxy.sampling import load_lora_unet
from rayflow.atomic_write import write_json
from training.data import load_cache
from training.models import load_base_model

from .archive import archived_lora, measurement_args, measurement_parser, unmeasured
from .evaluation import STEPS, rmse
from .lcm_baseline import consistency_fn, lcm_sample, x0_from_eps
from .variants import LCM_VARIANTS

NOISE_SEED = 7
TIMESTEPS = (19, 59, 139, 259, 499, 759, 999)     # on the LCM training grid (k = 20)


class Probe:
    """The items, their noise and the teacher's x0-predictions shared by every measurement."""

    @torch.no_grad()
    def __init__(self, cache: str, items: int):
        self.model = load_base_model(TEACHER)
        cache = load_cache(cache)
        idx = torch.arange(0, len(cache.noise), max(1, len(cache.noise) // items))[:items]
        self.z, self.x0, self.cond = cache.noise[idx], cache.x0[idx], cache.cond["cond"][idx]
        self.uncond = self.model.encode_prompts([""], torch.device("cpu"))["cond"].expand_as(self.cond)
        self.ac = self.model.schedule.alphas_cumprod.double()
        self.eps = torch.randn(self.x0.shape, generator=torch.Generator().manual_seed(NOISE_SEED))
        self.x0_std = float(self.x0.flatten(1).std(1).mean())
        self.teacher_x0_rmse = {}
        for t in TIMESTEPS:
            tt, xt = self.noised(t)
            e_u, e_c = self.model.unet(torch.cat([xt, xt]), torch.cat([tt, tt]),
                                       encoder_hidden_states=torch.cat([self.uncond, self.cond])).sample.double().chunk(2)
            x0_pred = x0_from_eps(xt.double(), e_u + TEACHER_CFG * (e_c - e_u), self.ac[t])
            self.teacher_x0_rmse[str(t)] = rmse(x0_pred.float(), self.x0)

    def noised(self, t: int):
        """Timesteps ``[N]`` and ``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` ``[N, C, H, W]`` (float64 schedule math)."""
        a = self.ac[t]
        return torch.full((len(self.x0),), t), (a.sqrt() * self.x0.double() + (1 - a).sqrt() * self.eps.double()).float()

    @torch.no_grad()
    def measure(self, lora: str) -> Dict[str, Dict]:
        """``{"consistency": {t: rmse}, "multistep": {steps: [denoised std per step]}}`` of one LCM LoRA."""
        unet = load_lora_unet(TEACHER, lora)

        def eps_fn(x, t):
            return unet(x, t, encoder_hidden_states=self.cond).sample

        consistency = {}
        for t in TIMESTEPS:
            tt, xt = self.noised(t)
            consistency[str(t)] = rmse(consistency_fn(eps_fn, xt, tt, self.ac), self.x0)
        multistep = {}
        for n in STEPS:
            stds = []
            lcm_sample(self.model, unet, self.z.clone(), self.cond, n, torch.Generator().manual_seed(0),
                       on_step=lambda d: stds.append(float(d.flatten(1).std(1).mean())))
            multistep[str(n)] = stds
        return {"consistency": consistency, "multistep": multistep}


def parse_args(argv: List[str] = None) -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    ap = measurement_parser(__doc__.split("\n\n")[0], "lcm", 64)
    ap.add_argument("--archive", default=None, help="the archive folder (default <results stem>_runs)")
    return measurement_args(ap, argv, LCM_VARIANTS, "LCM")


def main(argv: List[str] = None) -> int:
    """Measure every archived (seed, variant) not yet in ``--save``; returns 0."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    saved, todo = unmeasured(args, {"items": args.items})
    if not todo:
        print("nothing to measure (every archived LoRA asked for is in the results)")
        return 0
    probe = Probe(os.path.join(args.out, "data", "cache"), args.items)
    saved = {"items": args.items, "command": "python -m bench.lcm_consistency " + " ".join(argv if argv is not None else sys.argv[1:]),
             "x0_std": probe.x0_std, "teacher_x0_rmse": probe.teacher_x0_rmse, "runs": saved.get("runs", {})}
    for seed, variant in todo:
        saved["runs"].setdefault(variant, {})[str(seed)] = row = probe.measure(archived_lora(args, seed, variant))
        write_json(args.save, saved)
        print(f"[seed {seed}] {variant}: consistency RMSE " + ", ".join(
            f"t {t} {v:.3f} (teacher {probe.teacher_x0_rmse[t]:.3f})" for t, v in row["consistency"].items()), flush=True)
        for n, stds in row["multistep"].items():
            print(f"  {n} steps: denoised std per step " + " ".join(f"{s:.3f}" for s in stds) +
                  f" (teacher samples {probe.x0_std:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
