"""A sample grid readable without the code: one row per sampler (its name and steps on the left),
one column per caption and seed (the caption written under the column, at most ``CAPTION_LINES``
lines: a longer one is cut with an ellipsis, so a prompt of any length makes a grid of bounded size)."""

from __future__ import annotations

import textwrap
from typing import Dict, List

import torch

from rayflow.atomic_write import atomic_path

LABEL_W = 130       # pixels of the row labels
LINE_H = 11         # pixels per caption line (PIL's default bitmap font is about 6 x 11)
CAPTION_LINES = 4   # caption lines under a column at most
ELLIPSIS = "..."    # ASCII: PIL's bitmap font has no U+2026


def _tiles(images: torch.Tensor):
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def caption_lines(caption: str, chars: int) -> List[str]:
    """``caption`` wrapped at ``chars`` characters per line, at most ``CAPTION_LINES`` lines; a caption
    cut short ends in ``ELLIPSIS``. Only the caption's start is read, whatever its length."""
    head = caption[: chars * (CAPTION_LINES + 1)]
    lines = textwrap.wrap(head, chars) or [""]
    if len(lines) > CAPTION_LINES or len(head) < len(caption):
        lines = lines[:CAPTION_LINES]
        lines[-1] = lines[-1][: max(0, chars - len(ELLIPSIS))].rstrip() + ELLIPSIS
    return lines


def save_grid(rows: Dict[str, torch.Tensor], captions: List[str], path: str, scale: int = 6) -> None:
    """Write ``rows`` (row label -> images ``[n, 3, H, W]`` in [-1, 1], all of the same ``n``) as a
    PNG at ``path``, each tile upscaled ``scale`` times, with ``captions[c]`` under column ``c``."""
    from PIL import Image, ImageDraw

    names = list(rows)
    n, h = rows[names[0]].shape[0], rows[names[0]].shape[2] * scale
    if len(captions) != n:
        raise ValueError(f"the grid has {n} columns but {len(captions)} captions")
    chars = max(4, h // 6)
    wrapped = [caption_lines(c, chars) for c in captions]
    caption_h = LINE_H * max(len(w) for w in wrapped) + 6
    img = Image.new("RGB", (LABEL_W + n * h, len(names) * h + caption_h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r, name in enumerate(names):
        draw.text((4, r * h + h // 2 - LINE_H // 2), name, fill=(0, 0, 0))
        tiles = _tiles(rows[name])
        for c in range(n):
            img.paste(Image.fromarray(tiles[c]).resize((h, h), Image.NEAREST), (LABEL_W + c * h, r * h))
    top = len(names) * h + 3
    for c, lines in enumerate(wrapped):
        for i, line in enumerate(lines):
            draw.text((LABEL_W + c * h + 2, top + i * LINE_H), line, fill=(0, 0, 0))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
