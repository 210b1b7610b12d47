"""The fixed evaluation of the multi-seed proxy benchmark: captions, noise seeds, references, metrics.

Metrics at 1, 2, 4 and 8 sampling steps, on ``eval_per_caption`` images of each of the 72 proxy
captions, from seeds no LoRA trains on:

* ``fd`` (headline): FD-proxy to the **teacher's own samples** from the same noise with the solver
  and settings that built the cache (DPM-Solver++, 25 steps, CFG 3), i.e. to the distillation
  target; its floor is ``teacher floor``, the FD between two teacher sample sets of independent
  noise;
* ``fd_data``: FD-proxy to procedurally rendered real images of the same captions;
* ``rmse``: per-image RMS pixel error to the teacher's sample from the same noise;
* ``alignment``, ``diversity``, ``hf_ratio`` as in ``proxy/classifier.py``.
"""

from __future__ import annotations

import json
import os
from typing import Dict

import torch
from safetensors.torch import load_file, save_file

from proxy.classifier import evaluate, frechet_distance, load_classifier
from proxy.data import all_labels
from proxy.recipe import CLASSIFIER, TEACHER, TEACHER_SOLVER, TEACHER_STEPS
from proxy.sampling import evaluation_set, teacher_samples
from rayflow.atomic_write import atomic_path, write_json
from training.models import load_base_model

STEPS = (1, 2, 4, 8)
METRICS = ("fd", "fd_data", "rmse", "alignment", "diversity", "hf_ratio")
LOWER_IS_BETTER = {"fd": True, "fd_data": True, "rmse": True, "alignment": False}
# the target-mean modes and eta of the Ray Target Mean comparison (README: when to use the node), on "ray"
RAY_MODES = (("noise", 0.0), ("probe4", 0.0), ("noise", 1.0), ("probe4", 1.0))
TEACHER_ROWS = [("teacher DDIM", "ddim", n) for n in STEPS + (25,)] + \
               [("teacher DPM-Solver++", "dpmsolver++", n) for n in STEPS]
REFERENCE = (TEACHER_SOLVER, TEACHER_STEPS)      # the solver and steps of the phase-1 cache: the distillation target


def mode_name(variant: str, mode: str, eta: float) -> str:
    """Row name of a variant sampled with target-mean ``mode`` and ``eta`` (plain name for the default)."""
    if (mode, eta) == ("noise", 0.0):
        return variant
    return f"{variant} [{mode}{'' if eta == 0 else f', eta {eta:g}'}]"



class Evaluation:
    """The fixed evaluation of every job: teacher, classifier, captions, seeds, the real images and
    the teacher's reference samples (cached in ``<out>/reference.safetensors``)."""

    def __init__(self, out: str, eval_per_caption: int, data_seed: int):
        self.model = load_base_model(TEACHER)
        self.classifier = load_classifier(CLASSIFIER)
        self.labels, self.seeds, self.real = evaluation_set(all_labels(), eval_per_caption, data_seed)
        path = os.path.join(out, "reference.safetensors")
        if os.path.isfile(path):
            ref = load_file(path)
        else:
            solver, steps = REFERENCE
            # the floor: the same captions from noise seeds disjoint from the evaluation's
            ref = {"teacher": teacher_samples(self.model, self.labels, self.seeds, solver, steps),
                   "teacher_other": teacher_samples(self.model, self.labels, self.seeds + len(self.seeds), solver, steps)}
            with atomic_path(path) as tmp:
                save_file(ref, tmp)
        self.teacher = ref["teacher"]
        self.teacher_other = ref["teacher_other"]
        with torch.no_grad():
            self.f_teacher = self.classifier.features(self.teacher)

    @torch.no_grad()
    def metrics(self, images: torch.Tensor) -> Dict[str, float]:
        base = evaluate(self.classifier, images, self.labels, self.real, self.labels)
        fd = frechet_distance(self.classifier.features(images), self.f_teacher)
        rmse = float((images - self.teacher).pow(2).flatten(1).mean(1).sqrt().mean())
        return {"fd": fd, "fd_data": base.pop("fd_proxy"), "rmse": rmse, **base}


def teacher_table(out: str, ev: Evaluation) -> Dict:
    """The teacher's rows (no training seed: one value each), cached in ``<out>/teacher.json``."""
    path = os.path.join(out, "teacher.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    rows: Dict[str, Dict] = {"teacher floor": {"25": {**ev.metrics(ev.teacher_other), "nfe": 50}}}
    for name, solver, n in TEACHER_ROWS:
        rows.setdefault(name, {})[str(n)] = {**ev.metrics(teacher_samples(ev.model, ev.labels, ev.seeds, solver, n)),
                                            "nfe": 2 * n}
    write_json(path, rows)
    return rows
