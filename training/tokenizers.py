"""Offline word-level tokenizers for tiny test models and the proxy teacher.

No tokenizer vocabulary can be downloaded here, so tests and the proxy build a real
``transformers.CLIPTokenizer`` whose BPE vocabulary covers a given word list (every listed word
becomes one token). The files written are the standard ``vocab.json`` + ``merges.txt`` that
``CLIPTokenizer.from_pretrained`` and diffusers pipelines read, so the same loading code serves
real checkpoints and the proxy.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, List


def _bpe_merges(words: Iterable[str]) -> List[tuple]:
    """Left-to-right merges that assemble each word (suffixed ``</w>``) from its characters."""
    merges, seen = [], set()
    for w in sorted(set(words)):
        parts = list(w[:-1]) + [w[-1] + "</w>"] if len(w) > 1 else [w + "</w>"]
        cur = parts[0]
        for nxt in parts[1:]:
            pair = (cur, nxt)
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            cur = cur + nxt
    return merges


def write_clip_tokenizer(words: Iterable[str], out_dir: str, model_max_length: int = 77) -> str:
    """Write a CLIP BPE tokenizer (``vocab.json``, ``merges.txt``, configs) covering ``words``.

    Words are lower-cased ASCII; unknown words still tokenize (character by character). Returns
    ``out_dir``. Load it with ``transformers.CLIPTokenizer.from_pretrained(out_dir)``.
    """
    words = [w.lower() for w in words if w.strip()]
    if not words:
        raise ValueError("words must contain at least one non-empty word")
    chars = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789,.-'!?"))
    vocab: dict = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = _bpe_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
                   "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, f)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, f)
    return out_dir
