"""A full disk under ``python -m training.distill``: one line naming the file being written and what
to do, exit code 2, nothing partial left behind. The writers that cannot use a temp name (rows
appended to the logs, TensorBoard) and the validation grid are checked with a simulated ENOSPC; the
whole run on a real, small tmpfs where mounting one is possible (root)."""

import errno
import os
import shutil
import subprocess
import sys
import types
import uuid

import pytest
import torch

from rayflow import atomic_write
from rayflow.atomic_write import DiskFullError, append_text
from tiny_run import TINY_FLAGS as FLAGS
from training.distill import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _fd_path(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _full_for(monkeypatch, suffix):
    """``os.write`` fails with ENOSPC for files whose name ends in ``suffix`` (after one byte)."""
    real = os.write

    def write(fd, data):
        if _fd_path(fd).endswith(suffix):
            if len(data) > 1:
                return real(fd, bytes(data[:1]))
            raise ENOSPC
        return real(fd, data)
    monkeypatch.setattr(os, "write", write)


def _no_temp_files(folder):
    return [os.path.join(d, n) for d, dirs, files in os.walk(folder) for n in files + dirs if ".tmp" in n]


def test_an_appended_row_is_whole_or_absent_on_a_full_disk(tmp_path, monkeypatch):
    log = tmp_path / "log.csv"
    log.write_text("step,loss\n1,0.5\n")
    _full_for(monkeypatch, "log.csv")
    with pytest.raises(DiskFullError, match=f"cannot write {log}: its disk is full"):
        append_text(str(log), "2,0.25\n")
    assert log.read_text() == "step,loss\n1,0.5\n"           # the half row is cut off again
    with pytest.raises(DiskFullError):
        append_text(str(tmp_path / "new.log.csv"), "1,0.5\n")
    assert sorted(os.listdir(tmp_path)) == ["log.csv"]          # a file the append created is removed


def test_the_validation_grid_on_a_full_disk(tmp_path, monkeypatch):
    from PIL import Image

    from training.grid import save_grid

    def save(self, fp, *a, **k):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise ENOSPC
    monkeypatch.setattr(Image.Image, "save", save)
    path = tmp_path / "validation_final.png"
    with pytest.raises(DiskFullError, match=f"cannot write {path}: its disk is full"):
        save_grid({"teacher": torch.zeros(1, 3, 8, 8)}, ["a cat"], str(path))
    assert os.listdir(tmp_path) == []


def test_tensorboard_on_a_full_disk(tmp_path, monkeypatch):
    from training.records import Scalars

    class Writer:
        def __init__(self, folder):
            pass

        def add_scalar(self, *a):
            raise ENOSPC

        close = add_scalar
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    scalars = Scalars(str(tmp_path))
    with pytest.raises(DiskFullError, match=f"cannot write {tmp_path / 'tensorboard'}: its disk is full"):
        scalars.add([1, 0.5, 1e-4, 0, 0, 1, 1, 10], 1)
    with pytest.raises(DiskFullError):
        scalars.close()


@pytest.mark.parametrize("victim", ["log.csv", "time_sampler.jsonl"])
def test_a_full_disk_under_the_logs_ends_the_run_in_one_line(tiny_sd15, tmp_path, monkeypatch, capsys, victim):
    model, prompts = tiny_sd15
    out = tmp_path / "o.safetensors"
    _full_for(monkeypatch, victim)
    assert main(["--model", model, "--prompts", prompts, *FLAGS, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: cannot write {tmp_path / 'o.work' / victim}: its disk is full")
    assert "free space there or write to another location" in err[-1]
    assert not out.exists() and _no_temp_files(tmp_path) == []


def test_a_full_disk_under_exports_json_names_that_file_not_the_lora(tiny_sd15, tmp_path, monkeypatch, capsys):
    """exports.json is written while the LoRA waits under its temp name: the error names exports.json
    (the inner write), and neither file is left behind."""
    model, prompts = tiny_sd15
    out = tmp_path / "o.safetensors"
    real_open = open

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if "w" in mode and "exports.json" in str(path):
            f.write = lambda data: (_ for _ in ()).throw(ENOSPC)
        return f
    monkeypatch.setattr(atomic_write, "open", fake_open, raising=False)
    assert main(["--model", model, "--prompts", prompts, *FLAGS, "--output", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {tmp_path / 'o.work' / 'exports.json'}: its disk is full"), last
    assert not out.exists() and not (tmp_path / "o.work" / "exports.json").exists() and _no_temp_files(tmp_path) == []


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size)``: a folder on a fresh tmpfs of ``size`` (e.g. ``"400k"``); skipped where this
    process cannot mount one (not root, or no CAP_SYS_ADMIN)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mounted = []

    def mount(size):
        folder = tmp_path / f"tmpfs-{size}-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounted.append(folder)
        return folder
    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("work_size, out_size, full", [("400k", "12k", "work"), ("4m", "12k", "out")])
def test_a_real_full_disk_ends_the_run_in_one_line_and_leaves_nothing_partial(tiny_sd15, tmpfs, work_size, out_size, full):
    """The repro of issue 35: the work dir on a 400 kB tmpfs (its checkpoint does not fit), or the
    output on a 12 kB one (the LoRA does not fit)."""
    model, prompts = tiny_sd15
    work, out = tmpfs(work_size), tmpfs(out_size)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "training.distill", "--model", model, "--prompts", prompts, *FLAGS,
                          "--work-dir", str(work / "w"), "--output", str(out / "o.safetensors")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in res.stderr.replace("\r", "\n").splitlines() if line.startswith("error")]
    assert res.returncode == 2 and len(errors) == 1, res.stderr[-2000:]
    where = work if full == "work" else out
    assert errors[0].startswith(f"error: cannot write {where}/") and "its disk is full" in errors[0], errors
    assert "free space there or write to another location" in errors[0]
    assert os.listdir(out) == [] and _no_temp_files(work) == []
