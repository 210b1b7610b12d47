"""The Ray process on the rectified-flow path (docs/method.md section 10): the change of variables to
the VP sigma path, the velocity form, the flow sampler (deterministic = flow Euler; eta = 1 keeps the
marginals; the oracle returns its instances), Theorem 1 from a velocity model, and the shifted grids
against diffusers' flow-match scheduler."""

import math

import pytest
import torch

from rayflow import (EPS, FLOW, FlowSchedule, NoiseSchedule, RayProcess, denoiser_from_velocity,
                     estimate_target_mean, flow_training_pair, flux_mu, noise_from_velocity,
                     sample_ray_sigma, time_shift, velocity_loss_weight, x0_from_velocity)

T64 = dict(dtype=torch.float64)


def _draws(seed, *shape, n=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, **T64) for _ in range(n)]


def test_flow_point_is_the_vp_point_rescaled_and_the_sigma_form_point_divided_by_1_minus_t():
    """eq. 10.3: (1-t) x0 + t n = r(t) (sqrt(a) x0 + sqrt(1-a) n), and x_t / (1-t) = x0 + s n with
    s = t / (1-t), whose eps-form level 1 / (1 + s^2) is the same a."""
    x0, n, _ = _draws(0, 5, 7)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.999, 1.0], **T64)
    a, r = FLOW.alpha_bar(t), FLOW.vp_scale(t)
    for ti, ai, ri in zip(t, a, r):
        flow = (1 - ti) * x0 + ti * n
        torch.testing.assert_close(flow, ri * (ai.sqrt() * x0 + (1 - ai).sqrt() * n), rtol=1e-12, atol=1e-12)
        if ti < 1:
            s = ti / (1 - ti)
            torch.testing.assert_close(flow / (1 - ti), x0 + s * n, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(EPS.alpha_bar(s), ai, rtol=1e-12, atol=0)
    assert float(a[0]) == 1.0 and float(a[-1]) == 0.0 and bool((a[1:] < a[:-1]).all())


def test_training_pair_is_the_interpolation_of_the_ray_noise_and_its_velocity():
    x0, mu, xi = _draws(1, 4, 3, 8, 8)
    proc = RayProcess(sigma=0.2)
    t = torch.tensor([1.0, 0.75, 0.3, 0.01], **T64)
    x_t, v = flow_training_pair(proc, x0, mu, t, xi)
    n = mu + 0.2 * xi
    tt = t[:, None, None, None]
    torch.testing.assert_close(x_t, (1 - tt) * x0 + tt * n, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v, n - x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x_t[0], n[0], rtol=0, atol=1e-12)              # t = 1: pure Ray noise
    # velocity form (eq. 10.4): the exact velocity gives back x0 and the noise
    torch.testing.assert_close(x0_from_velocity(x_t, v, t), x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(noise_from_velocity(x_t, v, t), n, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="the flow path is the Ray sigma path"):
        flow_training_pair(RayProcess(path="linear"), x0, mu, t, xi)


def test_velocity_loss_weight_is_eq_7_2_on_the_noise_error():
    t = torch.linspace(0.01, 0.99, 50, **T64)
    a = FLOW.alpha_bar(t)
    for w in ("eps", "truncated-snr"):
        torch.testing.assert_close(velocity_loss_weight(t, w), RayProcess.loss_weight(a, w) * (1 - t) ** 2,
                                   rtol=1e-10, atol=0)
    assert float(velocity_loss_weight(torch.tensor(1.0), "truncated-snr")) == 1.0


def v_net(x, t):
    """A fixed nonlinear 'velocity model'."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    return torch.tanh(x) * (1 + t) - 0.3 * x.roll(1, -1)


def test_deterministic_flow_steps_are_diffusers_flow_euler():
    """eta = 0 on the sigma path (eq. 10.5): x' = x0 + (s/t)(x - x0) = x + (s - t) v, number for number
    diffusers' FlowMatchEulerDiscreteScheduler on the same sigmas, from t = 1; mu does not enter."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowSchedule.shifted(3.0)
    (z,) = _draws(2, 2, 4, 6, 6, n=1)
    for steps in (1, 2, 4, 7):
        sig = sched.ray_sigmas(steps, torch.float64)
        out = sample_ray_sigma(denoiser_from_velocity(v_net), z, sig, process=RayProcess(0.3),
                               eps_mu=torch.randn_like(z), interpolation=FLOW, disable=True)
        ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
        ref.set_timesteps(sigmas=((sched.ray_timesteps(steps).double() + 1) / 1000).tolist())
        torch.testing.assert_close(ref.sigmas.double(), sig, rtol=1e-6, atol=1e-7)
        x = z.clone()
        for i in range(steps):
            x = x + (sig[i + 1] - sig[i]) * v_net(x, sig[i])
        torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_flow_sampler_is_the_vp_sampler_through_the_change_of_variables(eta):
    """The flow sampler from t = 1 equals the VP-form Ray sampler (section 6) on the eps model the
    velocity model defines, at a = alpha_bar(t), with the same noise draws, and the eps-form sampler
    (eq. 6.3) on x / (1 - t) where t < 1."""
    proc = RayProcess(0.25)
    z, mu = _draws(3, 2, 3, 5, 5, n=2)
    t = torch.tensor([1.0, 0.8, 0.55, 0.3, 0.1, 0.0], **T64)
    draws = _draws(4, 2, 3, 5, 5, n=4)
    it = iter(draws)
    out = sample_ray_sigma(denoiser_from_velocity(v_net), z, t, process=proc, eps_mu=mu, eta=eta,
                           noise_sampler=lambda s, s2: next(it), interpolation=FLOW, disable=True)
    # VP form: iterate RayProcess.backward_step at a(t) with x0 from the velocity model
    x, a = z.clone(), FLOW.alpha_bar(t)
    for i in range(5):
        x0 = x0_from_velocity(x * FLOW.vp_scale(t[i]), v_net(x * FLOW.vp_scale(t[i]), t[i:i + 1]), t[i])
        x = proc.backward_step(x, x0, mu, a[i], a[i + 1], eta if i < 4 else 0.0, draws[i] if i < 4 else None)
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)
    # the eps (sigma) form on s = t / (1 - t), started below t = 1
    it = iter(draws)
    flow2 = sample_ray_sigma(denoiser_from_velocity(v_net), z * 0.8, t[1:], process=proc, eps_mu=mu, eta=eta,
                             noise_sampler=lambda s, s2: next(it), interpolation=FLOW, disable=True)
    s = t[1:-1] / (1 - t[1:-1])

    def den_eps(x, sig):
        tt = sig.double() / (1 + sig.double())
        xf = x * (1 - tt).reshape(-1, 1, 1, 1)
        return x0_from_velocity(xf, v_net(xf, tt), tt)

    it = iter(draws)
    eps_form = sample_ray_sigma(den_eps, z * 0.8 / 0.2, torch.cat([s, s.new_zeros(1)]), process=proc, eps_mu=mu,
                                eta=eta, noise_sampler=lambda a1, a2: next(it), disable=True)
    torch.testing.assert_close(flow2, eps_form, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("t_from, t_to", [(1.0, 0.6), (0.7, 0.2), (0.4, 0.05)])
def test_eta1_flow_step_keeps_the_ray_marginals(t_from, t_to):
    """Given the exact x0, an eta = 1 step from a draw of q(x_t | x0) = N((1-t) x0 + t mu, t^2 sigma^2)
    is a draw of q(x_s | x0) (the posterior composes with the marginal; eq. 10.2, 10.5); Monte Carlo
    over 200k entries."""
    proc = RayProcess(0.5)
    g = torch.Generator().manual_seed(5)
    N = 200_000
    x0 = torch.full((N, 1), 0.7, **T64)
    mu = torch.full((N, 1), -1.3, **T64)
    x_t = (1 - t_from) * x0 + t_from * (mu + 0.5 * torch.randn(N, 1, generator=g, **T64))
    noise = torch.randn(N, 1, generator=g, **T64)
    # one eta = 1 step of the sampler: the point it hands the callback at the start of step 1
    seen = {}
    sample_ray_sigma(lambda x, s: x0, x_t, torch.tensor([t_from, t_to, 0.0], **T64), process=proc, eps_mu=mu,
                     eta=1.0, noise_sampler=lambda s, s2: noise, interpolation=FLOW, disable=True,
                     callback=lambda d: seen.setdefault("x", d["x"]) if d["i"] == 1 else None)
    out = seen["x"]
    mean, std = (1 - t_to) * 0.7 + t_to * -1.3, t_to * 0.5
    assert abs(float(out.mean()) - mean) < 4 * std / math.sqrt(N)
    assert abs(float(out.std()) / std - 1) < 0.01


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_oracle_velocity_model_returns_every_instance_from_t_1(steps):
    """App. A.4 on the flow path: the optimal velocity for a finite data set with target means is
    the posterior-weighted average of (x_t - x0_i) / t - x0_i ... written as n - x0 with the posterior
    x0; started at a draw mu_j + sigma xi (t = 1) the sampler returns x0_j."""
    proc = RayProcess(0.2)
    g = torch.Generator().manual_seed(6)
    N, D = 12, 24
    data, means = torch.randn(N, D, generator=g, **T64), 3 * torch.randn(N, D, generator=g, **T64)

    def oracle(x, t):
        tt = t.double().reshape(-1, 1, 1)
        centres = (1 - tt) * data[None] + tt * means[None]
        logw = -((x[:, None] - centres) ** 2).sum(-1) / (2 * (tt[:, :, 0] * proc.sigma) ** 2).clamp_min(1e-300)
        x0 = torch.einsum("bn,nd->bd", torch.softmax(logw, 1), data)
        return (x - x0) / t.double().reshape(-1, 1)             # v = (x - x0) / t, the v whose x0_from_velocity is x0

    start = means + proc.sigma * torch.randn(N, D, generator=g, **T64)
    sched = FlowSchedule.shifted(3.0)
    out = sample_ray_sigma(denoiser_from_velocity(oracle), start, sched.ray_sigmas(steps, torch.float64),
                           process=proc, interpolation=FLOW, disable=True)
    torch.testing.assert_close(out, data, rtol=1e-6, atol=1e-6)


def test_theorem1_from_a_velocity_model_averages_the_attributed_noise():
    """eq. 10.6: the probe records n_k = x_k + (1 - t_k) v_k; the first, at t = 1, is the start itself;
    mu* is their mean (sigma path) and the probe's end point is the flow Euler sample."""
    (z,) = _draws(7, 2, 3, 4, 4, n=1)
    sig = FlowSchedule.shifted(3.0).ray_sigmas(3, torch.float64)
    res = estimate_target_mean(denoiser_from_velocity(v_net), z, sig, interpolation=FLOW)
    x, preds = z.clone(), []
    for i in range(3):
        v = v_net(x, sig[i])
        preds.append(noise_from_velocity(x, v, sig[i]))
        x = x + (sig[i + 1] - sig[i]) * v
    torch.testing.assert_close(preds[0], z, rtol=0, atol=0)
    torch.testing.assert_close(res.eps_mu, torch.stack(preds).mean(0), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(res.sample, x, rtol=1e-10, atol=1e-10)
    assert res.nfe == 3


def test_shifted_grids_match_comfyui_and_diffusers_flux_dynamic_shift():
    """eq. 10.9: time_shift is ComfyUI's time_snr_shift and, with shift = e^mu, its flux_time_shift;
    FLUX's mu at 1024^2 is 1.15 (256 tokens: 0.5); diffusers' dynamic-shift scheduler gives the same
    trailing sigmas as FlowSchedule.shifted(e^mu)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    u = torch.linspace(0.001, 1, 1000, **T64)
    torch.testing.assert_close(time_shift(u, 3.0), 3 * u / (1 + 2 * u))
    mu = 0.8
    torch.testing.assert_close(time_shift(u, math.exp(mu)), math.exp(mu) / (math.exp(mu) + (1 / u - 1)))
    assert flux_mu(1024, 1024) == pytest.approx(1.15) and flux_mu(256, 256) == pytest.approx(0.5)
    sched = FlowSchedule.shifted(math.exp(flux_mu(512, 768)))
    ref = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                          base_image_seq_len=256, max_image_seq_len=4096)
    ref.set_timesteps(sigmas=((sched.ray_timesteps(4).double() + 1) / 1000).tolist(), mu=flux_mu(512, 768))
    torch.testing.assert_close(ref.sigmas.double(), sched.ray_sigmas(4, torch.float64), rtol=1e-6, atol=1e-7)
    assert float(sched.sigmas[-1]) == 1.0 and float(sched.alpha_bar(torch.tensor(999.0))) == 0.0


def test_flow_schedule_bad_input():
    with pytest.raises(ValueError, match="must end at noise level 1"):
        FlowSchedule(torch.tensor([0.1, 0.5]))
    with pytest.raises(ValueError, match=r"strictly increasing in \(0, 1\]"):
        FlowSchedule(torch.tensor([0.5, 0.2, 1.0]))
    with pytest.raises(ValueError, match="flow noise levels must be at most 1"):
        sample_ray_sigma(lambda x, s: x, torch.zeros(1, 2), torch.tensor([1.5, 0.0]), interpolation=FLOW)
    with pytest.raises(ValueError, match=r"timestep t must be in \[0, 999\]"):
        FlowSchedule.shifted(3.0).alpha_bar(torch.tensor(1000.0))
    with pytest.raises(ValueError, match=r"alpha_bar\) must be in \(0, 1\)"):     # eq. 4.3 divides by sqrt(a)
        RayProcess.x0_from_eps(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)


def test_vp_schedule_keeps_its_ray_timesteps_through_the_shared_code():
    s = NoiseSchedule.scaled_linear()
    assert s.ray_timesteps(4).tolist() == [999, 749, 499, 249]
    assert FlowSchedule.shifted(1.0).ray_timesteps(4).tolist() == [999, 749, 499, 249]
    torch.testing.assert_close(FlowSchedule.shifted(1.0).ray_sigmas(4, torch.float64),
                               torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], **T64))
