"""Bad input raises ValueError naming the argument and the allowed range."""

import pytest
import torch

from rayflow import (NoiseSchedule, RayProcess, TimeSampler, estimate_target_mean_vp, sample_ray,
                     sample_ray_sigma)

S = NoiseSchedule.scaled_linear()


def eps_model(x, t):
    return torch.zeros_like(x)


def den(x, s):
    return torch.zeros_like(x)


@pytest.mark.parametrize("call, message", [
    # shape mismatch
    (lambda: RayProcess().training_pair(torch.zeros(2, 4), torch.zeros(2, 5), 0.5, torch.zeros(2, 4)),
     r"shape mismatch: x0\[2, 4\], eps_mu\[2, 5\]"),
    (lambda: sample_ray(eps_model, torch.zeros(2, 4), torch.zeros(3, 4), RayProcess(), S, S.ray_timesteps(2)),
     r"shape mismatch: x\[2, 4\], eps_mu\[3, 4\]"),
    (lambda: TimeSampler(3)(torch.zeros(2, 4)), r"features must be \[B, 3\]"),
    # variance coefficient / noise level <= 0
    (lambda: RayProcess(sigma=0.0), r"sigma must be in \(0.0, 10.0\]"),
    (lambda: RayProcess(sigma=-0.3), r"sigma must be in \(0.0, 10.0\]"),
    (lambda: S.t_at(torch.tensor([0.0])), r"sigma must be > 0"),
    (lambda: sample_ray_sigma(den, torch.zeros(1, 4), torch.tensor([14.6, 0.0, 0.0])),
     r"sigmas must be > 0 except the last entry"),
    (lambda: sample_ray_sigma(den, torch.zeros(1, 4), torch.tensor([14.6, -1.0])),
     r"sigmas must be > 0 except the last entry, which must be >= 0"),
    # timestep out of range
    (lambda: S.alpha_bar(torch.tensor([1000.0])), r"timestep t must be in \[0, 999\]"),
    (lambda: sample_ray(eps_model, torch.zeros(1, 4), torch.zeros(1, 4), RayProcess(), S, torch.tensor([1500, 10])),
     r"timestep t must be in \[0, 999\]"),
    (lambda: S.t_at(torch.tensor([100.0])), r"sigma must be in \[.*\] \(the model's range\)"),
    # steps < 1
    (lambda: S.ray_timesteps(0), r"steps must be an integer in \[1, 1000\]"),
    (lambda: S.ray_sigmas(-2), r"steps must be an integer in \[1, 1000\]"),
    (lambda: estimate_target_mean_vp(eps_model, torch.zeros(1, 4), S, 0), r"probe_steps must be an integer in \[1, 1000\]"),
    # non-finite values
    (lambda: sample_ray(eps_model, torch.full((1, 4), float("nan")), torch.zeros(1, 4), RayProcess(), S,
                        S.ray_timesteps(1)), r"x contains non-finite values"),
    (lambda: sample_ray_sigma(den, torch.zeros(1, 4), torch.tensor([float("inf"), 0.0])),
     r"sigmas contains non-finite values"),
    (lambda: RayProcess().theorem1(torch.full((2, 1, 4), float("inf")), torch.tensor([0.1, 0.5])),
     r"eps_preds contains non-finite values"),
    (lambda: NoiseSchedule(torch.tensor([0.9, float("nan")])), r"alphas_cumprod contains non-finite values"),
    # other ranges
    (lambda: sample_ray_sigma(den, torch.zeros(1, 4), torch.tensor([1.0, 0.0]), eta=1.5), r"eta must be in \[0.0, 1.0\]"),
    (lambda: RayProcess(path="curved"), r"path must be one of \('sigma', 'linear'\)"),
    (lambda: NoiseSchedule(torch.tensor([0.5, 0.9])), r"alphas_cumprod must be strictly decreasing"),
    (lambda: NoiseSchedule.from_name("cosine"), r"schedule name must be 'scaled_linear' or 'linear'"),
])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
