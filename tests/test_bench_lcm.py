"""The LCM-LoRA baseline of bench/quality.py: its math against diffusers' schedulers, and a short
distillation on the proxy teacher whose LoRA loads and samples like the benchmark uses it."""

import os

import pytest
import torch

from bench.lcm_baseline import (LCM_RECIPE, SKIP, boundary_scalings, consistency_fn, distil_lcm, lcm_loss, lcm_samples,
                                lcm_scheduler, skipping_grid)

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(HERE, "proxy", "weights", "teacher")


def _schedule():
    from rayflow import NoiseSchedule

    return NoiseSchedule.scaled_linear(1000)


def test_skipping_grid_and_boundary_condition():
    grid = skipping_grid(1000)
    assert grid.tolist() == list(range(SKIP - 1, 1000, SKIP)) and len(grid) == 1000 // SKIP
    c_skip, c_out = boundary_scalings(torch.tensor([0, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0            # f(x, 0) = x
    assert c_skip[1] < 1e-6 and abs(c_out[1] - 1) < 1e-6
    x = torch.randn(3, 4, 8, 8)
    ac = _schedule().alphas_cumprod.double()
    assert torch.equal(consistency_fn(lambda x, t: torch.randn_like(x), x, torch.zeros(3, dtype=torch.long), ac), x)


def test_scalings_match_diffusers_lcm_scheduler():
    from diffusers import LCMScheduler

    ref = LCMScheduler(timestep_scaling=10.0)
    t = torch.tensor([0, 1, 19, 259, 999])
    c_skip, c_out = boundary_scalings(t)
    for i, ti in enumerate(t.tolist()):
        rs, ro = ref.get_scalings_for_boundary_condition_discrete(ti)
        assert abs(c_skip[i] - rs) < 1e-12 and abs(c_out[i] - ro) < 1e-12


def test_loss_matches_a_diffusers_ddim_reference():
    """The teacher's guided DDIM step t -> t - k, the boundary scalings and the pseudo-Huber loss,
    recomputed per item with diffusers' DDIMScheduler (final alpha = alpha_bar[0] at the boundary)."""
    from diffusers import DDIMScheduler

    sched_ = _schedule()
    ac = sched_.alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    B = 5
    x0 = torch.randn(B, 4, 8, 8, generator=g)
    noise = torch.randn(B, 4, 8, 8, generator=g)
    cond, uncond = torch.randn(B, 3, 6, generator=g), torch.randn(B, 3, 6, generator=g)
    t = torch.tensor([19, 39, 499, 979, 999])
    W = torch.randn(4, 4, generator=g) * 0.3

    def student(x, tt, e):       # any smooth functions of (x, t, text) that differ
        return torch.einsum("oc,bchw->bohw", W, x) + e.mean((1, 2)).view(-1, 1, 1, 1) * (tt.view(-1, 1, 1, 1) / 1000)

    def teacher(x, tt, e):
        return 0.7 * x + e.sum((1, 2)).view(-1, 1, 1, 1) * 0.1

    got = lcm_loss(student, teacher, x0, cond, uncond, ac, 3.0, t, noise, loss="huber")
    l2 = lcm_loss(student, teacher, x0, cond, uncond, ac, 3.0, t, noise)         # the recipe's default

    ddim = DDIMScheduler(trained_betas=sched_.betas.tolist(), set_alpha_to_one=False, clip_sample=False,
                         timestep_spacing="trailing", prediction_type="epsilon")
    ddim.set_timesteps(1000 // SKIP)
    ref = lcm_scheduler(type("M", (), {"schedule": sched_})())
    losses = []
    for i in range(B):
        ti = int(t[i])
        xt = ddim.add_noise(x0[i:i + 1].double(), noise[i:i + 1].double(), torch.tensor([ti])).float()
        eu, ec = teacher(torch.cat([xt, xt]), torch.tensor([ti, ti]), torch.cat([uncond[i:i + 1], cond[i:i + 1]])).chunk(2)
        xs = ddim.step(eu + 3.0 * (ec - eu), ti, xt).prev_sample
        si = max(ti - SKIP, 0)

        def f(x, tt):
            cs, co = ref.get_scalings_for_boundary_condition_discrete(tt)
            a = ac[tt]
            e = student(x, torch.tensor([tt]), cond[i:i + 1]).double()
            return cs * x.double() + co * (x.double() - (1 - a).sqrt() * e) / a.sqrt()

        d2 = (f(xt, ti) - f(xs, si)) ** 2
        losses.append(torch.stack([(torch.sqrt(d2 + 1e-6) - 1e-3).mean(), d2.mean()]))
    want = torch.stack(losses).mean(0)
    assert torch.allclose(got.double(), want[0], rtol=1e-4, atol=1e-7)
    assert torch.allclose(l2.double(), want[1], rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="loss must be"):
        lcm_loss(student, teacher, x0, cond, uncond, ac, 3.0, t, noise, loss="l1")


def test_the_published_recipe_reaches_the_training_loop(small_cache, tmp_path, monkeypatch):
    """LCM_RECIPE (diffusers' LCM-LoRA script): AdamW lr 1e-4 and weight decay 1e-2, a constant
    learning rate from the first step, clipping at 1.0, the L2 loss; snapshots every save_every steps."""
    import bench.lcm_baseline as lcm

    out, _ = small_cache
    seen = {"lr": [], "clip": [], "loss": []}
    real_adamw, real_clip, real_loss = torch.optim.AdamW, torch.nn.utils.clip_grad_norm_, lcm.lcm_loss

    class SpyAdamW(real_adamw):
        def __init__(self, params, **kw):
            seen["opt"] = kw
            super().__init__(params, **kw)

        def step(self, *a, **k):
            seen["lr"].append(self.param_groups[0]["lr"])
            return super().step(*a, **k)

    monkeypatch.setattr(torch.optim, "AdamW", SpyAdamW)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, n, *a, **k: seen["clip"].append(n) or real_clip(p, n))
    monkeypatch.setattr(lcm, "lcm_loss", lambda *a, **k: seen["loss"].append(k["loss"]) or real_loss(*a, **k))
    target = tmp_path / "lcm.safetensors"
    distil_lcm(TEACHER, str(out / "w" / "cache"), str(target), train_steps=4, batch_size=2, lora_rank=2, lora_alpha=2.0,
               progress=False, save_every=2)
    assert seen["opt"] == {"lr": LCM_RECIPE["learning_rate"], "weight_decay": LCM_RECIPE["weight_decay"]} \
        == {"lr": 1e-4, "weight_decay": 1e-2}
    assert seen["lr"] == [1e-4] * 4                      # constant from the first step (no warm-up, no decay)
    assert seen["clip"] == [1.0] * 4 and seen["loss"] == ["l2"] * 4
    assert (tmp_path / "lcm-step000002.safetensors").is_file() and target.is_file()
    # the options override the recipe: the sweep's learning rate, Huber, the trainer's warm-up + cosine
    seen.update(lr=[], clip=[], loss=[])
    distil_lcm(TEACHER, str(out / "w" / "cache"), str(tmp_path / "b.safetensors"), train_steps=4, batch_size=2,
               lora_rank=2, lora_alpha=2.0, progress=False, learning_rate=1e-3, loss="huber",
               lr_schedule_kind="warmup_cosine", lr_warmup=2)
    assert seen["opt"]["lr"] == 1e-3 and seen["loss"] == ["huber"] * 4
    assert seen["lr"][0] < seen["lr"][1] and seen["lr"][3] < seen["lr"][1]


def test_an_ema_target_changes_what_the_student_learns(small_cache, tmp_path):
    """With the LCM paper's EMA target (0.95) the same seed trains another LoRA than with the online
    student as its own target."""
    from safetensors.torch import load_file

    out, _ = small_cache
    kw = dict(train_steps=4, batch_size=2, lora_rank=2, lora_alpha=2.0, progress=False, ema_target=0.95)
    plain = load_file(distil_lcm(TEACHER, str(out / "w" / "cache"), str(tmp_path / "a.safetensors"),
                                 **{**kw, "ema_target": 0.0}))
    ema = load_file(distil_lcm(TEACHER, str(out / "w" / "cache"), str(tmp_path / "b.safetensors"), **kw))
    assert sorted(plain) == sorted(ema) and any(not torch.equal(plain[k], ema[k]) for k in plain)


def test_distilled_lora_loads_and_samples_with_the_trained_parametrisation(small_cache):
    from safetensors import safe_open

    from proxy.sampling import load_lora_unet
    from training.data import item_noise
    from training.models import load_base_model

    out, labels = small_cache
    path = distil_lcm(TEACHER, str(out / "w" / "cache"), str(out / "lcm.safetensors"), train_steps=6, batch_size=4,
                      lora_rank=4, lora_alpha=4.0, progress=False)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        ups = [f.get_tensor(k) for k in f.keys() if k.endswith("lora_up.weight")]
    assert meta["lcm.baseline"] == "1" and meta["lcm.train_steps"] == "6"
    assert "rayflow.format" not in meta           # the RayFlow LoRA Loader must not take it for a RayFlow LoRA
    assert ups and any(u.abs().max() > 0 for u in ups)     # lora_up starts at zero: training moved it
    assert not os.path.exists(path + ".tmp")

    model = load_base_model(TEACHER)
    unet = load_lora_unet(TEACHER, path)
    seeds = torch.arange(len(labels))
    one, nfe1 = lcm_samples(model, unet, labels, seeds, 1)
    two, nfe2 = lcm_samples(model, unet, labels, seeds, 2)
    assert (nfe1, nfe2) == (1, 2) and one.shape == (len(labels), 3, 16, 16)
    assert torch.equal(two, lcm_samples(model, unet, labels, seeds, 2)[0])      # seeded
    assert not torch.allclose(one, two)
    # one LCMScheduler step is the consistency function the LoRA was trained as, at T - 1
    from proxy.data import caption_of

    ehs = model.encode_prompts([caption_of(l) for l in labels.tolist()], torch.device("cpu"))["cond"]
    z = item_noise(0, seeds, (model.latent_channels, 16, 16))
    f = consistency_fn(lambda x, t: unet(x, t, encoder_hidden_states=ehs).sample, z,
                       torch.full((len(z),), 999), model.schedule.alphas_cumprod.double())
    assert torch.allclose(model.decode(f), one, atol=1e-4)


def test_an_interrupted_lcm_distillation_resumes_to_the_uninterrupted_lora(small_cache, tmp_path, monkeypatch):
    """A 7200-step LCM job outlives a session: killed after its step-4 checkpoint and called again,
    it continues there and writes the LoRA of an uninterrupted run exactly; the checkpoint is gone."""
    import bench.lcm_baseline as lcm
    from safetensors.torch import load_file

    out, _ = small_cache
    kw = dict(train_steps=6, batch_size=4, lora_rank=4, lora_alpha=4.0, progress=False, seed=3)
    want = load_file(distil_lcm(TEACHER, str(out / "w" / "cache"), str(tmp_path / "a.safetensors"), **kw))

    ckpt, real_loss, calls = str(tmp_path / "ckpt"), lcm.lcm_loss, []

    def dies_at_step_six(*a, **k):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_loss(*a, **k)

    monkeypatch.setattr(lcm, "lcm_loss", dies_at_step_six)
    target = str(tmp_path / "b.safetensors")
    try:
        distil_lcm(TEACHER, str(out / "w" / "cache"), target, checkpoint_dir=ckpt, checkpoint_every=2, **kw)
    except KeyboardInterrupt:
        pass
    assert not os.path.exists(target) and os.path.isdir(ckpt)
    resumed_calls = []
    monkeypatch.setattr(lcm, "lcm_loss", lambda *a, **k: resumed_calls.append(1) or real_loss(*a, **k))
    got = load_file(distil_lcm(TEACHER, str(out / "w" / "cache"), target, checkpoint_dir=ckpt,
                               checkpoint_every=2, **kw))
    assert len(resumed_calls) == 2                     # steps 5 and 6 only: it continued from step 4
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert not os.path.exists(ckpt) and not os.path.exists(ckpt + ".prev")


def test_an_lcm_checkpoint_of_another_run_is_refused(small_cache, tmp_path):
    import pytest

    from training.checkpoint import save_checkpoint

    out, _ = small_cache
    ckpt = str(tmp_path / "ckpt")
    save_checkpoint(ckpt, {"step": 2, "train_steps": 100, "seed": 0, "lora": {}})
    with pytest.raises(SystemExit, match="another run"):
        distil_lcm(TEACHER, str(out / "w" / "cache"), str(tmp_path / "x.safetensors"), train_steps=6, batch_size=4,
                   lora_rank=4, lora_alpha=4.0, progress=False, checkpoint_dir=ckpt)
    assert os.path.isdir(ckpt)                          # nothing lost


@pytest.mark.parametrize("variant, want", [("lcm", dict(lora_rank=16, lora_alpha=16.0, loss="l2", learning_rate=1e-4)),
                                           ("lcm_huber", dict(lora_rank=16, loss="huber")),
                                           ("lcm_rank64", dict(lora_rank=64, lora_alpha=64.0, loss="l2"))])
def test_an_lcm_variants_options_reach_the_trainer_over_the_shared_lora_shape(tmp_path, monkeypatch, variant, want):
    from bench import variants

    (tmp_path / "work_ray" / "cache").mkdir(parents=True)
    seen = {}
    monkeypatch.setattr(variants, "distil_lcm", lambda *a, **kw: seen.update(kw) or "lora")
    variants.distil(variant, str(tmp_path), TEACHER, "p.txt", train_steps=2, seeds=1, seed=0)
    # what the variant leaves out is distil_lcm's default, the published recipe
    assert {k: seen.get(k, LCM_RECIPE.get(k)) for k in want} == want and seen["batch_size"] == 32
