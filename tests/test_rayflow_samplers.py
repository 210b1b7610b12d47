"""Ray samplers (Algorithms 2 and 3) and target-mean estimation."""

import pytest
import torch

from rayflow import (NoiseSchedule, RayProcess, denoiser_from_eps, estimate_target_mean,
                     estimate_target_mean_vp, sample_ray, sample_ray_onestep, sample_ray_sigma)

PATHS = ["sigma", "linear"]


@pytest.fixture(scope="module")
def sched():
    return NoiseSchedule.scaled_linear()


def oracle_eps_model(data, means, proc, sched):
    """App. A.4: the optimal noise predictor for a finite data set {x0_i} with target means {mu_i}.

    Under the Ray marginal, x_t | i ~ N(sqrt(a) x0_i + k(a) mu_i, (1-a) sigma^2 I); the optimal
    n-prediction is the posterior-weighted average of (x_t - sqrt(a) x0_i) / sqrt(1 - a).
    """

    def eps_model(x, t):
        a = sched.alpha_bar(t.double())[:, None, None]                    # [B, 1, 1]
        x = x.double()
        centres = a.sqrt() * data[None] + proc.drift(a) * means[None]      # [B, N, D]
        var = (1 - a) * proc.sigma ** 2
        logw = -((x[:, None, :] - centres) ** 2).sum(-1) / (2 * var[:, :, 0])
        w = torch.softmax(logw, dim=1)                                     # [B, N]
        x0 = torch.einsum("bn,nd->bd", w, data)
        return (x - a[:, :, 0].sqrt() * x0) / (1 - a[:, :, 0]).sqrt()

    return eps_model


