"""The validation grid (``training/grid.py``): a caption of any length gives a grid of bounded size,
cut with an ellipsis; the PNG is written atomically."""

import os

import torch
from PIL import Image

from training.grid import CAPTION_LINES, ELLIPSIS, caption_lines, save_grid


def _rows(n=2):
    return {"teacher": torch.zeros(n, 3, 16, 16), "RayFlow 1 step": torch.ones(n, 3, 16, 16) * 0.5}


def test_a_huge_caption_gives_a_grid_of_bounded_size(tmp_path):
    short, huge = tmp_path / "short.png", tmp_path / "huge.png"
    save_grid(_rows(), ["a red cat", "a blue house"], str(short))
    save_grid(_rows(), ["a red cat " * 100_000, "x" * 1_000_000], str(huge))      # 1 MB captions
    w_short, h_short = Image.open(short).size
    w_huge, h_huge = Image.open(huge).size
    assert w_huge == w_short and h_huge <= h_short + 11 * CAPTION_LINES
    assert sorted(os.listdir(tmp_path)) == ["huge.png", "short.png"]      # no temp file left


def test_long_captions_are_cut_with_an_ellipsis_and_short_ones_kept():
    assert caption_lines("a red cat", 16) == ["a red cat"]
    lines = caption_lines("word " * 1_000_000, 16)
    assert len(lines) == CAPTION_LINES and lines[-1].endswith(ELLIPSIS) and all(len(x) <= 16 for x in lines)
    assert caption_lines("x" * 64, 16) == ["x" * 16] * 4                 # exactly four lines: nothing cut
    assert caption_lines("x" * 65, 16)[-1] == "x" * 13 + ELLIPSIS
    assert caption_lines("", 16) == [""]
