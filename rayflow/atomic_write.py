"""Atomic file writes: a file (or folder) is complete or absent, never half written.

Every writer of the project (LoRA exports, checkpoints, cache shards and manifests, logs rewritten
on resume, benchmark records, validation grids) goes through :func:`atomic_path`: the content is
written to a temp name beside the target and renamed over it at the end; on any failure the temp
name is removed and the target is untouched. Logs that grow by rows use :func:`append_text` (a row
is appended whole or not at all). A full disk becomes one :class:`DiskFullError` sentence that names
the file and the free space, instead of a library's bare ``No space left on device``.

Standard library only, so the kernels, the trainer, the nodes and the benchmarks all share it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from typing import Any, Iterator

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write failed because its filesystem is full (or over quota); the message names the file."""


def _free_space(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if free < 1024 or unit == "TB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"


def _is_full_disk(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in FULL_DISK_ERRNOS:
        return True
    text = str(exc)          # safetensors' Rust writer reports the OS error only in its message
    return "No space left on device" in text or "Disk quota exceeded" in text


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temp path beside ``path``; when the block succeeds, rename it to ``path``.

    The caller writes a file, or creates and fills a folder, at the yielded path. On an exception
    the temp path is removed and ``path`` keeps its old content (or stays absent); a full disk is
    re-raised as :class:`DiskFullError` naming ``path`` and the space left there. A folder that
    replaces an existing folder is swapped in with two renames (the old one removed last)."""
    tmp = f"{path}.tmp{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(path):
            old = f"{path}.old{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        _remove(tmp)
        _raise_if_full(exc, path)
        raise


def _raise_if_full(exc: BaseException, path: str) -> None:
    if _is_full_disk(exc) and not isinstance(exc, DiskFullError):     # an inner write's error names its own file
        full = DiskFullError(f"cannot write {path}: its disk is full ({_free_space(path)} free); "
                             f"free space there or write to another location, then run again")
        full.errno = errno.ENOSPC
        raise full from None


@contextlib.contextmanager
def full_disk_as_error(path: str) -> Iterator[None]:
    """Re-raise a full disk inside the block as :class:`DiskFullError` naming ``path``: for writers
    that own their files (e.g. TensorBoard's event writer), where no temp name can be used."""
    try:
        yield
    except BaseException as exc:
        _raise_if_full(exc, path)
        raise


def append_text(path: str, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path`` whole or not at all: on a failed write the file is cut
    back to its old length (removed if the append created it), and a full disk is one
    :class:`DiskFullError` naming ``path``."""
    data = memoryview(text.encode("utf-8"))
    existed = os.path.exists(path)
    with full_disk_as_error(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)    # unbuffered: nothing left to flush
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data):]
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start) if existed else os.remove(path)
                raise
        finally:
            os.close(fd)


def write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)


def write_json(path: str, data: Any, indent: int = 1) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=indent) + "\n")
