"""The LCM-LoRA baseline on the flow ODE: consistency distillation of the flow proxy teacher.

``bench/lcm_baseline.py``'s recipe (the skipping grid ``K = 20``, the guided teacher step, the online
student as its own target or an EMA, the published optimisation ``LCM_RECIPE``, L2 or pseudo-Huber) on
a flow-matching teacher (``docs/method.md`` eq. 10.10), through the same training loop
(:func:`bench.lcm_baseline.train_consistency_lora`), phase-1 cache, LoRA shape and budget as the
RayFlow arms of ``--proxy flow``:

* the teacher point ``x_t = (1 - t) x0 + t noise`` at a level ``t`` of the model's table;
* the teacher's step is one guided flow Euler step ``x_s = x_t + (s - t) v_w(x_t, t)`` to the
  previous grid point;
* the consistency function is the clean-sample prediction ``f(x, t) = x - t v(x, t)``, exact at
  ``t = 0`` without LCM's boundary scalings;
* sampling is LCM's multistep consistency sampling on LCMScheduler's grid points, re-noised along the
  flow path between steps; one model evaluation per step.

Every random draw comes from CPU generators whatever the device, as in ``bench/lcm_baseline.py``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from diffusers import LCMScheduler

from proxy.sampling import guided_velocity, noise_and_cond
from training.data import load_cache
from training.export import export_state_dict
from training.flow_family import FLOW_LORA_TARGETS
from training.models import load_base_model

from .lcm_baseline import LCM_RECIPE, LOSSES, SKIP, ConsistencyTask, distance, skipping_grid, train_consistency_lora

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]     # (x [B, C, H, W], t [B]) -> velocity


def levels(schedule, index: torch.Tensor) -> torch.Tensor:
    """The noise levels ``t`` ``[B]`` (float64, on ``index``'s device) of the model's table at the
    indices ``index`` ``[B]``; an index below 0 is ``t = 0``, the clean end of the grid."""
    t = schedule.sigma_at(index.detach().cpu().clamp(min=0).double())
    return torch.where(index.cpu() < 0, torch.zeros_like(t), t).to(index.device)


def flow_consistency_fn(velocity: Velocity, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``f(x, t) = x - t v(x, t)`` (eq. 10.4's clean sample) for ``x`` ``[B, C, H, W]`` at levels ``t``
    ``[B]``: ``x`` itself at ``t = 0``. The combination runs in float64, the result in ``x.dtype``."""
    v, tt, x64 = velocity(x, t.float()).double(), t.double().view(-1, 1, 1, 1), x.double()
    return torch.where(tt == 0, x64, x64 - tt * v).to(x.dtype)      # exact at t = 0 whatever v is there


def guided_euler_step(teacher: Velocity, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The teacher's flow Euler step ``x_t -> x_s = x_t + (s - t) v`` ``[B, C, H, W]`` from levels ``t``
    to ``s`` ``[B]`` with its guided velocity ``teacher`` (float64 combination, float32 result)."""
    v = teacher(x_t, t.float()).double()
    return (x_t.double() + (s - t).double().view(-1, 1, 1, 1) * v).float()


def flow_lcm_loss(student: Velocity, teacher: Velocity, x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                  noise: torch.Tensor, loss: str = "l2", target: Optional[Velocity] = None) -> torch.Tensor:
    """One consistency-distillation loss on the flow ODE (eq. 10.10): data ``x0`` ``[B, C, H, W]`` noised
    with ``noise`` to levels ``t`` ``[B]``, the guided teacher's Euler step to the previous grid levels
    ``s`` ``[B]``, and the ``loss`` distance (``l2`` or ``huber``) between the student's clean-sample
    prediction there and the ``target``'s (default: the student, without gradient) at the teacher's
    point. ``student`` / ``teacher`` / ``target`` map ``(x, t)`` to velocities (conditioning bound)."""
    tt = t.double().view(-1, 1, 1, 1)
    x_t = ((1 - tt) * x0.double() + tt * noise.double()).float()
    pred = flow_consistency_fn(student, x_t, t)
    with torch.no_grad():
        x_s = guided_euler_step(teacher, x_t, t, s)
        goal = flow_consistency_fn(target or student, x_s, s)
    return distance(pred, goal, loss)


def distil_lcm_flow(teacher_path: str, cache_folder: str, output: str, train_steps: int, cfg_scale: float = 3.0,
                    resolution: int = 16, loss: str = LCM_RECIPE["loss"], **options) -> str:
    """:func:`bench.lcm_baseline.distil_lcm` for a flow-matching teacher (a diffusers folder of an SD3 /
    FLUX transformer, here the flow proxy teacher at ``resolution``): the same arguments and files; the
    LoRA on the RayFlow flow arms' layers (``FLOW_LORA_TARGETS`` in the transformer blocks), written in
    the family's diffusers form with ``lcm.path = flow``."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    model = load_base_model(teacher_path, resolution=resolution)
    if not hasattr(model, "velocity"):
        raise SystemExit(f"{teacher_path} is not a flow-matching model: its LCM baseline is bench/lcm_baseline.py's")
    cache = load_cache(cache_folder)
    uncond_one = model.encode_prompts([""], torch.device("cpu"))

    def loss_fn(student, teacher, target, x0, cond, index, noise):
        n = len(x0)
        uncond = {k: v.to(x0.device).expand(n, *v.shape[1:]) for k, v in uncond_one.items()}
        t, s = levels(model.schedule, index), levels(model.schedule, index - SKIP)

        def net(m):
            return None if m is None else (lambda x, tt: model.velocity(x, tt, cond, m))
        return flow_lcm_loss(net(student), guided_velocity(model, cond, cfg_scale, uncond), x0, t, s, noise, loss,
                             net(target))

    task = ConsistencyTask(model.unet, loss_fn, skipping_grid(model.schedule.num_timesteps), ",".join(FLOW_LORA_TARGETS),
                           lambda state, rank, alpha, precision: export_state_dict(model.architecture, state, rank, alpha,
                                                                                   precision),
                           blocks=model.lora_blocks, exclude=model.lora_exclude)
    meta = {"lcm.path": "flow", "lcm.cfg": str(cfg_scale), "lcm.skip": str(SKIP), "lcm.resolution": str(resolution),
            "lcm.loss": loss}
    return train_consistency_lora(task, cache, output, train_steps, meta, **options)


def lcm_timesteps(num_timesteps: int, steps: int) -> torch.Tensor:
    """The ``steps`` table indices ``[steps]`` LCM samples at (LCMScheduler's choice among the skipping
    grid's points, descending, the first ``T - 1``)."""
    sched = LCMScheduler(num_train_timesteps=num_timesteps, original_inference_steps=num_timesteps // SKIP)
    sched.set_timesteps(steps)
    return sched.timesteps.long()


@torch.no_grad()
def flow_lcm_sample(model, net, x: torch.Tensor, cond: Dict[str, torch.Tensor], steps: int,
                    generator: torch.Generator) -> torch.Tensor:
    """The clean latents ``[N, C, H, W]`` the flow LCM-LoRA ``net`` reaches from the noise ``x`` (``t = 1``)
    in ``steps`` consistency steps with the conditioning ``cond``: ``x0 = f(x, t_i)``, then
    ``x = (1 - t_{i+1}) x0 + t_{i+1} noise``, the noise drawn from ``generator`` (on the CPU)."""
    ts = levels(model.schedule, lcm_timesteps(model.schedule.num_timesteps, steps))
    for i, t in enumerate(ts):
        x0 = flow_consistency_fn(lambda y, tt: model.velocity(y, tt, cond, net).float(), x, t.expand(len(x)))
        if i + 1 < len(ts):
            t_next = float(ts[i + 1])
            x = ((1 - t_next) * x0.double() + t_next * torch.randn(x.shape, generator=generator).to(x.device).double()).float()
    return x0


def flow_lcm_samples(model, net, labels: torch.Tensor, seeds: torch.Tensor, steps: int, sample_seed: int = 0):
    """Images ``[N, 3, H, W]`` (on the CPU) of the flow LCM-LoRA ``net`` in ``steps`` steps for proxy
    captions ``labels`` ``[N, 4]`` from the seeded noise of ``seeds`` ``[N]`` (every method's), and the
    model evaluations per image (``steps``); ``net`` lies on the model's device (``load_lora_unet``)."""
    z, cond = noise_and_cond(model, labels, seeds)
    x = flow_lcm_sample(model, net, z.float(), cond, steps, torch.Generator().manual_seed(sample_seed))
    return model.decode(x).cpu(), steps
