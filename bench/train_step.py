"""Phase-2 training-step time of two settings, timed interleaved in one process.

Two identical trainers that differ in one option take steps in turn (A, B, A, B, ...), so both see
the same machine load; the table gives each one's median and mean step and the ratio A / B.

* default: an SD-shaped random-weight UNet (``--width`` sets the block channels ``(w, 2w)``) on a
  synthetic phase-1 cache; A is the Time Sampler, B uniform timesteps (the Time Sampler's overhead);
* ``--proxy``: the proxy recipe's step (``proxy.recipe``: the committed teacher, 16 x 16, batch 32,
  rank 16) on a synthetic cache of its shapes; A is the recipe, B the recipe with ``--vs``.

    python -m bench.train_step                    # Time Sampler vs uniform, CPU
    python -m bench.train_step --proxy --vs compile --threads 1 --steps 30
    python -m bench.train_step --device cuda --width 320 --latent 64 --batch 8 --mixed-precision bf16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from accelerate import Accelerator

from proxy.recipe import PHASE2, TEACHER, proxy_config
from training.config import DistillConfig
from training.data import Cache
from training.models import load_base_model
from training.tiny import build_tiny_sd15
from training.trainer import Trainer

# what --vs changes in setting B (setting A is the recipe as it is)
CHANGES = {"no_time_sampler": dict(no_time_sampler=True), "compile": dict(compile=True),
           "bf16": dict(mixed_precision="bf16")}


def synthetic_cache(n: int, channels: int, side: int, text_len: int, text_dim: int) -> Cache:
    """A phase-1 cache of ``n`` items with the shapes of a real one and random contents."""
    g = torch.Generator().manual_seed(0)
    shape = (n, channels, side, side)
    return Cache(torch.randn(shape, generator=g) * 0.5, torch.randn(shape, generator=g), torch.randn(shape, generator=g),
                 {"cond": torch.randn(n, text_len, text_dim, generator=g)}, torch.ones(n) * 0.1, ["p"] * n)


def trainers(args, model_dir: str):
    """``{label: Trainer}`` of settings A and B."""
    if args.proxy:
        base = dict(train_steps=10 ** 6, lr_warmup=0)
        make = lambda **kw: proxy_config("unused.safetensors", "", "unused.txt", **{**base, **kw}).validate()  # noqa: E731
        cache = synthetic_cache(576, 3, 16, 16, 64)
        labels = ("recipe", f"recipe + {args.vs}")
    else:
        base = dict(model=model_dir, prompts="unused.txt", output="unused.safetensors", batch_size=args.batch,
                    lora_rank=args.rank, lora_alpha=args.rank, train_steps=10 ** 6, lr_warmup=0,
                    mixed_precision=args.mixed_precision, resolution=8 * args.latent)
        make = lambda **kw: DistillConfig(**{**base, **kw}).validate()  # noqa: E731
        cache = synthetic_cache(64, 4, args.latent, 16, 32)
        labels = ("time sampler", "uniform") if args.vs == "no_time_sampler" else ("A", f"A + {args.vs}")
    out = {}
    for label, change in zip(labels, ({}, CHANGES[args.vs])):
        cfg = make(**change)
        acc = Accelerator(cpu=args.device == "cpu", mixed_precision=cfg.mixed_precision)
        out[label] = Trainer(cfg, load_base_model(cfg.model), cache, acc)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proxy", action="store_true", help="the proxy recipe's step (the committed teacher, batch 32)")
    p.add_argument("--vs", default="no_time_sampler", choices=sorted(CHANGES), help="what setting B changes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--width", type=int, default=64, help="UNet block channels (w, 2w)")
    p.add_argument("--latent", type=int, default=32, help="latent side (pixels / 8)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per setting first (compilation happens here)")
    p.add_argument("--mixed-precision", default="no")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = TEACHER if args.proxy else build_tiny_sd15(tmp + "/model", width=args.width)
        runs = trainers(args, model_dir)
        times = {k: [] for k in runs}
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        for i in range(args.warmup + args.steps):
            for name, tr in runs.items():
                sync()
                t0 = time.perf_counter()
                tr.train_step()
                tr.step += 1
                sync()
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    a, b = list(times)
    print("| setting | median step (ms) | mean step (ms) |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {1000 * med[k]:.1f} | {1000 * statistics.mean(v):.1f} |")
    shape = (f"proxy recipe, batch {PHASE2['batch_size']}, rank {PHASE2['lora_rank']}" if args.proxy else
             f"width {args.width}, latent {args.latent}, batch {args.batch}, rank {args.rank}")
    print(f"\n{a} / {b} (median): {med[a] / med[b]:.3f} (device {args.device}, threads {torch.get_num_threads()}, "
          f"{shape}, {args.steps} steps each)")


if __name__ == "__main__":
    main()
