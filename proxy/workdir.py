"""The demo's work folders: one per configuration, so no run ever trips over another's leftovers.

A work folder (phase-1 cache, checkpoints, logs) is named after the demo mode and a short hash of
every option that shapes its contents (``config_key``), e.g. ``outputs/demo/work/quick-1a2b3c4d``;
switching modes or settings therefore opens another folder, and switching back finds the old one
again and continues it. A folder given explicitly (``--work-dir``) that holds a run of another
configuration is set aside (renamed, with a one-line message), never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict

from rayflow.atomic_write import write_text

KEY_FILE = "demo-config.json"


def config_key(mode: str, cfg) -> str:
    """``<mode>-<8 hex digits>``: the hash covers ``cfg.fingerprint()`` (the options a resume must
    match) plus the optimizer steps, which the trainer's fingerprint leaves out."""
    keyed = {**cfg.fingerprint(), "train_steps": cfg.train_steps}
    digest = hashlib.sha1(json.dumps(keyed, sort_keys=True, default=str).encode("utf-8")).hexdigest()
    return f"{mode}-{digest[:8]}"


def _stored_key(folder: str) -> str:
    try:
        with open(os.path.join(folder, KEY_FILE), encoding="utf-8") as f:
            return str(json.load(f).get("key", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _aside_path(folder: str, old_key: str) -> str:
    base = f"{folder.rstrip(os.sep)}.set-aside-{old_key or 'unknown'}"
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def prepare_work_dir(folder: str, key: str, config: Dict, say: Callable[[str], None] = print) -> bool:
    """Make ``folder`` the work folder of the configuration ``key``; returns whether it already
    holds work of that configuration (a phase-1 cache or a checkpoint to continue).

    A non-empty folder of another (or an unknown) configuration is renamed to
    ``<folder>.set-aside-<its key>`` and ``say`` gets one line naming both paths."""
    if os.path.isdir(folder) and os.listdir(folder):
        old = _stored_key(folder)
        if old == key:
            return any(os.path.isdir(os.path.join(folder, d)) for d in ("cache", "checkpoint"))
        aside = _aside_path(folder, old)
        os.replace(folder, aside)
        say(f"note: {folder} held a run of another configuration ({old or 'unknown'}); "
            f"moved it to {aside} and starting {key} afresh")
    elif os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"--work-dir {folder} is a file, not a folder")
    os.makedirs(folder, exist_ok=True)
    write_text(os.path.join(folder, KEY_FILE), json.dumps({"key": key, "config": config}, indent=2, sort_keys=True, default=str))
    return False
