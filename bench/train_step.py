"""Phase-2 training-step time with the Time Sampler vs uniform timesteps.

Builds an SD-shaped random-weight UNet (``--width`` sets the block channels ``(w, 2w)``), a
synthetic phase-1 cache, and two identical trainers that differ only in ``--no-time-sampler``;
steps are timed interleaved (A, B, A, B, ...) in one process so both see the same machine load.
Prints a Markdown table; the ratio is the Time Sampler's overhead per optimizer step.

    python -m bench.train_step                    # CPU default
    python -m bench.train_step --device cuda --width 320 --latent 64 --batch 8 --mixed-precision bf16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def make_trainer(model_dir: str, cache, args, time_sampler: bool):
    from accelerate import Accelerator

    from training.config import DistillConfig
    from training.models import load_base_model
    from training.trainer import Trainer

    cfg = DistillConfig(model=model_dir, prompts="unused.txt", output="unused.safetensors",
                        batch_size=args.batch, lora_rank=args.rank, lora_alpha=args.rank,
                        train_steps=10 ** 6, lr_warmup=0, no_time_sampler=not time_sampler,
                        mixed_precision=args.mixed_precision, resolution=8 * args.latent).validate()
    model = load_base_model(model_dir)
    acc = Accelerator(cpu=args.device == "cpu", mixed_precision=args.mixed_precision)
    return Trainer(cfg, model, cache, acc)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=64, help="UNet block channels (w, 2w)")
    p.add_argument("--latent", type=int, default=32, help="latent side (pixels / 8)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mixed-precision", default="no")
    args = p.parse_args(argv)

    from training.data import Cache
    from training.tiny import build_tiny_sd15

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_sd15(tmp + "/model", width=args.width)
        n, L = 64, 16
        shape = (n, 4, args.latent, args.latent)
        cache = Cache(torch.randn(shape) * 0.5, torch.randn(shape), torch.randn(shape),
                      {"cond": torch.randn(n, L, 32)}, torch.ones(n), ["p"] * n)
        trainers = {"time sampler": make_trainer(model_dir, cache, args, True),
                    "uniform": make_trainer(model_dir, cache, args, False)}
        times = {k: [] for k in trainers}
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        for i in range(args.warmup + args.steps):
            for name, tr in trainers.items():
                sync()
                t0 = time.perf_counter()
                tr.train_step()
                sync()
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"| setting | median step (ms) | mean step (ms) |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {1000 * med[k]:.1f} | {1000 * statistics.mean(v):.1f} |")
    print(f"\nTime Sampler / uniform (median): {med['time sampler'] / med['uniform']:.3f} "
          f"(device {args.device}, width {args.width}, latent {args.latent}, batch {args.batch}, rank {args.rank}, "
          f"{args.steps} steps each)")


if __name__ == "__main__":
    main()
