"""Prompt files: ``.txt`` (one per line), ``.jsonl`` (``{"prompt": ...}`` per line) or ``.csv``
(a ``prompt`` column). Blank lines are skipped; an empty result is an error."""

from __future__ import annotations

import csv
import json
import os
from typing import List


class PromptsError(ValueError):
    """The prompts file is missing, unreadable, malformed or empty."""


def read_prompts(path: str) -> List[str]:
    if os.path.isdir(path):
        raise PromptsError(f"--prompts {path} is a folder; give a prompts file (.txt, .jsonl or .csv)")
    if not os.path.isfile(path):
        raise PromptsError(f"prompts file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if ext == ".txt":
                prompts = [line.strip() for line in f]
            elif ext == ".jsonl":
                prompts = []
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        item = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise PromptsError(f"{path} line {n} is not JSON: {exc.msg}") from None
                    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                        raise PromptsError(f"{path} line {n} has no string field \"prompt\"")
                    prompts.append(item["prompt"].strip())
            elif ext == ".csv":
                reader = csv.DictReader(f)
                if not reader.fieldnames or "prompt" not in reader.fieldnames:
                    raise PromptsError(f"{path} has no 'prompt' column (columns: {reader.fieldnames})")
                prompts = [(row.get("prompt") or "").strip() for row in reader]
            else:
                raise PromptsError(f"prompts file must be .txt, .jsonl or .csv: {path}")
    except UnicodeDecodeError:
        raise PromptsError(f"prompts file is not UTF-8 text: {path}") from None
    except OSError as exc:
        raise PromptsError(f"cannot read prompts file {path}: {exc.strerror}") from None
    prompts = [p for p in prompts if p]
    if not prompts:
        raise PromptsError(f"prompts file has no prompts: {path}")
    return prompts
