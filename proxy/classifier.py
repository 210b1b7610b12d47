"""Attribute classifier on proxy images and the metrics built on its features.

* **FD-proxy** (analogue of FID): Frechet distance between Gaussian fits of the classifier's
  penultimate features of two image sets.
* **Alignment** (analogue of CLIP score): fraction of generated images whose four predicted
  attributes all match their caption.
* **Diversity**: mean pairwise feature distance among samples of one caption, relative to the
  same statistic on real data for the same captions.

Train (about 4 minutes on 2 CPU cores; the committed ``proxy/weights/classifier.safetensors`` was
made with exactly this command)::

    python -m proxy.classifier --out proxy/weights/classifier.safetensors --steps 1500 --seed 1
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Dict, List

import torch
from torch import nn

from .data import ATTR_NAMES, ATTRIBUTES, all_labels, render

FEATURES = 32


class AttributeClassifier(nn.Module):
    """Small CNN: images ``[B, 3, 16, 16]`` in [-1, 1] -> features ``[B, 32]`` and one logit head per attribute."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 32, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, FEATURES), nn.SiLU())
        self.heads = nn.ModuleList([nn.Linear(FEATURES, len(v)) for v in ATTRIBUTES.values()])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.float())

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        f = self.features(x)
        return [h(f) for h in self.heads]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Attribute indices ``[B, 4]``."""
        return torch.stack([logits.argmax(1) for logits in self(x)], 1)


def load_classifier(path: str) -> AttributeClassifier:
    from safetensors.torch import load_file

    model = AttributeClassifier()
    model.load_state_dict(load_file(path))
    return model.eval()


# ----------------------------------------------------------------------------- metrics
def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` between feature sets ``[N, F]``."""
    a, b = f1.double(), f2.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    r1 = _sqrtm_psd(s1)
    cross = _sqrtm_psd(r1 @ s2 @ r1)
    return float((mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * torch.trace(cross))


def attribute_hits(classifier: AttributeClassifier, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` bool: which predicted attributes of ``images`` equal the caption's ``labels`` ``[N, 4]``."""
    return classifier.predict(images) == labels


def alignment(classifier: AttributeClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose predicted attributes all equal the caption's."""
    return float(attribute_hits(classifier, images, labels).all(1).float().mean())


def mean_pairwise_distance(features: torch.Tensor, groups: torch.Tensor) -> float:
    """Mean over groups of the mean pairwise L2 distance between features of the same group."""
    out = []
    for g in groups.unique():
        f = features[groups == g]
        if len(f) > 1:
            d = torch.cdist(f, f)
            out.append(d.sum() / (len(f) * (len(f) - 1)))
    return float(torch.stack(out).mean())


def high_frequency_rms(images: torch.Tensor) -> float:
    """RMS of ``images`` ``[N, C, H, W]`` minus their 3x3 box blur (edge-replicated): the energy of
    pixel-scale detail, edges and noise."""
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return float((images - blurred).pow(2).mean().sqrt())


@torch.no_grad()
def evaluate(classifier: AttributeClassifier, images: torch.Tensor, labels: torch.Tensor,
             real_images: torch.Tensor, real_labels: torch.Tensor) -> Dict[str, float]:
    """FD-proxy vs real images, alignment, diversity relative to real data of the same captions, and
    the accuracy of each attribute (``acc_size``, ``acc_color``, ``acc_shape``, ``acc_background``)
    and ``hf_ratio``, the high-frequency energy of the samples relative to the real images'
    (:func:`high_frequency_rms`; 1 = as sharp as the data, above 1 = pixel noise)."""
    caption_id = lambda lab: (lab * torch.tensor([24, 6, 2, 1])).sum(1)  # noqa: E731  unique id per caption
    f_gen, f_real = classifier.features(images), classifier.features(real_images)
    div_gen = mean_pairwise_distance(f_gen, caption_id(labels))
    div_real = mean_pairwise_distance(f_real, caption_id(real_labels))
    hits = attribute_hits(classifier, images, labels)                         # [N, 4]
    return {"fd_proxy": frechet_distance(f_gen, f_real), "alignment": float(hits.all(1).float().mean()),
            "diversity": div_gen / div_real, "hf_ratio": high_frequency_rms(images) / high_frequency_rms(real_images),
            **{f"acc_{name}": float(hits[:, i].float().mean()) for i, name in enumerate(ATTR_NAMES)}}


# ----------------------------------------------------------------------------- training
def train(out: str, steps: int, seed: int, batch: int = 128) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = AttributeClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    labels_all = all_labels()
    t0 = time.time()
    for step in range(steps):
        labels = labels_all[torch.randint(0, len(labels_all), (batch,), generator=g)]
        x = render(labels, g)
        x = x + 0.05 * torch.randn(x.shape, generator=g)          # robustness to sampler noise
        loss = sum(nn.functional.cross_entropy(logits, labels[:, i]) for i, logits in enumerate(model(x)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 250 == 0:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    model.eval()
    test_labels = labels_all.repeat(20, 1)
    acc = alignment(model, render(test_labels, torch.Generator().manual_seed(seed + 1000)), test_labels)
    print(f"held-out all-attributes accuracy: {acc:.4f}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out,
              metadata={"command": f"python -m proxy.classifier --out {out} --steps {steps} --seed {seed}",
                        "heldout_accuracy": json.dumps(acc)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train the proxy attribute classifier used by the metrics.")
    ap.add_argument("--out", default="proxy/weights/classifier.safetensors")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    train(args.out, args.steps, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
