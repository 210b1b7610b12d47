"""How much of its caption a flow teacher keeps when it samples from real images noised to level ``t``.

A diagnostic of the flow proxy teacher (issue 33): real proxy images ``x0`` of every caption are
noised to ``x_t = (1 - t) x0 + t n`` and integrated back to ``t = 0`` by ``--steps`` Euler steps of
the teacher with CFG; the attribute classifier then reads size, colour, shape and background of the
result (shape also for small and large objects apart), and the RMSE to ``x0`` says how far the
teacher moved the image. A teacher that has learned the data keeps every attribute from low levels
(the classifier reads the real images perfectly) and loses them only where the noise hides them; one
that loses an attribute already at low ``t`` has not learned that part of the schedule. Run::

    python -m bench.teacher_recovery --teacher proxy/weights/flow_teacher --save outputs/recovery.json
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Sequence

import torch

from proxy.classifier import attribute_hits, load_classifier
from proxy.data import ATTR_NAMES, ATTRIBUTES as VALUES, all_labels, caption_of, render
from proxy.recipe import CLASSIFIER, FLOW_TEACHER, RESOLUTION, TEACHER_CFG
from proxy.sampling import guided_velocity
from rayflow import FLOW
from rayflow.atomic_write import write_json
from training.models import load_base_model

LEVELS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0)
ATTRIBUTES = tuple(ATTR_NAMES)         # size, color, shape, background
SIZES = tuple(VALUES["size"])         # small, large


@torch.no_grad()
def recovery(model, labels: torch.Tensor, levels: Sequence[float], steps: int, cfg: float = TEACHER_CFG,
             seed: int = 5) -> Dict[str, Dict[str, float]]:
    """``{level: {attribute accuracies, shape accuracy of small / large objects, "rmse"}}`` of the flow
    ``model`` for captions ``labels`` ``[N, 4]`` (real images and noise drawn from ``seed``; ``steps`` Euler
    steps with CFG ``cfg`` from each level)."""
    if model.schedule.interpolation is not FLOW:
        raise SystemExit("bench.teacher_recovery measures flow-matching teachers; this model is not one")
    g = torch.Generator().manual_seed(seed)
    x0 = render(labels, g, RESOLUTION)
    noise = torch.randn(x0.shape, generator=g)
    cpu = torch.device("cpu")
    cond = model.encode_prompts([caption_of(label) for label in labels.tolist()], cpu)
    velocity = guided_velocity(model, cond, cfg)
    classifier = load_classifier(CLASSIFIER)
    out = {}
    for level in levels:
        x = (1 - level) * x0 + level * noise
        ts = torch.linspace(level, 0.0, steps + 1, dtype=torch.float64)
        for a, b in zip(ts[:-1], ts[1:]):
            s = torch.full((len(x),), float(a))
            x = x + float(b - a) * velocity(x, s)
        images = model.decode(x)
        hits = attribute_hits(classifier, images, labels).float()
        row = dict(zip(ATTRIBUTES, hits.mean(0).tolist()))
        for size, name in enumerate(SIZES):          # shape, by the caption's size (where captions have it)
            if (labels[:, 0] == size).any():
                row[f"shape_{name}"] = float(hits[labels[:, 0] == size, ATTRIBUTES.index("shape")].mean())
        out[f"{level:g}"] = {**row, "rmse": float((images - x0).pow(2).mean().sqrt())}
    return out


def parse_args(argv: List[str] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=FLOW_TEACHER, help="flow teacher's diffusers folder")
    ap.add_argument("--levels", type=float, nargs="+", default=list(LEVELS), help="noise levels t in (0, 1]")
    ap.add_argument("--steps", type=int, default=20, help="Euler steps from each level to 0")
    ap.add_argument("--cfg", type=float, default=TEACHER_CFG,
                    help=f"classifier-free guidance scale (default {TEACHER_CFG:g}, the proxy recipes')")
    ap.add_argument("--per-caption", type=int, default=3, help="images per caption (72 captions)")
    ap.add_argument("--save", default="", help="write the results to this JSON file")
    args = ap.parse_args(argv)
    if any(not 0 < t <= 1 for t in args.levels) or args.steps < 1 or args.per_caption < 1 or args.cfg < 0:
        ap.error("--levels must lie in (0, 1], --steps and --per-caption must be at least 1, --cfg at least 0")
    return args


def main(argv: List[str] = None) -> int:
    args = parse_args(argv)
    model = load_base_model(args.teacher, resolution=RESOLUTION)
    rows = recovery(model, all_labels().repeat_interleave(args.per_caption, 0), args.levels, args.steps, args.cfg)
    columns = [*ATTRIBUTES, *(f"shape_{name}" for name in SIZES)]
    print("| from t | " + " | ".join(columns) + " | RMSE to x0 |\n|---|" + "---|" * (len(columns) + 1))
    for level, row in rows.items():
        print(f"| {level} | " + " | ".join(f"{row[a]:.3f}" if a in row else "" for a in columns) + f" | {row['rmse']:.3f} |")
    if args.save:
        write_json(args.save, {"teacher": args.teacher, "steps": args.steps, "cfg": args.cfg,
                               "per_caption": args.per_caption, "levels": rows}, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
