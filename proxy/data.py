"""Procedural captioned image set for the proxy teacher (deterministic from a seed).

Each image is a coloured shape on a plain background, rendered at 4x resolution and box-filtered
down (anti-aliased). The caption names four attributes; the position and the exact size jitter
are free, so one caption has many images (needed for the diversity metric)::

    "a large red circle on a white background"

Images are ``[N, 3, R, R]`` float32 in [-1, 1] (R = 16 by default); labels are ``[N, 4]`` long
indices into :data:`ATTRIBUTES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch

ATTRIBUTES: Dict[str, List[str]] = {
    "size": ["small", "large"],
    "color": ["red", "green", "blue", "yellow"],
    "shape": ["circle", "square", "triangle"],
    "background": ["white", "black", "gray"],
}
ATTR_NAMES = list(ATTRIBUTES)
RGB = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.15), "blue": (0.15, 0.25, 0.95),
       "yellow": (0.95, 0.85, 0.1), "white": (0.95, 0.95, 0.95), "black": (0.05, 0.05, 0.05),
       "gray": (0.5, 0.5, 0.5)}


@dataclass
class ProxyDataset:
    images: torch.Tensor    # [N, 3, R, R] in [-1, 1]
    labels: torch.Tensor    # [N, 4] attribute indices (size, color, shape, background)
    captions: List[str]


def caption_of(label: Sequence[int]) -> str:
    size, color, shape, bg = (ATTRIBUTES[k][int(i)] for k, i in zip(ATTR_NAMES, label))
    return f"a {size} {color} {shape} on a {bg} background"


def parse_caption(caption: str) -> List[int]:
    """Attribute indices of a caption written by :func:`caption_of` (ValueError otherwise)."""
    words = caption.lower().replace(",", " ").split()
    out = []
    for name, values in ATTRIBUTES.items():
        hits = [i for i, v in enumerate(values) if v in words]
        if len(hits) != 1:
            raise ValueError(f"caption {caption!r} does not name exactly one {name} of {values}")
        out.append(hits[0])
    return out


def vocabulary() -> List[str]:
    """Every word a caption can contain (for the tokenizer)."""
    words = {"a", "on", "background"}
    for values in ATTRIBUTES.values():
        words.update(values)
    return sorted(words)


def all_labels() -> torch.Tensor:
    """All attribute combinations ``[C, 4]`` in a fixed order."""
    grids = torch.meshgrid(*[torch.arange(len(v)) for v in ATTRIBUTES.values()], indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def render(labels: torch.Tensor, generator: torch.Generator, resolution: int = 16, supersample: int = 4) -> torch.Tensor:
    """Render ``[N, 4]`` labels to ``[N, 3, R, R]`` images in [-1, 1] (batched, no per-image loop)."""
    n = labels.shape[0]
    hr = resolution * supersample
    size_frac = torch.tensor([0.34, 0.62])[labels[:, 0]] * (0.9 + 0.2 * torch.rand(n, generator=generator))
    half = size_frac / 2
    cx = half + (1 - 2 * half) * torch.rand(n, generator=generator)
    cy = half + (1 - 2 * half) * torch.rand(n, generator=generator)
    coords = (torch.arange(hr, dtype=torch.float32) + 0.5) / hr
    yy, xx = coords[None, :, None], coords[None, None, :]
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    h = half[:, None, None]
    circle = dx ** 2 + dy ** 2 <= h ** 2
    square = (dx.abs() <= h * 0.88) & (dy.abs() <= h * 0.88)
    # upward triangle: apex at top centre, base at the bottom of the box
    rel_y = (dy + h) / (2 * h)                      # 0 at apex, 1 at base
    triangle = (rel_y >= 0) & (rel_y <= 1) & (dx.abs() <= rel_y * h)
    masks = torch.stack([circle, square, triangle], 1).float()        # [N, 3, hr, hr]
    mask = masks.gather(1, labels[:, 2].view(n, 1, 1, 1).expand(n, 1, hr, hr))
    fg = torch.tensor([RGB[c] for c in ATTRIBUTES["color"]])[labels[:, 1]]        # [N, 3]
    bg = torch.tensor([RGB[c] for c in ATTRIBUTES["background"]])[labels[:, 3]]
    img = bg[:, :, None, None] * (1 - mask) + fg[:, :, None, None] * mask
    img = torch.nn.functional.avg_pool2d(img, supersample)
    return img * 2 - 1


def make_dataset(n: int, seed: int = 0, resolution: int = 16) -> ProxyDataset:
    """``n`` images with uniformly drawn attributes; identical for identical ``(n, seed, resolution)``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([torch.randint(0, len(v), (n,), generator=g) for v in ATTRIBUTES.values()], 1)
    images = render(labels, g, resolution)
    return ProxyDataset(images=images, labels=labels, captions=[caption_of(l) for l in labels.tolist()])
