"""The LCM-LoRA baseline on the flow ODE (``bench/lcm_flow.py``, docs/method.md eq. 10.10): its
consistency function, loss and sampler against closed forms, the grid LCM samples the VP baseline
at, and a distillation of a tiny flow teacher that loads and samples as it was trained (the training
loop, checkpoints and resuming are the VP baseline's, tests/test_bench_lcm.py)."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from bench.lcm_baseline import HUBER_C, lcm_scheduler
from bench.lcm_flow import (distil_lcm_flow, flow_consistency_fn, flow_lcm_loss, flow_lcm_sample, flow_lcm_samples,
                            lcm_timesteps, levels)
from rayflow import FlowSchedule
from tests.conftest import TEACHER


def point_velocity(point: torch.Tensor):
    """The exact velocity of a data set of one ``point``: every flow path ends there, ``v = (x - point) / t``."""
    return lambda x, t: (x - point) / t.view(-1, 1, 1, 1)


def test_the_consistency_function_is_the_clean_sample_and_exact_at_t_0():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 3, 4, 4, generator=g)
    f = flow_consistency_fn(lambda y, t: v, x, torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64))
    assert torch.equal(f[0], x[0])                                  # the boundary condition, without scalings
    assert torch.allclose(f[1], x[1] - 0.3 * v[1]) and torch.allclose(f[2], x[2] - v[2])


@pytest.mark.parametrize("loss", ["l2", "huber"])
def test_the_loss_is_the_distance_the_guided_euler_step_makes(loss):
    """A student with zero velocity (``f(x, t) = x``) against a guided single-point teacher: the loss is
    the distance between the noised sample and the teacher's Euler step from it, in closed form; a student
    that is the guided teacher itself is consistent everywhere (loss 0)."""
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    a, b, w = torch.randn(1, 3, 4, 4, generator=g), torch.randn(1, 3, 4, 4, generator=g), 3.0
    v_c, v_u = point_velocity(a), point_velocity(b)
    teacher = lambda x, t: v_u(x, t) + w * (v_c(x, t) - v_u(x, t))       # noqa: E731  (guides to b + w (a - b))
    t = torch.tensor([1.0, 0.7, 0.4, 0.02], dtype=torch.float64)
    s = torch.tensor([0.98, 0.68, 0.38, 0.0], dtype=torch.float64)
    value = flow_lcm_loss(lambda x, tt: torch.zeros_like(x), teacher, x0, t, s, noise, loss)
    tt, ss = t.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
    x_t = (1 - tt) * x0.double() + tt * noise.double()
    d = (ss - tt) / tt * (x_t - (b + w * (a - b)))                         # x_s - x_t
    want = (d ** 2).mean() if loss == "l2" else (torch.sqrt(d ** 2 + HUBER_C ** 2) - HUBER_C).mean()
    assert torch.allclose(value.double(), want, rtol=1e-5)
    assert float(flow_lcm_loss(teacher, teacher, x0, t, s, noise, loss)) < 1e-5


def test_the_sampler_visits_the_vp_baselines_grid_and_lands_on_the_point():
    """LCM's timesteps on the flow table are the VP LCM-LoRA's (LCMScheduler's choice of the skipping grid,
    from t = 1); with the exact velocity of a one-point data set every step count returns the point."""
    from training.models import load_base_model

    vp = load_base_model(TEACHER)
    for n in (1, 2, 4, 8):
        sched = lcm_scheduler(vp)
        sched.set_timesteps(n)
        assert lcm_timesteps(1000, n).tolist() == sched.timesteps.tolist()
    schedule = FlowSchedule.shifted(3.0)
    assert levels(schedule, torch.tensor([999, -1])).tolist() == [1.0, 0.0]
    point = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    model = SimpleNamespace(schedule=schedule, velocity=lambda x, t, cond, net: point_velocity(point)(x, t))
    z = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    for n in (1, 2, 4):
        out = flow_lcm_sample(model, None, z, {}, n, torch.Generator().manual_seed(0))
        assert torch.allclose(out, point.expand_as(out), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_flow_cache(tiny_flow_teacher, tmp_path_factory):
    """A phase-1 cache of the tiny flow teacher (3 captions x 2 seeds, 2 Euler steps) in ``out/w/cache``."""
    import proxy.recipe as recipe
    from training.distill import run

    out = tmp_path_factory.mktemp("flow_cache")
    prompts = recipe.write_prompts(str(out / "p.txt"), 3)
    flow = dataclasses.replace(recipe.FLOW, teacher=tiny_flow_teacher, steps=2)
    cfg = flow.config(str(out / "ray.safetensors"), str(out / "w"), prompts, seeds_per_prompt=2, shard_size=8,
                      train_steps=1, batch_size=2, lora_rank=2, lora_alpha=2.0).validate()
    run(cfg, progress=False)
    return out


def test_a_flow_lcm_lora_trains_loads_and_samples_with_its_parametrisation(tiny_flow_teacher, tiny_flow_cache):
    from safetensors import safe_open

    from proxy.data import all_labels
    from proxy.sampling import load_lora_unet, noise_and_cond
    from training.models import load_base_model

    path = distil_lcm_flow(tiny_flow_teacher, str(tiny_flow_cache / "w" / "cache"), str(tiny_flow_cache / "lcm.safetensors"),
                           train_steps=3, batch_size=2, lora_rank=2, lora_alpha=2.0, progress=False, loss="huber")
    with safe_open(path, framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
        ups = [f.get_tensor(k) for k in keys if k.endswith("lora_B.weight")]
    assert meta["lcm.path"] == "flow" and meta["lcm.loss"] == "huber" and meta["lcm.train_steps"] == "3"
    assert "rayflow.format" not in meta and all(k.startswith("transformer.transformer_blocks.") for k in keys)
    assert ups and any(u.abs().max() > 0 for u in ups)          # lora_B starts at zero: training moved it

    model = load_base_model(tiny_flow_teacher, resolution=16)
    net = load_lora_unet(tiny_flow_teacher, path)
    labels, seeds = all_labels()[:3], torch.arange(3)
    one, nfe1 = flow_lcm_samples(model, net, labels, seeds, 1)
    two, nfe2 = flow_lcm_samples(model, net, labels, seeds, 2)
    assert (nfe1, nfe2) == (1, 2) and one.shape == (3, 3, 16, 16) and not torch.allclose(one, two)
    assert torch.equal(two, flow_lcm_samples(model, net, labels, seeds, 2)[0])      # seeded
    z, cond = noise_and_cond(model, labels, seeds)                 # one step: f(z, 1) = z - v(z, 1)
    with torch.no_grad():
        f = z - model.velocity(z, torch.ones(3), cond, net)
    assert torch.allclose(model.decode(f), one, atol=1e-5)
