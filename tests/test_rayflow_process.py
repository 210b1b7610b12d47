"""The Ray process: marginal, posterior, DDPM reduction, path probability and Theorem 1."""

import math

import pytest
import torch

from rayflow import NoiseSchedule, RayProcess

PATHS = ["sigma", "linear"]


@pytest.fixture(scope="module")
def sched():
    return NoiseSchedule.scaled_linear()


@pytest.mark.parametrize("path", PATHS)
def test_markov_chain_composes_to_closed_form_marginal(path, sched):
    """Monte Carlo of step-by-step Markov transitions vs the closed-form q(x_t | x0)."""
    g = torch.Generator().manual_seed(0)
    proc = RayProcess(sigma=0.4, path=path)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    mu = torch.full((n, 1), -1.3, dtype=torch.float64)
    ts = [0, 49, 199, 499, 999]                       # skip-steps exercise the general alpha = a/a_prev
    x, a_prev = x0.clone(), torch.tensor(1.0, dtype=torch.float64)
    for t in ts:
        a = sched.alpha_bar(torch.tensor(float(t)))
        x = proc.forward_step(x, mu, a_prev, a, torch.randn(x.shape, generator=g, dtype=torch.float64))
        mean, std = proc.marginal(x0[:1], mu[:1], a)
        se = float(std) / math.sqrt(n)
        assert abs(float(x.mean()) - float(mean)) < 5 * se, (t, float(x.mean()), float(mean))
        assert abs(float(x.std()) / float(std) - 1) < 0.01, (t, float(x.std()), float(std))
        a_prev = a


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("t,t_prev", [(500, 499), (999, 749), (10, 0)])
def test_posterior_matches_numerical_bayes(path, t, t_prev, sched):
    """q(x_prev | x_t, x0) ∝ q(x_t | x_prev) q(x_prev | x0), integrated on a fine 1-D grid."""
    proc = RayProcess(sigma=0.3, path=path)
    a = sched.alpha_bar(torch.tensor(float(t)))
    a_prev = sched.alpha_bar(torch.tensor(float(t_prev)))
    x0 = torch.tensor([[0.8]], dtype=torch.float64)
    mu = torch.tensor([[-0.5]], dtype=torch.float64)
    x_t = torch.tensor([[0.3]], dtype=torch.float64)
    prior_mean, prior_std = proc.marginal(x0, mu, a_prev)
    grid = torch.linspace(float(prior_mean) - 12 * float(prior_std), float(prior_mean) + 12 * float(prior_std),
                          400_001, dtype=torch.float64)[:, None]
    # transition x_prev -> x_t: forward_step with zero noise gives its mean; its std is sqrt(1-alpha) sigma
    trans_mean = proc.forward_step(grid, mu.expand_as(grid), a_prev, a, torch.zeros_like(grid))
    trans_std = math.sqrt(1 - float(a / a_prev)) * proc.sigma
    logp = -0.5 * ((x_t - trans_mean) / trans_std) ** 2 - 0.5 * ((grid - prior_mean) / prior_std) ** 2
    w = torch.softmax(logp.squeeze(1), 0)
    num_mean = float((w * grid.squeeze(1)).sum())
    num_var = float((w * (grid.squeeze(1) - num_mean) ** 2).sum())
    mean, var = proc.posterior(x_t, x0, mu, a, a_prev)
    assert float(mean) == pytest.approx(num_mean, abs=1e-6 + 1e-5 * abs(num_mean))
    assert float(var) == pytest.approx(num_var, rel=1e-4)


@pytest.mark.parametrize("path", PATHS)
def test_backward_step_eta1_is_a_posterior_draw(path, sched):
    proc = RayProcess(sigma=0.3, path=path)
    g = torch.Generator().manual_seed(1)
    x_t, x0, mu = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    a, a_prev = sched.alpha_bar(torch.tensor(700.0)), sched.alpha_bar(torch.tensor(400.0))
    noise = torch.randn(4, 3, generator=g, dtype=torch.float64)
    mean, var = proc.posterior(x_t, x0, mu, a, a_prev)
    got = proc.backward_step(x_t, x0, mu, a, a_prev, eta=1.0, noise=noise)
    torch.testing.assert_close(got, mean + var.sqrt() * noise, rtol=1e-10, atol=1e-10)


