"""How the students' noise-to-image maps differ from the teacher's: fit on the training noise, fit on
fresh noise, and sensitivity to the start point.

For archived LoRAs of a multi-seed benchmark (``<results stem>_runs/seed<k>/<variant>.safetensors``)
and ``--items`` items of its phase-1 cache (every ``576 / items``-th: all captions), at each step
count of ``--steps`` (eta 0, target mean from the noise, as the headline samples):

* ``rmse_train``: RMSE of the student's sample from the item's training noise ``z`` to the teacher
  sample it was trained on (the cache's ``x0``): how well the map is learnt where it was taught;
* ``rmse_top``: the same from the centre of the student's own training distribution at the top
  timestep (``training.trainer.training_pair_of`` at ``T - 1`` without Ray noise: ``sqrt(a) x0 +
  sqrt(1 - a) mu`` for the Ray arms, where sampling from ``z`` puts ``z`` in place of
  ``sqrt(1 - a) mu + sqrt(a) x0``; the ReFlow pair's for ``no_ray``): how well the map is learnt from
  the start it was taught, so that ``rmse_train - rmse_top`` is what starting from ``z`` costs;
* ``rmse_fresh``: the same from fresh noise (a fixed generator, the same captions) to the teacher's
  sample from that noise (the phase-1 solver): how well it generalises to the noise users sample;
* ``start`` (once, over the whole cache): how far the Theorem-1 target mean ``mu`` around which the
  Ray process trains lies from the noise ``z`` sampling starts from (RMS of ``mu - z``), and the
  per-entry variance of each over the items (a mismatch of spread would put ``z`` where training
  did not go);
* ``sensitivity``: RMSE between the samples from ``z`` and from ``z + delta xi`` (``--delta``, a
  fixed ``xi``): how much of a small change of the start reaches the image. The teacher's own
  sensitivity (phase-1 solver, same ``xi``) is the reference: a smaller value is a flatter map, which
  keeps less of what is particular to each noise (``docs/benchmarks.md``, "Why Ray sits far from the
  teacher's distribution").

    python -m bench.map_sensitivity --out outputs/quality_fair_2400 \\
        --results docs/results/quality_fair_2400.json --seeds 0 1 2 --variants ray,no_ts,no_ray \\
        --save docs/results/map_sensitivity.json

Results are written after every (seed, variant), and a rerun skips what the file already holds.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

import torch

from proxy.recipe import TEACHER, TEACHER_CFG, TEACHER_SOLVER, TEACHER_STEPS, RESOLUTION
from proxy.sampling import load_lora_unet
from rayflow.atomic_write import write_json
from training.data import load_cache, teacher_trajectory
from training.models import load_base_model
from training.trainer import training_pair_of

from .archive import archived_lora, measurement_args, measurement_parser, unmeasured
from .evaluation import rmse
from .variants import VARIANTS, config_of

FRESH_SEED, DELTA_SEED = 5, 6
METRICS = ("rmse_train", "rmse_top", "rmse_fresh", "sensitivity")      # per step count, in this order


class Probe:
    """The items, the fresh noise and the perturbation shared by every measurement, and the teacher's."""

    @torch.no_grad()
    def __init__(self, cache: str, items: int, delta: float):
        """``items`` items of the phase-1 cache folder ``cache``; the start perturbation ``delta xi``."""
        self.model = load_base_model(TEACHER)
        cache = load_cache(cache)
        mu, z = cache.eps_mu.double(), cache.noise.double()     # the start the Ray process trains around, and z
        self.start = {"mu_minus_z_rms": float((mu - z).pow(2).mean().sqrt()), "mu_var": float(mu.flatten(1).var(0).mean()),
                      "z_var": float(z.flatten(1).var(0).mean()), "items": len(z)}
        idx = torch.arange(0, len(cache.noise), max(1, len(cache.noise) // items))[:items]
        self.z, self.x0, self.cond = cache.noise[idx], cache.x0[idx], {"cond": cache.cond["cond"][idx]}
        self.mu = cache.eps_mu[idx]
        self.fresh = torch.randn(self.z.shape, generator=torch.Generator().manual_seed(FRESH_SEED))
        self.shift = delta * torch.randn(self.z.shape, generator=torch.Generator().manual_seed(DELTA_SEED))
        self.x0_fresh = self.teacher(self.fresh)
        self.teacher_sensitivity = rmse(self.teacher(self.z + self.shift), self.x0)

    def teacher(self, z: torch.Tensor) -> torch.Tensor:
        """The teacher's samples ``[N, C, H, W]`` from ``z`` (the phase-1 solver, steps and CFG)."""
        uncond = {k: v.expand(len(z), *v.shape[1:]) for k, v in self.model.encode_prompts([""], torch.device("cpu")).items()}
        return teacher_trajectory(self.model, z, self.cond, uncond, TEACHER_SOLVER, TEACHER_STEPS, TEACHER_CFG, RESOLUTION)[0]

    @torch.no_grad()
    def measure(self, variant: str, lora: str, steps: List[int]) -> Dict[str, Dict[str, float]]:
        """``{steps: {rmse_train, rmse_top, rmse_fresh, sensitivity}}`` of one LoRA of ``variant``."""
        unet, cfg = load_lora_unet(TEACHER, lora), config_of(variant)
        process = cfg.training_process()
        top = torch.full((len(self.z),), self.model.schedule.num_timesteps - 1)
        x_top, _ = training_pair_of(self.model, process, cfg, self.x0, self.mu, self.z, top,
                                    None if cfg.no_ray else torch.zeros_like(self.x0))

        def sample(z, n):        # eta 0, the target mean from the noise: the headline's sampler
            return self.model.ray_sample(unet, z, self.cond, process, n, RESOLUTION)

        rows = {}
        for n in steps:
            base = sample(self.z, n)
            rows[str(n)] = {"rmse_train": rmse(base, self.x0), "rmse_top": rmse(sample(x_top.float(), n), self.x0),
                            "rmse_fresh": rmse(sample(self.fresh, n), self.x0_fresh),
                            "sensitivity": rmse(sample(self.z + self.shift, n), base)}
        return rows


def parse_args(argv: List[str] = None) -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    ap = measurement_parser(__doc__.split("\n\n")[0], "ray,no_ts,no_ray", 144)
    ap.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--delta", type=float, default=0.1, help="scale of the start-point perturbation")
    return measurement_args(ap, argv, VARIANTS, "Ray-sampled")


def main(argv: List[str] = None) -> int:
    """Measure every archived (seed, variant) not yet in ``--save``; returns 0."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    same = {"items": args.items, "delta": args.delta, "steps": args.steps, "metrics": list(METRICS)}
    saved, todo = unmeasured(args, same)
    if not todo:
        print("nothing to measure (every archived LoRA asked for is in the results)")
        return 0
    probe = Probe(os.path.join(args.out, "data", "cache"), args.items, args.delta)
    saved = {**same, "command": "python -m bench.map_sensitivity " + " ".join(argv if argv is not None else sys.argv[1:]),
             "teacher_sensitivity": probe.teacher_sensitivity, "start": probe.start, "runs": saved.get("runs", {})}
    for seed, variant in todo:
        saved["runs"].setdefault(variant, {})[str(seed)] = probe.measure(variant, archived_lora(args, seed, variant), args.steps)
        write_json(args.save, saved)
        print(f"[seed {seed}] {variant}: " + "; ".join(
            f"{n} steps " + ", ".join(f"{k} {v:.4f}" for k, v in row.items())
            for n, row in saved["runs"][variant][str(seed)].items()), flush=True)
    print(f"teacher sensitivity {probe.teacher_sensitivity:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
