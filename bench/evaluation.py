"""The fixed evaluation of the multi-seed proxy benchmark: captions, noise seeds, references, metrics.

The proxy family (``proxy.recipe``: the VP teacher, or the flow teacher of ``--proxy flow``) gives the
teacher, its phase-1 solver and CFG. Two sets of ``eval_per_caption`` images of each of the 72 proxy
captions, from noise seeds no LoRA trains on: the **evaluation** set (every table) and the **held-out** set (choosing learning rates;
its seeds are disjoint from the evaluation's, so a choice made on it is not fitted to the noise the
tables are measured on). Each set has its own references: the teacher's samples from the same
noise, the teacher's samples from independent noise, and rendered real images of the same captions.

Metrics at 1, 2, 4 and 8 sampling steps:

* ``fd_indep`` (headline): FD-proxy to the teacher's samples from **independent** noise (the solver and
  settings that built the cache: VP DPM-Solver++ 25 steps, CFG 3; flow ``proxy.recipe.FLOW``): how close the student's
  distribution is to the teacher's, whatever noise-to-image map it follows; its floor is the FD
  between two teacher sets of independent noise (``teacher floor``);
* ``fd``: FD-proxy to the teacher's samples from the **same** noise (fidelity to the teacher's map;
  the earlier headline), ``rmse``: per-image RMS pixel error to the same-noise teacher sample;
* ``fd_data``: FD-proxy to real images of the same captions;
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
from proxy.recipe import CLASSIFIER, SOLVER_NAMES, VP, ProxyRecipe
from proxy.sampling import evaluation_set, teacher_samples
from rayflow.atomic_write import atomic_path, write_json

STEPS = (1, 2, 4, 8)
METRICS = ("fd_indep", "fd", "fd_data", "rmse", "alignment", "diversity", "hf_ratio")
LOWER_IS_BETTER = {"fd_indep": True, "fd": True, "fd_data": True, "rmse": True, "alignment": False}
HEADLINE = "fd_indep"
# the target-mean modes and eta of the Ray Target Mean comparison (README: when to use the node), on "ray"
# (at eta 0 the probe changes nothing on the sigma path, docs/method.md 6.3, as the earlier 5-seed runs measured)
# the probes of P steps cost 2P evaluations (CFG): probe1 at n steps costs what noise at n + 2 does, probe2 at
# 4 steps what noise (or no-Ray) at 8 does: the cost-matched comparisons of the target mean
RAY_MODES = (("noise", 0.0), ("noise", 1.0), ("probe1", 1.0), ("probe2", 1.0), ("probe4", 1.0))
HELDOUT_SEED_BASE = 30_000_000      # the held-out set's noise seeds (the evaluation's start at 10_000_000)


def teacher_rows(recipe: ProxyRecipe = VP):
    """``(row name, solver, steps)`` of the teacher's rows: the first-order solver (VP: DDIM, flow: Euler) at
    1/2/4/8/25 steps, the higher-order one (DPM-Solver++) also at 6 (12 model evaluations with CFG: the
    cost of a 4-step student with a 4-step probe of the target mean)."""
    first, second = recipe.solvers
    return [(f"teacher {SOLVER_NAMES[first]}", first, n) for n in STEPS + (25,)] + \
           [(f"teacher {SOLVER_NAMES[second]}", second, n) for n in STEPS + (6, 25)]


def mode_name(variant: str, mode: str, eta: float) -> str:
    """Row name of a variant sampled with target-mean ``mode`` and ``eta`` (plain name for the default)."""
    if (mode, eta) == ("noise", 0.0):
        return variant
    return f"{variant} [{mode}{'' if eta == 0 else f', eta {eta:g}'}]"


def rmse(images: torch.Tensor, reference: torch.Tensor) -> float:
    """The mean over images of the per-image RMS difference of ``images`` and ``reference`` ``[N, C, H, W]``."""
    return float((images - reference).pow(2).flatten(1).mean(1).sqrt().mean())



class EvalSet:
    """One set of evaluation images: captions ``labels`` ``[N, 4]``, noise ``seeds`` ``[N]``, real
    images, and the teacher's samples from the same and from independent noise (with their features)."""

    def __init__(self, name: str, labels, seeds, real, teacher, teacher_other, classifier):
        self.name, self.labels, self.seeds, self.real = name, labels, seeds, real
        self.teacher, self.teacher_other, self.classifier = teacher, teacher_other, classifier
        with torch.no_grad():
            self.f_teacher = classifier.features(teacher)
            self.f_other = classifier.features(teacher_other)

    @torch.no_grad()
    def metrics(self, images: torch.Tensor) -> Dict[str, float]:
        """Every metric of ``METRICS`` for ``images`` ``[N, 3, 16, 16]`` (same order as ``labels``)."""
        base = evaluate(self.classifier, images, self.labels, self.real, self.labels)
        features = self.classifier.features(images)
        return {"fd_indep": frechet_distance(features, self.f_other), "fd": frechet_distance(features, self.f_teacher),
                "fd_data": base.pop("fd_proxy"), "rmse": rmse(images, self.teacher), **base}


