"""The records a training run keeps in its work dir: ``log.csv`` (loss, learning rate and Time
Sampler statistics every ``--log-every`` steps, mirrored to TensorBoard when it is installed) and
``time_sampler.jsonl`` (the Time Sampler diagnostics at every checkpoint).

On resume both are cut back to the rows of the checkpoint's step, so the steps trained again after
a kill appear once (:meth:`RunLog.truncate_after`).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Dict, List

from rayflow.atomic_write import atomic_path

COLUMNS = ["step", "loss", "lr", "t_mean", "t_std", "w_mean", "w_max", "samples_per_s"]


class RunLog:
    """``log.csv`` and ``time_sampler.jsonl`` of ``work_dir``; only the main process writes."""

    def __init__(self, work_dir: str, main_process: bool = True):
        self.work_dir, self.main = work_dir, main_process
        self.csv_path = os.path.join(work_dir, "log.csv")
        self.diagnostics_path = os.path.join(work_dir, "time_sampler.jsonl")
        self._file = self._writer = self._board = None

    def open(self, continuing: bool) -> "RunLog":
        """Start writing rows: appended to an existing ``log.csv`` when ``continuing``, else a new
        file with its header. Also opens the TensorBoard writer where tensorboard is installed."""
        if not self.main:
            return self
        append = continuing and os.path.isfile(self.csv_path)
        self._file = open(self.csv_path, "a" if append else "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if not append:
            self._writer.writerow(COLUMNS)
        self._board = _tensorboard(self.work_dir)
        return self

    def row(self, step: int, values: Dict[str, float]) -> None:
        """One ``log.csv`` row (``values`` holds every column but ``step``), flushed at once."""
        if self._writer is None:
            return
        cells = [step] + [values[c] for c in COLUMNS[1:]]
        self._writer.writerow(cells)
        self._file.flush()
        if self._board is not None:
            for name, v in zip(COLUMNS[1:], cells[1:]):
                self._board.add_scalar(name, v, step)

    def diagnostics(self, record: Dict) -> None:
        """Append one Time Sampler diagnostics record (a dict with its ``step``)."""
        if self.main:
            with open(self.diagnostics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        for closable in (self._file, self._board):
            if closable is not None:
                closable.close()
        self._file = self._writer = self._board = None

    def truncate_after(self, step: int) -> None:
        """Cut both files back to the rows of steps <= ``step`` (the resumed checkpoint's)."""
        if not self.main:
            return
        if os.path.isfile(self.csv_path):
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            keep = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
            with atomic_path(self.csv_path) as tmp:
                with open(tmp, "w", newline="", encoding="utf-8") as f:
                    csv.writer(f).writerows(keep)
        if os.path.isfile(self.diagnostics_path):
            with open(self.diagnostics_path, encoding="utf-8") as f:
                lines = [line for line in f if line.strip()]
            with atomic_path(self.diagnostics_path) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.writelines(_records_up_to(lines, step))


def _records_up_to(lines: List[str], step: int) -> List[str]:
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            pass                                  # a line cut short by a kill
    return keep


def _tensorboard(work_dir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(os.path.join(work_dir, "tensorboard"))
