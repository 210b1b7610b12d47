"""rayflow.atomic_write: complete-or-absent writes, and a full disk as one sentence naming the file."""

import errno
import json
import os

import pytest

from rayflow.atomic_write import DiskFullError, atomic_path, write_json


def test_write_json_replaces_the_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    write_json(str(path), {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert os.listdir(tmp_path) == ["a.json"]


def test_a_failed_write_keeps_the_old_content(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("precious")
    with pytest.raises(RuntimeError):
        with atomic_path(str(path)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "precious"
    assert os.listdir(tmp_path) == ["a.txt"]


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")])
def test_full_disk_is_one_sentence_naming_the_file(tmp_path, exc):
    path = tmp_path / "out.safetensors"
    with pytest.raises(DiskFullError) as info:
        with atomic_path(str(path)) as tmp:
            open(tmp, "w").close()
            raise exc
    msg = str(info.value)
    assert str(path) in msg and "disk is full" in msg and "free" in msg and "\n" not in msg
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_a_folder_replaces_a_folder(tmp_path):
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "old").write_text("1")
    with atomic_path(str(path)) as tmp:
        os.makedirs(tmp)
        with open(os.path.join(tmp, "new"), "w") as f:
            f.write("2")
    assert os.listdir(path) == ["new"]
    assert os.listdir(tmp_path) == ["ckpt"]