class Evaluation:
    """The fixed evaluation of every job of the proxy family ``recipe``: teacher, classifier and the two
    sets (``eval`` and ``heldout``), their references (the recipe's phase-1 solver, steps and CFG) cached
    in ``<out>/reference.safetensors``; ``captions`` < 72 takes the first ones only (a smaller benchmark
    for smoke runs, ``bench.quality --captions``). The teacher samples on ``device`` (``bench.device``); the
    classifier, the references and every metric stay on the CPU (a GPU run's numbers differ from a CPU
    run's by floating-point rounding only; references cached by one device are reused by the other)."""

    def __init__(self, out: str, eval_per_caption: int, data_seed: int, recipe: ProxyRecipe = VP, device="cpu",
                 captions: int = 72):
        self.recipe, self.device = recipe, torch.device(device)
        self.model = recipe.load().to_device(self.device)
        self.classifier = load_classifier(CLASSIFIER)
        labels, seeds, real = evaluation_set(all_labels()[:captions], eval_per_caption, data_seed)
        n = len(seeds)
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "reference.safetensors")
        ref = load_file(path) if os.path.isfile(path) else {}
        # independent noise: seeds disjoint from the set's own (and from the other set's)
        wanted = {"teacher": seeds, "teacher_other": seeds + n,
                  "heldout_teacher": HELDOUT_SEED_BASE + (seeds - seeds[0]),
                  "heldout_teacher_other": HELDOUT_SEED_BASE + n + (seeds - seeds[0])}
        missing = {k: v for k, v in wanted.items() if k not in ref}
        for key, noise_seeds in missing.items():
            ref[key] = teacher_samples(self.model, labels, noise_seeds, recipe.solver, recipe.steps, recipe.cfg)
        if missing:
            with atomic_path(path) as tmp:
                save_file(ref, tmp)
        # the held-out set's real images: another draw of the renderer (another data seed)
        heldout_real = evaluation_set(all_labels()[:captions], eval_per_caption, data_seed + 1000)[2]
        self.sets = {"eval": EvalSet("eval", labels, seeds, real, ref["teacher"], ref["teacher_other"], self.classifier),
                     "heldout": EvalSet("heldout", labels, wanted["heldout_teacher"], heldout_real,
                                        ref["heldout_teacher"], ref["heldout_teacher_other"], self.classifier)}

def teacher_table(out: str, ev: Evaluation) -> Dict:
    """The teacher's rows (no training seed: one value each), cached in ``<out>/teacher.json``."""
    path = os.path.join(out, "teacher.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    es = ev.sets["eval"]
    floor = es.metrics(es.teacher_other)     # the teacher vs the teacher from independent noise
    rows: Dict[str, Dict] = {"teacher floor": {"25": {**floor, "fd_indep": floor["fd"], "nfe": 50}}}
    for name, solver, n in teacher_rows(ev.recipe):
        images = teacher_samples(ev.model, es.labels, es.seeds, solver, n, ev.recipe.cfg)
        rows.setdefault(name, {})[str(n)] = {**es.metrics(images), "nfe": 2 * n}
    write_json(path, rows)
    return rows
