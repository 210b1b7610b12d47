"""The records of a training run in its work dir: ``log.csv`` (a row every ``--log-every`` steps),
``time_sampler.jsonl`` (the Time Sampler diagnostics) and, where tensorboard is installed, its
event files under ``tensorboard/``.

Rows are appended whole or not at all (:func:`rayflow.atomic_write.append_text`), a resumed run
cuts the files back to its checkpoint's step with an atomic rewrite, and a full disk is one
``DiskFullError`` naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Dict, Iterable, List

from rayflow.atomic_write import append_text, full_disk_as_error, write_text

LOG_COLUMNS = ["step", "loss", "lr", "t_mean", "t_std", "w_mean", "w_max", "samples_per_s"]


def _csv(rows: Iterable[List]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def start_log(path: str) -> None:
    """A new ``log.csv`` holding only its header row."""
    write_text(path, _csv([LOG_COLUMNS]))


def append_row(path: str, row: List) -> None:
    """Append one ``LOG_COLUMNS`` row to ``log.csv``."""
    append_text(path, _csv([row]))


def append_record(path: str, record: Dict) -> None:
    """Append one JSON line to a ``.jsonl`` file."""
    append_text(path, json.dumps(record) + "\n")


def drop_records_after(log_path: str, jsonl_path: str, step: int) -> None:
    """Cut ``log.csv`` and ``time_sampler.jsonl`` back to the rows of steps <= ``step`` (the resumed
    checkpoint's), so that the steps trained again after a kill appear once."""
    if os.path.isfile(log_path):
        with open(log_path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        keep = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
        write_text(log_path, _csv(keep))
    if os.path.isfile(jsonl_path):
        with open(jsonl_path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        keep_lines = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    keep_lines.append(line)
            except (ValueError, KeyError, TypeError):
                pass                                  # a line cut short by a kill
        write_text(jsonl_path, "".join(keep_lines))


class Scalars:
    """TensorBoard scalars of the log rows (nothing where tensorboard is not installed); a full disk
    under ``<work_dir>/tensorboard`` is a ``DiskFullError`` naming that folder."""

    def __init__(self, work_dir: str):
        self.folder = os.path.join(work_dir, "tensorboard")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional
            self.writer = None
            return
        with full_disk_as_error(self.folder):
            self.writer = SummaryWriter(self.folder)

    def add(self, row: List, step: int) -> None:
        if self.writer is not None:
            with full_disk_as_error(self.folder):
                for name, value in zip(LOG_COLUMNS[1:], row[1:]):
                    self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            with full_disk_as_error(self.folder):
                self.writer.close()
