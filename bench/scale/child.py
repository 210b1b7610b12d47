"""One measurement of ``bench.scale``, run as its own process by the watchdog (``watchdog.run_child``).

``python -m bench.scale.child KIND FAMILY [MODEL_DIR] --child-out FILE [options]`` does one of:
``build`` (write the family with random weights to MODEL_DIR, ``--units``: fewer blocks), ``run``
(one ``training.distill`` run on MODEL_DIR with a memory option), ``lora`` (export an untrained LoRA
of the full-size model), ``keys-diffusers`` / ``keys-comfyui`` (the key match on the full-size
model); and writes its result, with this process's peak RSS, to ``FILE``. Not meant to be run by
hand: ``python -m bench.scale`` starts it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import torch

from rayflow.atomic_write import write_json

from .families import build_family
from .keys import keymatch_comfyui, keymatch_diffusers
from .recipe import GIB
from .runs import export_untrained_lora, maxrss_bytes, run_variant

KINDS = ("build", "run", "lora", "keys-diffusers", "keys-comfyui")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The child's arguments: what to measure, on which family and folder, where to write it."""
    p = argparse.ArgumentParser(prog="python -m bench.scale.child", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("family")
    p.add_argument("model_dir", nargs="?", default="", help="build, run: the model folder")
    p.add_argument("--child-out", required=True, help="the result JSON")
    p.add_argument("--variant", help="run: the memory option")
    p.add_argument("--work", help="run: its work folder (progress.json, the LoRA)")
    p.add_argument("--lora", help="lora: the file to write; keys-*: the file to match")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--teacher-steps", type=int, default=2)
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--units", type=int, default=None, help="build: the denoiser's units of depth (default: all)")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--grid", action="store_true")
    p.add_argument("--comfyui", default="", help="keys-comfyui: the ComfyUI source to import")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Do the one measurement and write its result with this process's peak RSS; exit code 0."""
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    if args.kind == "build":
        res = build_family(args.family, args.model_dir, tiny=args.tiny, units=args.units)
    elif args.kind == "run":
        res = run_variant(args.family, args.model_dir, args.variant, args.work, args.steps, args.teacher_steps,
                          args.prompts, args.batch_size, tiny=args.tiny, grid=args.grid)
    elif args.kind == "lora":
        res = export_untrained_lora(args.family, args.lora, tiny=args.tiny)
    elif args.kind == "keys-diffusers":
        res = keymatch_diffusers(args.family, args.lora, tiny=args.tiny)
    else:
        if args.comfyui:
            sys.path.insert(0, args.comfyui)
        res = keymatch_comfyui(args.family, args.lora, tiny=args.tiny)
    res["peak_rss_gib"] = res.get("peak_rss_gib", round(maxrss_bytes() / GIB, 2))
    write_json(args.child_out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
