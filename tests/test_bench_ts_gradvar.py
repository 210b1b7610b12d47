"""bench/ts_gradvar.py: relative variance of gradient draws and the paired arms."""

import pytest
import torch

from bench.ts_gradvar import gradient_draws, measure, relative_variance


def test_relative_variance_of_known_draws():
    g = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)      # mean (2, 0); sum of squares 2 over K - 1 = 1
    assert relative_variance(g) == pytest.approx(2.0 / 4.0)
    g = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    assert relative_variance(g) == 0.0


def test_draws_are_reproducible_and_measuring_does_not_train(small_cache):
    from accelerate import Accelerator

    from training.config import DistillConfig
    from training.data import load_cache
    from training.models import load_base_model
    from training.trainer import Trainer
    from tests.conftest import TEACHER

    out, _ = small_cache
    cfg = DistillConfig(model=TEACHER, prompts=str(out / "p.txt"), output=str(out / "gv.safetensors"),
                        work_dir=str(out / "gv"), resolution=16, seeds_per_prompt=4, teacher_steps=4, teacher_cfg=3.0,
                        shard_size=8, train_steps=1, batch_size=4, lora_rank=4, lora_alpha=4.0, sigma=0.1).validate()
    trainer = Trainer(cfg, load_base_model(TEACHER), load_cache(str(out / "w" / "cache")), Accelerator(cpu=True))
    before = [p.detach().clone() for p in trainer.params]
    idx = torch.tensor([0, 3, 5, 7])
    a = gradient_draws(trainer, idx, "uniform", 3, seed=1)
    b = gradient_draws(trainer, idx, "uniform", 3, seed=1)
    c = gradient_draws(trainer, idx, "time_sampler", 3, seed=1)
    assert a.shape == c.shape == (3, sum(p.numel() for p in trainer.params)) and torch.equal(a, b)
    assert not torch.equal(a, c) and bool(a.abs().sum(1).gt(0).all())      # other timesteps, nonzero gradients
    m = measure(trainer, batches=1, draws=3, seed=0)
    assert m["time_sampler"] > 0 and m["uniform"] > 0 and -1.0 <= m["cosine_of_means"] <= 1.0
    assert all(torch.equal(p, q) for p, q in zip(trainer.params, before)) and trainer.step == 0