def test_reduces_to_ddpm_posterior_of_diffusers(sched):
    """eps_mu = 0, sigma = 1: the Ray posterior step is diffusers' DDPMScheduler step."""
    diffusers = pytest.importorskip("diffusers")
    ddpm = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   num_train_timesteps=1000, clip_sample=False, variance_type="fixed_small")
    torch.testing.assert_close(sched.alphas_cumprod.float(), ddpm.alphas_cumprod, rtol=1e-6, atol=1e-7)
    proc = RayProcess(sigma=1.0, path="sigma")
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(2, 4, 8, 8, generator=g)
    eps = torch.randn(2, 4, 8, 8, generator=g)
    for t in (999, 500, 3):
        out = ddpm.step(eps, t, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))
        a, a_prev = sched.alpha_bar(torch.tensor(float(t))), sched.alpha_bar(torch.tensor(float(t - 1)))
        x0 = proc.x0_from_eps(x_t, eps, a)
        ours = proc.backward_step(x_t, x0, torch.zeros_like(x_t), a, a_prev, eta=1.0, noise=noise)
        torch.testing.assert_close(ours, out, rtol=1e-4, atol=1e-4)
    # and the marginal is diffusers' add_noise
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 900])
    ours = proc.sample_marginal(x0, torch.zeros_like(x0), sched.alpha_bar(t.double()), eps)
    torch.testing.assert_close(ours, ddpm.add_noise(x0, eps, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 50])
def test_reduces_to_ddim_sampler_of_diffusers(steps, sched):
    """eps_mu = 0, sigma = 1, eta = 0: sample_ray is diffusers' DDIMScheduler (trailing spacing)."""
    diffusers = pytest.importorskip("diffusers")
    from rayflow import sample_ray

    ddim = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    ddim.set_timesteps(steps)
    ours_ts = sched.ray_timesteps(steps)
    assert ours_ts.tolist() == ddim.timesteps.tolist()

    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(3)) * 0.3

    def eps_model(x, t):
        return torch.tanh(torch.einsum("bchw,cd->bdhw", x, w) + t[:, None, None, None] / 1000)

    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    x = x_T.clone()
    for t in ddim.timesteps:
        x = ddim.step(eps_model(x, t.float().expand(2)), t, x).prev_sample
    ours = sample_ray(eps_model, x_T, torch.zeros_like(x_T), RayProcess(sigma=1.0), sched, ours_ts)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", PATHS)
def test_training_pair_is_the_marginal_in_epsilon_form(path, sched):
    proc = RayProcess(sigma=0.3, path=path)
    g = torch.Generator().manual_seed(5)
    x0, mu, noise = (torch.randn(3, 4, 6, 6, generator=g, dtype=torch.float64) for _ in range(3))
    a = sched.alpha_bar(torch.tensor([999.0, 400.0, 0.0]))
    x_t, n = proc.training_pair(x0, mu, a, noise)
    torch.testing.assert_close(x_t, proc.sample_marginal(x0, mu, a, noise))
    torch.testing.assert_close(proc.x0_from_eps(x_t, n, a), x0)
    if path == "sigma":   # one noise expectation at every timestep
        torch.testing.assert_close(n, mu + 0.3 * noise)


@pytest.mark.parametrize("path", PATHS)
def test_start_anchor_centres_the_top_marginal_on_the_start_point(path, sched):
    """eq. 7.3: with weight 1 the training input at the top level is the start point plus the
    process's own noise, with weight 0 the target mean is untouched, in between a linear blend."""
    proc = RayProcess(sigma=0.1, path=path)
    g = torch.Generator().manual_seed(11)
    x0, mu, z, noise = (torch.randn(3, 4, 6, 6, generator=g, dtype=torch.float64) for _ in range(4))
    a_top = sched.alpha_bar(torch.tensor(999.0))
    top = proc.start_anchored_mean(mu, x0, z, a_top, 1.0)
    x_t, n = proc.training_pair(x0, top, a_top.expand(3), noise)
    torch.testing.assert_close(x_t, z + (1 - a_top).sqrt() * 0.1 * noise)
    torch.testing.assert_close(proc.start_anchored_mean(mu, x0, z, a_top, 0.0), mu)
    w = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    got = proc.start_anchored_mean(mu, x0, z, a_top, w)
    torch.testing.assert_close(got, w.view(-1, 1, 1, 1) * top + (1 - w.view(-1, 1, 1, 1)) * mu)
    assert proc.start_anchored_mean(mu.half(), x0.half(), z.half(), a_top, 0.5).dtype == torch.float16
    with pytest.raises(ValueError, match="weight must be in"):
        proc.start_anchored_mean(mu, x0, z, a_top, 1.5)


def test_start_anchor_weight_falls_from_the_top_timestep():
    t = torch.tensor([999.0, 899.0, 749.0, 499.0, 0.0])
    w = RayProcess.start_anchor_weight(t, 1000, 0.5)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.8, 0.5, 0.0, 0.0], dtype=torch.float64))
    assert RayProcess.start_anchor_weight(t, 1000, 0.1).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert not RayProcess.start_anchor_weight(t, 1000, 0.0).any()
    with pytest.raises(ValueError, match="anchor must be in"):
        RayProcess.start_anchor_weight(t, 1000, 1.5)


