"""2-D toy study of the RayFlow training recipe (evidence for the choices in docs/method.md §9).

The teacher is the *exact* epsilon predictor of a 2-D Gaussian mixture under the SD
scaled-linear schedule, so the only error left is the student's. For each recipe a small MLP
student is trained from scratch on teacher pairs (phase 1: DDIM trajectories from seeded noise;
Theorem-1 target means) and sampled at 1, 2, 4 steps from fresh noise with the noise-mode target
mean. Reported: the energy distance between student samples and the teacher's 50-step samples.

    python -m bench.toy2d [--train-steps 3000] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from rayflow import NoiseSchedule, RayProcess, sample_ray

SCHED = NoiseSchedule.scaled_linear()
CENTRES = torch.tensor([[2 * math.cos(2 * math.pi * k / 8), 2 * math.sin(2 * math.pi * k / 8)] for k in range(8)],
                       dtype=torch.float64)
DATA_STD = 0.1


def teacher_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[eps | x_t] for the 8-Gaussian mixture (exact)."""
    a = SCHED.alpha_bar(t.double())[:, None, None]
    x = x.double()
    var = a * DATA_STD ** 2 + (1 - a)
    logw = -((x[:, None, :] - a.sqrt() * CENTRES[None]) ** 2).sum(-1) / (2 * var[:, :, 0])
    w = torch.softmax(logw, 1)[:, :, None]
    # E[x0 | x_t, i] for a Gaussian component, then eps = (x_t - sqrt(a) x0) / sqrt(1 - a)
    x0_i = CENTRES[None] + (a.sqrt() * DATA_STD ** 2 / var) * (x[:, None, :] - a.sqrt() * CENTRES[None])
    x0 = (w * x0_i).sum(1)
    return (x - a[:, :, 0].sqrt() * x0) / (1 - a[:, :, 0]).sqrt()


def teacher_pairs(n: int, steps: int, g: torch.Generator):
    """Phase 1: DDIM trajectories from z; returns z, x0_hat and Theorem-1 target means per path."""
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    preds, alphas = [], []

    def recording_eps(x, t):
        e = teacher_eps(x, t)
        preds.append(e)
        alphas.append(SCHED.alpha_bar(t[:1].double())[0])
        return e

    x0 = sample_ray(recording_eps, z, torch.zeros_like(z), RayProcess(sigma=1.0), SCHED, SCHED.ray_timesteps(steps))
    stacked, a_k = torch.stack(preds), torch.stack(alphas)
    return z, x0, stacked, a_k


class Student(nn.Module):
    def __init__(self, width=128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 + 16, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, t):
        f = torch.arange(8, dtype=torch.float32)
        ang = t.float()[:, None] / 1000 * (2.0 ** f)[None] * math.pi
        return self.net(torch.cat([x.float(), ang.sin(), ang.cos()], 1)).to(x.dtype)


def train(recipe: dict, z, x0, preds, a_k, steps: int, seed: int) -> Student:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Student()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    if recipe["kind"] == "ray":
        proc = RayProcess(sigma=recipe["sigma"], path=recipe["path"])
        mu, _ = proc.theorem1(preds, a_k)
    else:  # no Ray: x_t = sqrt(a) x0 + sqrt(1-a) z, target z
        proc = RayProcess(sigma=1.0)
        mu = None
    n = z.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, n, (256,), generator=g)
        t = torch.randint(0, 1000, (256,), generator=g)
        a = SCHED.alpha_bar(t.double())
        if mu is None:
            x_t, target = proc.training_pair(x0[idx], torch.zeros_like(x0[idx]), a, z[idx])
        else:
            x_t, target = proc.training_pair(x0[idx], mu[idx], a, torch.randn(256, 2, generator=g, dtype=torch.float64))
        loss = (model(x_t, t.double()) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def evaluate(eps_model, proc, zt, ref):
    """Energy distance to the teacher's 50-step samples at 1, 2, 4 steps, noise-mode target mean."""
    with torch.no_grad():
        return [energy_distance(sample_ray(eps_model, zt, zt, proc, SCHED, SCHED.ray_timesteps(n)), ref)
                for n in (1, 2, 4)]


RECIPES = {
    "ray, sigma path, σ=0.1": dict(kind="ray", path="sigma", sigma=0.1),
    "ray, sigma path, σ=0.3": dict(kind="ray", path="sigma", sigma=0.3),
    "ray, sigma path, σ=0.5": dict(kind="ray", path="sigma", sigma=0.5),
    "ray, linear path, σ=0.1": dict(kind="ray", path="linear", sigma=0.1),
    "ray, linear path, σ=0.3": dict(kind="ray", path="linear", sigma=0.3),
    "no Ray (rectified pairs)": dict(kind="noray"),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-steps", type=int, default=3000)
    ap.add_argument("--pairs", type=int, default=4096)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = {name: [] for name in ["teacher DDIM", *RECIPES]}
    for seed in args.seeds:
        z, x0, preds, a_k = teacher_pairs(args.pairs, 25, torch.Generator().manual_seed(seed))
        zt, ref, _, _ = teacher_pairs(2048, 50, torch.Generator().manual_seed(seed + 1))
        results["teacher DDIM"].append(evaluate(teacher_eps, RayProcess(sigma=1.0), zt, ref))
        for name, recipe in RECIPES.items():
            model = train(recipe, z, x0, preds, a_k, args.train_steps, seed)
            proc = RayProcess(sigma=recipe.get("sigma", 1.0), path=recipe.get("path", "sigma"))
            results[name].append(evaluate(model, proc, zt, ref))
            print(f"seed {seed} {name}: {results[name][-1]}", flush=True)
    print(f"\nEnergy distance to the teacher's 50-step samples (mean ± std over seeds {args.seeds}):\n")
    print("| method | 1 step | 2 steps | 4 steps |\n|---|---|---|---|")
    for name, rows in results.items():
        r = torch.tensor(rows)
        cells = [f"{float(r[:, i].mean()):.4f} ± {float(r[:, i].std()):.4f}" for i in range(3)]
        print(f"| {name} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
