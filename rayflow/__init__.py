"""RayFlow kernels: torch-only math for the Ray diffusion process, its samplers and the Time Sampler.

No ComfyUI or diffusers import lives here; the ComfyUI nodes (``nodes/``) and the trainer
(``training/``) both build on these functions. ``docs/method.md`` derives every equation and
names the function implementing it.
"""

from .flow import (FlowSchedule, denoiser_from_velocity, flow_training_pair, flux_mu, noise_from_velocity,
                   time_shift, velocity_loss_weight, x0_from_velocity)
from .process import PATHS, RayProcess
from .samplers import (denoiser_from_eps, sample_ray, sample_ray_onestep, sample_ray_sigma,
                       seeded_noise_sampler, vp_start_mean)
from .schedule import EPS, FLOW, Interpolation, NoiseSchedule, alpha_bar_from_sigma, sigma_from_alpha_bar
from .target_mean import TargetMean, estimate_target_mean, estimate_target_mean_vp
from .time_sampler import LossProfile, TimeSampler, svgd_direction

__all__ = [
    "PATHS", "RayProcess", "NoiseSchedule", "alpha_bar_from_sigma", "sigma_from_alpha_bar",
    "sample_ray", "sample_ray_onestep", "sample_ray_sigma", "denoiser_from_eps", "seeded_noise_sampler",
    "vp_start_mean", "TargetMean", "estimate_target_mean", "estimate_target_mean_vp",
    "LossProfile", "TimeSampler", "svgd_direction", "EPS", "FLOW", "Interpolation", "FlowSchedule", "time_shift",
    "flux_mu", "x0_from_velocity", "noise_from_velocity", "flow_training_pair", "velocity_loss_weight",
    "denoiser_from_velocity",
]