def test_truncated_snr_weight_is_the_x0_error_where_noise_dominates(sched):
    """lambda * ||n_hat - n||^2 equals ||x0_hat - x0||^2 for a < 1/2 and the noise error above."""
    proc = RayProcess(sigma=0.3)
    g = torch.Generator().manual_seed(7)
    x0, mu, noise, err = (torch.randn(4, 4, 6, 6, generator=g, dtype=torch.float64) for _ in range(4))
    t = torch.tensor([999.0, 700.0, 300.0, 0.0])
    a = sched.alpha_bar(t)
    x_t, n = proc.training_pair(x0, mu, a, noise)
    pred = n + 0.01 * err
    eps_mse = (pred - n).pow(2).flatten(1).mean(1)
    x0_mse = (proc.x0_from_eps(x_t, pred, a) - x0).pow(2).flatten(1).mean(1)
    lam = proc.loss_weight(a, "truncated-snr")
    noisy = a < 0.5
    assert noisy.tolist() == [True, True, False, False]
    torch.testing.assert_close((lam * eps_mse)[noisy], x0_mse[noisy])
    torch.testing.assert_close((lam * eps_mse)[~noisy], eps_mse[~noisy])
    assert float(lam[0]) == pytest.approx((1 - float(a[0])) / float(a[0])) and float(lam[0]) > 200
    torch.testing.assert_close(proc.loss_weight(a, "eps"), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="weighting"):
        proc.loss_weight(a, "snr")


def _trajectory(K, B, D, g):
    eps_preds = torch.randn(K, B, D, generator=g, dtype=torch.float64) * 0.4 + torch.randn(1, B, D, generator=g,
                                                                                         dtype=torch.float64)
    a_k = torch.linspace(0.005, 0.9, K, dtype=torch.float64)
    return eps_preds, a_k


@pytest.mark.parametrize("path", PATHS)
def test_theorem1_maximises_path_log_probability(path):
    proc = RayProcess(path=path)
    g = torch.Generator().manual_seed(6)
    for _ in range(20):
        eps_preds, a_k = _trajectory(K=6, B=5, D=32, g=g)
        mu, sig = proc.theorem1(eps_preds, a_k)
        best = proc.path_log_prob(eps_preds, a_k, mu, sig)
        for scale in (0.3, 0.05, 0.005):
            d_mu = torch.randn(mu.shape, generator=g, dtype=torch.float64) * scale
            worse_mu = proc.path_log_prob(eps_preds, a_k, mu + d_mu, sig)
            worse_sig = proc.path_log_prob(eps_preds, a_k, mu, sig * (1 + scale))
            worse_sig2 = proc.path_log_prob(eps_preds, a_k, mu, sig * (1 - scale))
            assert bool((best > worse_mu).all()) and bool((best > worse_sig).all()) and bool((best > worse_sig2).all())


def test_theorem1_on_the_sigma_path_is_time_average_and_rms_spread():
    g = torch.Generator().manual_seed(8)
    eps_preds, a_k = _trajectory(K=5, B=3, D=10, g=g)
    mu, sig = RayProcess(path="sigma").theorem1(eps_preds, a_k)
    torch.testing.assert_close(mu, eps_preds.mean(0))
    torch.testing.assert_close(sig.double(), (eps_preds - eps_preds.mean(0)).pow(2).mean(dim=(0, 2)).sqrt(),
                               rtol=1e-6, atol=1e-6)


def test_low_precision_inputs_use_fp32_schedule_math(sched):
    proc = RayProcess(sigma=0.3)
    g = torch.Generator().manual_seed(9)
    x0, mu, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    a = sched.alpha_bar(torch.tensor([999.0, 10.0]))
    ref, _ = proc.training_pair(x0, mu, a, noise)
    for dt in (torch.float16, torch.bfloat16):
        out, _ = proc.training_pair(x0.to(dt), mu.to(dt), a, noise.to(dt))
        assert out.dtype == dt
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_each_path_mean_is_a_straight_ray(sched):
    """linear path: VP mean = eps_mu + sqrt(a) (x0 - eps_mu); sigma path: sigma-space mean = x0 + s eps_mu."""
    g = torch.Generator().manual_seed(10)
    x0, mu = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(2))
    a = sched.alpha_bar(torch.tensor([999.0, 500.0, 20.0]))
    mean, _ = RayProcess(path="linear").marginal(x0, mu, a)
    torch.testing.assert_close(mean, mu + a.sqrt()[:, None] * (x0 - mu))
    mean, _ = RayProcess(path="sigma").marginal(x0, mu, a)
    s = ((1 - a) / a).sqrt()[:, None]
    torch.testing.assert_close(mean / a.sqrt()[:, None], x0 + s * mu)
    for path in PATHS:   # sigma_offset is the same ray in sigma space
        proc = RayProcess(path=path)
        m, _ = proc.marginal(x0, mu, a)
        torch.testing.assert_close(m / a.sqrt()[:, None], x0 + proc.sigma_offset(s) * mu)
