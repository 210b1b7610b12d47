"""The demo's evaluation of a LoRA against the teacher: ``samples.png``, ``metrics.json`` and ``report.md``.

The rows that do not depend on the LoRA (the 25-step teacher, DDIM at 1/2/4 steps, real data) are
computed once and reused, so the demo can afford to evaluate its LoRA snapshots while training goes
on (marked as a snapshot in the report) and the final LoRA at the end.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import torch

from rayflow import RayProcess
from rayflow.atomic_write import write_json, write_text
from training.grid import save_grid
from training.models import load_base_model

from .classifier import evaluate, load_classifier
from .data import caption_of, render
from .recipe import SIGMA
from .sampling import evaluation_set, load_lora_unet, rayflow_samples, teacher_samples

NOTE = ("FD-proxy: Frechet distance in the proxy classifier's features to real images of the same captions "
        "(lower is better). Alignment: all four caption attributes recognised. Diversity: within-caption "
        "feature spread relative to real data. Grid: `samples.png` (rows: samplers and steps, the teacher "
        "first; columns: the same captions and seeds, the caption under each).")


class DemoEvaluation:
    """Evaluation images for captions ``labels[::stride]`` x ``per_caption`` fresh seeds (disjoint from
    the training seeds), their real-image references, and the report writer."""

    def __init__(self, teacher: str, classifier: str, labels: torch.Tensor, stride: int, per_caption: int,
                 seed: int, teacher_steps: int, out: str):
        self.teacher, self.classifier_path, self.out, self.seed = teacher, classifier, out, seed
        self.labels, self.seeds, self.real = evaluation_set(labels[::stride], per_caption, seed)
        self.runs = [(f"teacher DDIM {teacher_steps}", "ddim", teacher_steps)] \
            + [(f"RayFlow {n}", "rayflow", n) for n in (1, 2, 4)] + [(f"DDIM {n}", "ddim", n) for n in (1, 2, 4)]
        self.model = self.classifier = None
        self.fixed: Dict[str, tuple] = {}          # name -> (images, metrics) of the rows without the LoRA

    def _metrics(self, images: torch.Tensor) -> Dict[str, float]:
        return evaluate(self.classifier, images, self.labels, self.real, self.labels)

    def _load(self) -> None:
        if self.model is not None:
            return
        self.model = load_base_model(self.teacher)
        self.classifier = load_classifier(self.classifier_path)
        reference = render(self.labels, torch.Generator().manual_seed(self.seed + 7))
        self.fixed["real data"] = (None, evaluate(self.classifier, self.real, self.labels, reference, self.labels))

    def evaluate(self, lora_path: str):
        """``(metrics, images)`` per sampler row for the LoRA at ``lora_path`` (plus ``real data``)."""
        self._load()
        unet = load_lora_unet(self.teacher, lora_path)
        results, images = {}, {}
        for name, method, steps in self.runs:
            if method == "rayflow":
                imgs, _ = rayflow_samples(self.model, unet, self.labels, self.seeds, steps, RayProcess(sigma=SIGMA))
                metrics = self._metrics(imgs)
            else:
                if name not in self.fixed:
                    imgs = teacher_samples(self.model, self.labels, self.seeds, method, steps)
                    self.fixed[name] = (imgs, self._metrics(imgs))
                imgs, metrics = self.fixed[name]
            images[name] = imgs
            results[name] = {**metrics, "steps": steps, "nfe_per_image": steps * (1 if method == "rayflow" else 2)}
        results["real data"] = self.fixed["real data"][1]
        return results, images

    def write(self, results: Dict, images: Dict, report: Dict, heading: str, command: str, status: str,
              snapshot: Optional[int] = None) -> List[str]:
        """Write ``evaluate()``'s ``results`` and ``images`` as the grid, ``metrics.json`` (``report``
        plus the metrics and, for a snapshot, its step) and ``report.md``; returns the report's lines."""
        pick = torch.arange(0, len(self.labels), max(1, len(self.labels) // 10))[:10]
        rows = {f"{name} step{'s' if r['steps'] > 1 else ''}": images[name][pick]
                for name, r in results.items() if name in images}
        save_grid(rows, [caption_of(l) for l in self.labels[pick].tolist()], os.path.join(self.out, "samples.png"))
        write_json(os.path.join(self.out, "metrics.json"), {**report, "snapshot_step": snapshot, "metrics": results},
                   indent=2)
        lines = [heading, "", f"Command: `{command}`; {status}", "",
                 "| sampler | steps | NFE / image | FD-proxy | alignment | diversity |", "|---|---|---|---|---|---|"]
        for name, r in results.items():
            lines.append(f"| {name} | {r.get('steps', '')} | {r.get('nfe_per_image', '')} | {r['fd_proxy']:.3f} | "
                         f"{r['alignment']:.3f} | {r['diversity']:.3f} |")
        lines += ["", NOTE]
        write_text(os.path.join(self.out, "report.md"), "\n".join(lines) + "\n")
        return lines
