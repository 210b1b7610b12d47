"""Schedules come from the model's alpha_bar table; Ray timestep schedules for 1..50 steps."""

import pytest
import torch

from rayflow import NoiseSchedule

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("name, kwargs", [
    ("scaled_linear", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)),  # SD1.5 / SDXL
    ("linear", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),                    # PixArt
])
def test_named_schedules_match_diffusers(name, kwargs):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, **kwargs).alphas_cumprod.double()
    ours = NoiseSchedule.from_name(name)
    torch.testing.assert_close(ours.alphas_cumprod, ref, rtol=1e-5, atol=1e-7)
    assert ours.name == name
    betas = diffusers.DDPMScheduler(num_train_timesteps=1000, **kwargs).betas.double()
    torch.testing.assert_close(ours.betas, betas, rtol=1e-4, atol=1e-8)       # what diffusers takes as trained_betas
    torch.testing.assert_close(NoiseSchedule.from_betas(ours.betas).alphas_cumprod, ours.alphas_cumprod)


def test_from_sigmas_round_trips_comfyui_style_table():
    s = NoiseSchedule.scaled_linear()
    back = NoiseSchedule.from_sigmas(s.sigmas.float())       # ComfyUI keeps float32 sigmas
    torch.testing.assert_close(back.alphas_cumprod, s.alphas_cumprod, rtol=1e-6, atol=1e-9)


def test_sigma_timestep_conversion_is_inverse_and_exact_on_the_table():
    s = NoiseSchedule.linear()
    t = torch.tensor([0.0, 1.0, 250.5, 998.25, 999.0], dtype=torch.float64)
    torch.testing.assert_close(s.t_at(s.sigma_at(t)), t, rtol=0, atol=1e-8)
    ints = torch.arange(1000, dtype=torch.float64)
    assert torch.equal(s.t_at(s.sigmas), ints)


@pytest.mark.parametrize("steps", list(range(1, 51)))
def test_ray_timesteps_are_trailing_and_start_at_the_last_timestep(steps):
    s = NoiseSchedule.scaled_linear()
    ddim = diffusers.DDIMScheduler(beta_schedule="scaled_linear", timestep_spacing="trailing")
    ddim.set_timesteps(steps)
    ts = s.ray_timesteps(steps)
    assert ts.tolist() == ddim.timesteps.tolist()
    assert int(ts[0]) == 999 and len(set(ts.tolist())) == steps
    sig = s.ray_sigmas(steps)
    assert sig.shape == (steps + 1,) and float(sig[-1]) == 0.0 and bool((sig[1:] < sig[:-1]).all())