@pytest.mark.parametrize("path", PATHS)
def test_one_step_inverts_the_forward_process_given_the_true_noise(path, sched):
    proc = RayProcess(sigma=0.3, path=path)
    g = torch.Generator().manual_seed(0)
    x0, mu, noise = (torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    a_T = sched.alpha_bar(torch.tensor(999.0))
    x_T, n = proc.training_pair(x0, mu, a_T, noise)
    out = sample_ray_onestep(lambda x, t: n, x_T, sched)
    torch.testing.assert_close(out, x0, rtol=1e-10, atol=1e-10)
    # sigma form: one step with sigmas [s_max, 0] is Algorithm 3 too
    s_max = sched.sigmas[-1]
    out = sample_ray_sigma(denoiser_from_eps(lambda x, t: n, sched), x_T / a_T.sqrt(),
                           torch.stack([s_max, s_max.new_zeros(())]), process=proc, eps_mu=mu, disable=True)
    torch.testing.assert_close(out, x0, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("path", PATHS)
def test_oracle_denoiser_reaches_its_instance_at_1_2_4_8_steps(path, sched):
    """Separated instances: each start drawn from instance j's Ray marginal returns to x0_j."""
    proc = RayProcess(sigma=0.3, path=path)
    g = torch.Generator().manual_seed(1)
    N, D = 16, 32
    data = torch.randn(N, D, generator=g, dtype=torch.float64)
    means = torch.randn(N, D, generator=g, dtype=torch.float64)
    eps_model = oracle_eps_model(data, means, proc, sched)
    a_T = sched.alpha_bar(torch.tensor(999.0))
    x_T = proc.sample_marginal(data, means, a_T, torch.randn(N, D, generator=g, dtype=torch.float64))
    errors = []
    for steps in (1, 2, 4, 8):
        out = sample_ray(eps_model, x_T, means, proc, sched, sched.ray_timesteps(steps))
        errors.append(float((out - data).norm(dim=1).max()))
    assert errors[-1] < 1e-6, errors
    assert all(e2 <= e1 + 1e-9 for e1, e2 in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("path", PATHS)
def test_oracle_denoiser_overlapping_data_error_non_increasing(path, sched):
    """Overlapping instances (shared target mean): 1 step gives a blurred posterior mean; more
    steps land on a data point. Distance to the nearest data point must not grow with steps."""
    proc = RayProcess(sigma=1.0, path=path)
    g = torch.Generator().manual_seed(2)
    N, D, B = 8, 4, 64
    data = torch.randn(N, D, generator=g, dtype=torch.float64) * 0.5
    means = torch.zeros(N, D, dtype=torch.float64)
    eps_model = oracle_eps_model(data, means, proc, sched)
    x_T = torch.randn(B, D, generator=g, dtype=torch.float64)
    mu = torch.zeros(B, D, dtype=torch.float64)
    errors = []
    for steps in (1, 2, 4, 8):
        out = sample_ray(eps_model, x_T, mu, proc, sched, sched.ray_timesteps(steps))
        errors.append(float(torch.cdist(out, data).min(dim=1).values.mean()))
    print("mean distance to nearest data point at 1/2/4/8 steps:", errors)
    assert errors[0] > 0.05, errors                       # one step really is blurred here
    assert all(e2 <= e1 + 1e-6 for e1, e2 in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0], errors


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
def test_vp_and_sigma_forms_agree(path, eta, sched):
    proc = RayProcess(sigma=0.3, path=path)
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.3

    def eps_model(x, t):
        return torch.tanh(torch.einsum("bchw,cd->bdhw", x, w)) + 0.1 * torch.cos(t)[:, None, None, None]

    g = torch.Generator().manual_seed(4)
    x_T = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    mu = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    for steps in (1, 3, 8):
        ts = sched.ray_timesteps(steps)
        vp = sample_ray(eps_model, x_T, mu, proc, sched, ts, eta=eta, generator=torch.Generator().manual_seed(5))
        gen = torch.Generator().manual_seed(5)

        def noise_sampler(s, s_next):
            return torch.randn(x_T.shape, generator=gen, dtype=torch.float32).double()

        sigmas = torch.cat([sched.sigmas[ts], torch.zeros(1, dtype=torch.float64)])
        a0 = sched.alpha_bar(ts[:1].double())
        sg = sample_ray_sigma(denoiser_from_eps(eps_model, sched), x_T / a0.sqrt(), sigmas, process=proc,
                              eps_mu=mu, eta=eta, noise_sampler=noise_sampler, disable=True)
        torch.testing.assert_close(sg, vp, rtol=1e-9, atol=1e-9)


def test_sigma_form_noise_mode_uses_the_vp_start(sched):
    """eps_mu=None: the target mean is the VP start point (the seeded noise for text-to-image)."""
    g = torch.Generator().manual_seed(6)
    z = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    model = denoiser_from_eps(lambda x, t: torch.tanh(x), sched)
    sigmas = sched.ray_sigmas(4, dtype=torch.float64)
    x = z / sched.alpha_bar(sched.ray_timesteps(1).double()).sqrt()
    a = sample_ray_sigma(model, x, sigmas, disable=True)
    b = sample_ray_sigma(model, x, sigmas, eps_mu=z, disable=True)
    torch.testing.assert_close(a, b)


def test_sigma_sampler_calls_back_like_k_diffusion(sched):
    seen = []
    model = denoiser_from_eps(lambda x, t: torch.tanh(x), sched)
    x = torch.randn(1, 4, 4, 4)
    sample_ray_sigma(model, x, sched.ray_sigmas(3), callback=seen.append, disable=True)
    assert [d["i"] for d in seen] == [0, 1, 2]
    assert set(seen[0]) >= {"x", "i", "sigma", "sigma_hat", "denoised"}


def test_target_mean_of_a_straight_trajectory_is_its_noise(sched):
    """If the denoiser always predicts the same x0, every probe point attributes the same noise:
    Theorem 1 returns exactly that noise with zero spread."""
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    z = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    sigmas = sched.ray_sigmas(6, dtype=torch.float64)
    res = estimate_target_mean(lambda x, s: x0, x0 + sigmas[0] * z, sigmas)
    assert res.nfe == 6
    torch.testing.assert_close(res.eps_mu, z)
    assert float(res.sigma.max()) < 1e-6


@pytest.mark.parametrize("path", PATHS)
def test_target_mean_vp_probe_matches_manual_ddim_probe(path, sched):
    proc = RayProcess(path=path)
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 0.5

    def eps_model(x, t):
        return torch.tanh(torch.einsum("bchw,cd->bdhw", x, w)) * (1 + t / 1000)[:, None, None, None]

    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    P = 5
    res = estimate_target_mean_vp(eps_model, x_T, sched, P, process=proc)
    # manual probe: diffusers-style DDIM with eps recorded at each step
    ts = sched.ray_timesteps(P)
    x, preds, alphas = x_T, [], []
    for i, t in enumerate(ts):
        a = sched.alpha_bar(t.double())
        a_next = sched.alpha_bar(ts[i + 1].double()) if i + 1 < P else torch.tensor(1.0, dtype=torch.float64)
        e = eps_model(x, t.double().expand(2))
        x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * e
        preds.append(e)
        alphas.append(a)
    mu, sig = proc.theorem1(torch.stack(preds), torch.stack(alphas))
    torch.testing.assert_close(res.eps_mu, mu, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(res.sigma, sig, rtol=1e-5, atol=1e-6)


def test_samplers_keep_fp16_dtype_and_stay_close_to_fp32(sched):
    proc = RayProcess(sigma=0.3)

    def eps_model(x, t):
        return torch.tanh(x)

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(10))
    ref = sample_ray(eps_model, x, x, proc, sched, sched.ray_timesteps(4))
    out = sample_ray(eps_model, x.half(), x.half(), proc, sched, sched.ray_timesteps(4))
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
