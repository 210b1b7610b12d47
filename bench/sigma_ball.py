"""How far from the teacher's distribution the Ray objective's own optimum lies: the σ-ball average.

A Ray student at eta 0 is trained on pairs (``mu + sigma xi``, teacher sample ``x0 = Phi(z)``), with
the Theorem-1 target mean ``mu`` close to the seeded noise ``z`` (``docs/method.md`` 7.3: their RMS
gap is about ``sigma``). Where the pairs of different noises do not overlap, the regression's
optimum at an input ``y`` is the average of the teacher's outputs over the noises whose target
means lie within about ``sigma`` of ``y``: the teacher map smoothed at scale ``sigma``,

    T_sigma(z) = E_xi[ Phi(z + sigma xi) ],

which a student can at best reproduce. This measures ``T_sigma`` directly (``--draws`` teacher
samples from ``z + sigma xi`` per image, averaged) on the benchmark's evaluation set and reports
the benchmark's metrics of it: if ``T_0.1`` already sits as far from the teacher's distribution
(``fd_indep``) as the Ray student does, the gap is the objective's, not the training's.

    python -m bench.sigma_ball --out outputs/quality_fair_2400 --sigmas 0.03 0.1 0.3 --draws 8 \\
        --results docs/results/sigma_ball.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List

import torch

from proxy.data import caption_of
from proxy.recipe import RESOLUTION
from rayflow.atomic_write import write_json
from training.data import item_noise, teacher_trajectory

from .evaluation import Evaluation


@torch.no_grad()
def ball_average(ev: Evaluation, sigma: float, draws: int, seed: int = 0) -> torch.Tensor:
    """``T_sigma`` of the evaluation set: the mean over ``draws`` teacher samples (the reference
    solver, steps and CFG) from ``z + sigma xi`` per image, ``xi`` from a generator seeded by ``seed``."""
    es = ev.sets["eval"]
    model, solver, steps, cfg = ev.model, ev.recipe.solver, ev.recipe.steps, ev.recipe.cfg
    cond = model.encode_prompts([caption_of(label) for label in es.labels.tolist()], torch.device("cpu"))
    uncond = {k: v.expand(len(es.labels), *v.shape[1:]) for k, v in model.encode_prompts([""], torch.device("cpu")).items()}
    z = item_noise(0, es.seeds, (model.latent_channels, RESOLUTION, RESOLUTION))
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(z), 3, RESOLUTION, RESOLUTION)
    for _ in range(draws):
        start = z + sigma * torch.randn(z.shape, generator=g)
        x0, _, _ = teacher_trajectory(model, start, cond, uncond, solver, steps, cfg, RESOLUTION)
        total += model.decode(x0)
    return total / draws


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="a multi-seed benchmark folder (its reference samples are reused)")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    ap.add_argument("--draws", type=int, default=8, help="teacher samples averaged per image")
    ap.add_argument("--eval-per-caption", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0, help="the benchmark's data seed (its real images)")
    ap.add_argument("--results", default=None, help="the JSON written (default <out>/sigma_ball.json)")
    args = ap.parse_args(argv)
    results = args.results or os.path.join(args.out, "sigma_ball.json")
    ev = Evaluation(args.out, args.eval_per_caption, args.seed)
    rows: Dict[str, Dict] = {"teacher (sigma 0)": ev.sets["eval"].metrics(ev.sets["eval"].teacher)}
    for sigma in args.sigmas:
        t0 = time.time()
        rows[f"sigma {sigma:g}"] = {**ev.sets["eval"].metrics(ball_average(ev, sigma, args.draws)),
                                    "seconds": round(time.time() - t0, 1)}
        print(f"sigma {sigma:g}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[f"sigma {sigma:g}"].items()), flush=True)
        write_json(results, {"command": "python -m bench.sigma_ball " + " ".join(argv if argv is not None else sys.argv[1:]),
                             "draws": args.draws, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
