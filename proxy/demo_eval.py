"""The demo's evaluation of a LoRA against the teacher: ``samples.png``, ``metrics.json`` and ``report.md``.

Each row is scored against the teacher it was distilled from (FD-proxy to the teacher's phase-1
samples from independent noise, the benchmarks' headline ``fd_indep``) and against real images. The
RayFlow rows sample as a user's sampler node does by default: with the ``rayflow.recommended_eta``
the LoRA records. The rows that do not depend on the LoRA (the 25-step teacher, DDIM at 1/2/4 steps,
real data) are computed once and reused, so the demo can afford to evaluate its LoRA snapshots while
training goes on (marked as a snapshot in the report) and the final LoRA at the end.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import torch

from rayflow import RayProcess
from rayflow.atomic_write import write_json, write_text
from rayflow.lora_header import read_metadata
from training.grid import save_grid
from training.models import load_base_model

from .classifier import evaluate, frechet_distance, load_classifier
from .data import caption_of, render
from .recipe import SIGMA, TEACHER_SOLVER
from .sampling import evaluation_set, load_lora_unet, rayflow_samples, teacher_samples

NOTE = ("FD to teacher: Frechet distance in the proxy classifier's features to the teacher's own samples "
        "(the distillation target: the phase-1 solver and steps) from independent noise, the benchmarks' "
        "headline (lower is better). FD to data: the same distance to real images of the same captions. "
        "RayFlow rows sample with the eta the LoRA records (rayflow.recommended_eta). Alignment: all four "
        "caption attributes recognised. Diversity: within-caption "
        "feature spread relative to real data. Grid: `samples.png` (rows: samplers and steps, the teacher "
        "first; columns: the same captions and seeds, the caption under each).")


class DemoEvaluation:
    """Evaluation images for captions ``labels[::stride]`` x ``per_caption`` fresh seeds (disjoint from
    the training seeds), their real-image references, and the report writer."""

    def __init__(self, teacher: str, classifier: str, labels: torch.Tensor, stride: int, per_caption: int,
                 seed: int, teacher_steps: int, out: str):
        self.teacher, self.classifier_path, self.out, self.seed = teacher, classifier, out, seed
        self.teacher_steps = teacher_steps
        self.labels, self.seeds, self.real = evaluation_set(labels[::stride], per_caption, seed)
        self.runs = [(f"teacher DDIM {teacher_steps}", "ddim", teacher_steps)] \
            + [(f"RayFlow {n}", "rayflow", n) for n in (1, 2, 4)] + [(f"DDIM {n}", "ddim", n) for n in (1, 2, 4)]
        self.model = self.classifier = self.f_teacher = None
        self.fixed: Dict[str, tuple] = {}          # name -> (images, metrics) of the rows without the LoRA

    def _metrics(self, images: torch.Tensor, real: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """FD to the teacher (``fd_teacher``), then ``proxy.classifier.evaluate`` against ``real`` (default:
        the real images of the evaluation set)."""
        to_teacher = frechet_distance(self.classifier.features(images), self.f_teacher)
        return {"fd_teacher": to_teacher,
                **evaluate(self.classifier, images, self.labels, self.real if real is None else real, self.labels)}

    def _load(self) -> None:
        if self.model is not None:
            return
        self.model = load_base_model(self.teacher)
        self.classifier = load_classifier(self.classifier_path)
        # the distillation target from noise no other row uses
        teacher_ref = teacher_samples(self.model, self.labels, self.seeds + len(self.seeds), TEACHER_SOLVER,
                                      self.teacher_steps)
        self.f_teacher = self.classifier.features(teacher_ref)
        reference = render(self.labels, torch.Generator().manual_seed(self.seed + 7))
        self.fixed["real data"] = (None, self._metrics(self.real, reference))

    def evaluate(self, lora_path: str):
        """``(metrics, images)`` per sampler row for the LoRA at ``lora_path`` (plus ``real data``)."""
        self._load()
        unet = load_lora_unet(self.teacher, lora_path)
        eta = float(read_metadata(lora_path)["recommended_eta"])
        results, images = {}, {}
        for name, method, steps in self.runs:
            if method == "rayflow":
                imgs, _ = rayflow_samples(self.model, unet, self.labels, self.seeds, steps, RayProcess(sigma=SIGMA),
                                          eta=eta)
                metrics = self._metrics(imgs)
            else:
                if name not in self.fixed:
                    imgs = teacher_samples(self.model, self.labels, self.seeds, method, steps)
                    self.fixed[name] = (imgs, self._metrics(imgs))
                imgs, metrics = self.fixed[name]
            images[name] = imgs
            results[name] = {**metrics, "steps": steps, "nfe_per_image": steps * (1 if method == "rayflow" else 2),
                             **({"eta": eta} if method == "rayflow" else {})}
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
                 "| sampler | steps | NFE / image | FD to teacher | FD to data | alignment | diversity |",
                 "|---|---|---|---|---|---|---|"]
        for name, r in results.items():
            lines.append(f"| {name} | {r.get('steps', '')} | {r.get('nfe_per_image', '')} | {r['fd_teacher']:.3f} | "
                         f"{r['fd_proxy']:.3f} | {r['alignment']:.3f} | {r['diversity']:.3f} |")
        lines += ["", NOTE]
        write_text(os.path.join(self.out, "report.md"), "\n".join(lines) + "\n")
        return lines
