"""The one device a multi-seed benchmark run works on (``bench.quality --device``), and how it is named.

``choose`` picks it once per process: CUDA when available (``auto``), else the CPU. Everything of a
job runs there: phase 1 and phase 2 of ``training.distill`` (accelerate's device, which ``choose``
keeps on the CPU when the CPU is asked for on a machine with a GPU), the LCM-LoRA trainer, and the
sampling of the evaluation (``proxy.sampling``); the metrics are computed on the CPU from images
moved there. Noise is drawn on the CPU on either device, so a GPU run differs from a CPU run by
floating-point rounding only: TF32 is switched off, the proxy's step stays float32.

``--workers N`` processes share the one GPU (each its own CUDA context: the proxy models are a few
MB); on the CPU each worker takes one thread, as before, and on a GPU each takes an equal share of
the CPU's cores for what runs there (data, the Time Sampler, compilation).
"""

from __future__ import annotations

import os
import platform

import torch

DEVICES = ("auto", "cpu", "cuda")


def choose(name: str = "auto") -> torch.device:
    """The device ``name`` (``auto``: ``cuda`` when available, else ``cpu``), set up for the run."""
    if name not in DEVICES:
        raise SystemExit(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
        torch.backends.cuda.matmul.allow_tf32 = False     # float32 as on the CPU, not TF32
        torch.backends.cudnn.allow_tf32 = False
    elif torch.cuda.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"          # training.distill's Accelerator too (workers inherit it)
    return torch.device(name)


def device_info(device: torch.device) -> str:
    """What a job ran on: the GPU's name (with CUDA's and torch's versions), or the CPU's with torch's
    thread count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def worker_threads(device: torch.device, workers: int) -> int:
    """Torch threads of each of ``workers`` worker processes: 1 on the CPU (the jobs are the
    parallelism), an equal share of the cores beside a GPU."""
    if device.type != "cuda":
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, workers))
