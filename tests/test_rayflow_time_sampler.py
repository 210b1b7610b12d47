"""Time Sampler: SVGD particles converge to Prop. 3's density; importance weights are unbiased."""

import math

import pytest
import torch

from rayflow import LossProfile, TimeSampler, svgd_direction

T = 100


def rms_profile(u):
    """Known per-timestep RMS loss sqrt(E[l(u)^2]): a bump at u = 0.3 over a floor."""
    return 0.15 + torch.exp(-((u - 0.3) ** 2) / (2 * 0.08 ** 2)) + 0.4 * torch.exp(-((u - 0.8) ** 2) / (2 * 0.05 ** 2))


def optimal_bins():
    """Prop. 3 with a uniform prior: p*(i) ∝ RMS loss, integrated over each timestep bin."""
    fine = (torch.arange(T * 50, dtype=torch.float64) + 0.5) / (T * 50)
    return rms_profile(fine).reshape(T, 50).mean(1).div_(rms_profile(fine).mean() * T)


def train_sampler(steps=800, seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    ts = TimeSampler(in_features=4, num_particles=32, bandwidth=0.002, uniform_mix=0.05)
    profile = LossProfile(bins=50, decay=0.98)
    opt = torch.optim.Adam(ts.parameters(), lr=3e-3)
    for _ in range(steps):
        feats = torch.randn(64, 4, generator=g)
        t, w = ts.sample(feats, T, generator=g)
        u = (t.double() + 0.5) / T
        loss = rms_profile(u) * torch.randn(u.shape, generator=g, dtype=torch.float64)   # E[l^2] = rms^2
        profile.update(u, loss)
        opt.zero_grad()
        ts.svgd_loss(feats, profile.score, step=0.005).backward()
        opt.step()
    return ts, g


def test_particles_converge_to_prop3_density():
    ts, g = train_sampler()
    feats = torch.randn(256, 4, generator=g)
    q = ts.proposal(ts(feats), T).mean(0)
    p_star = optimal_bins()
    tv = 0.5 * float((q - p_star).abs().sum())
    tv_uniform = 0.5 * float((torch.full_like(p_star, 1 / T) - p_star).abs().sum())
    print(f"total variation to Prop.-3 density: Time Sampler {tv:.3f}, uniform {tv_uniform:.3f} (threshold 0.12)")
    assert tv < 0.12
    assert tv < 0.5 * tv_uniform


def test_importance_weighted_loss_is_unbiased_with_lower_variance():
    ts, g = train_sampler()
    feats = torch.randn(64, 4, generator=g)
    centres = (torch.arange(T, dtype=torch.float64) + 0.5) / T
    second_moment = rms_profile(centres) ** 2                  # E[l(i)^2]
    mean_abs = rms_profile(centres) * math.sqrt(2 / math.pi)   # E[|l(i)|] for l = rms * N(0,1)
    truth = float(mean_abs.mean())
    # exact moments under the proposal, then a Monte Carlo check of the sampler itself
    q = ts.proposal(ts(feats), T)                              # [B, T]
    w = (1.0 / T) / q
    exact_mean = (q * w * mean_abs).sum(1)
    torch.testing.assert_close(exact_mean, torch.full_like(exact_mean, truth), rtol=1e-9, atol=1e-12)
    var_is = float(((q * w ** 2 * second_moment).sum(1) - truth ** 2).mean())
    var_uniform = float(second_moment.mean() - truth ** 2)
    ratio = var_is / var_uniform
    print(f"variance of importance-weighted loss / uniform sampling: {ratio:.3f}")
    assert ratio < 0.9
    draws = []
    for _ in range(400):
        t, wt = ts.sample(feats, T, generator=g)
        loss = rms_profile((t.double() + 0.5) / T) * torch.randn(t.shape, generator=g, dtype=torch.float64)
        draws.append(wt.double() * loss.abs())
    draws = torch.cat(draws)
    se = float(draws.std()) / math.sqrt(draws.numel())
    assert abs(float(draws.mean()) - truth) < 4 * se, (float(draws.mean()), truth, se)


def test_svgd_direction_matches_its_formula():
    u = torch.tensor([[0.2, 0.5, 0.55]], dtype=torch.float64)
    score = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    h = 0.05
    phi = svgd_direction(u, score, h)
    for i in range(3):
        expected = sum(math.exp(-(u[0, j] - u[0, i]) ** 2 / h) * (score[0, j] - 2 * (u[0, j] - u[0, i]) / h)
                       for j in range(3)) / 3
        assert float(phi[0, i]) == pytest.approx(float(expected), rel=1e-12)


def test_loss_profile_score_is_the_slope_of_log_rms():
    prof = LossProfile(bins=20, decay=0.0)
    u = (torch.arange(20, dtype=torch.float64) + 0.5) / 20
    rms = torch.exp(3 * u)                                   # log rms = 3u: slope 3 everywhere inside
    prof.update(u, rms)
    inner = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    torch.testing.assert_close(prof.score(inner), torch.full_like(inner, 3.0), rtol=1e-9, atol=1e-9)


def test_save_load_roundtrip_and_bad_files(tmp_path):
    ts = TimeSampler(in_features=3, num_particles=4)
    path = str(tmp_path / "ts.safetensors")
    ts.save(path)
    back = TimeSampler.load(path)
    x = torch.randn(5, 3)
    torch.testing.assert_close(back(x), ts(x))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read Time Sampler file"):
        TimeSampler.load(str(bad))
    from safetensors.torch import save_file
    other = str(tmp_path / "other.safetensors")
    save_file({"w": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a RayFlow Time Sampler file"):
        TimeSampler.load(other)
