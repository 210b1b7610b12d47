"""Phase 1's teacher ODE solver for flow models (``docs/method.md`` eq. 10.6): diffusers' flow-match
Euler, or its DPM-Solver++ (2M) in flow parameterisation, on the model's trailing Ray levels (so the
trajectory starts at ``t = 1`` from the seeded noise, as the sampler does), with classifier-free
guidance (SD3) or the model's guidance embedding (FLUX.1-dev), recording the noise every evaluation
attributes to its point (``n = x + (1 - t) v``, eq. 10.4) for Theorem 1.
"""

from __future__ import annotations

from typing import Dict

import torch

from rayflow import FLOW, noise_from_velocity

FLOW_SOLVERS = ("euler", "dpmsolver++")


def make_flow_scheduler(sigmas: torch.Tensor, solver: str):
    """A diffusers scheduler stepping over the levels ``sigmas`` ``[N + 1]`` (decreasing from 1, ending
    at 0). Euler takes them as its sigmas directly (shift 1: they are already shifted); DPM-Solver++
    (``use_flow_sigmas``, ``flow_prediction``, second order, first order at the end) has no custom-sigma
    input, so its table is replaced by these levels after ``set_timesteps``."""
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    steps = sigmas.numel() - 1
    if solver == "euler":
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        sched.set_timesteps(sigmas=sigmas[:-1].tolist())
    elif solver == "dpmsolver++":
        sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                            use_flow_sigmas=True, algorithm_type="dpmsolver++", solver_order=2,
                                            final_sigmas_type="zero", lower_order_final=True)
        sched.set_timesteps(steps)
        sched.sigmas = sigmas.float().clone()
        sched.timesteps = (1000.0 * sigmas[:-1]).float().clone()
    else:
        raise ValueError(f"flow teacher solver must be one of {FLOW_SOLVERS}, got {solver!r}")
    return sched


@torch.no_grad()
def flow_teacher_trajectory(model, z: torch.Tensor, cond: Dict[str, torch.Tensor], uncond: Dict[str, torch.Tensor],
                            solver: str, steps: int, cfg_scale: float, resolution: int):
    """Run the teacher from ``z`` ``[n, C, h, w]`` (at ``t = 1``) with ``cond`` / ``uncond``. Returns
    ``x0_hat``, the attributed noises ``[K, n, C, h, w]`` and their VP levels ``a(t_k)`` ``[K]`` -- the
    triple of ``training.data.teacher_trajectory``."""
    idx = model.schedule.ray_timesteps(steps)
    sigmas = model.schedule.ray_sigmas(steps, torch.float64)
    sched = make_flow_scheduler(sigmas, solver)
    x = z.float().clone()
    preds, alphas = [], []
    for i, t in enumerate(sched.timesteps):
        t_in = idx[i].expand(x.shape[0])
        if cfg_scale != 1.0:
            both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
            v_u, v_c = model.denoise(torch.cat([x, x]), torch.cat([t_in, t_in]), both, resolution).float().chunk(2)
            v = v_u + cfg_scale * (v_c - v_u)
        else:
            v = model.denoise(x, t_in, cond, resolution).float()
        preds.append(noise_from_velocity(x, v, sigmas[i]))
        alphas.append(FLOW.alpha_bar(sigmas[i]))
        x = sched.step(v, t, x).prev_sample.float()
    return x, torch.stack(preds), torch.stack(alphas)
