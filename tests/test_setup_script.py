"""``scripts/setup.sh`` passes ``TORCH_INDEX_URL`` to pip for the dev extra's torch pin, and reinstalls
only when pyproject.toml or that variable changed (run against a stand-in .venv that logs pip calls)."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fake_repo(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash is not available")
    (tmp_path / "scripts").mkdir()
    shutil.copy(os.path.join(ROOT, "scripts", "setup.sh"), tmp_path / "scripts" / "setup.sh")
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    py = tmp_path / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text('#!/usr/bin/env bash\necho "$*" >> "$(dirname "$0")/../pip.log"\n')
    py.chmod(0o755)
    return tmp_path


def _setup(repo, index=None):
    env = {k: v for k, v in os.environ.items() if k != "TORCH_INDEX_URL"}
    if index is not None:
        env["TORCH_INDEX_URL"] = index
    subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], check=True, env=env)
    log = repo / ".venv" / "pip.log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return [l for l in lines if "--upgrade pip" not in l]


def test_setup_passes_the_torch_index_and_the_pin(fake_repo):
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        pin = next(tok.strip('",') for tok in f.read().split() if tok.startswith('"torch=='))
    assert _setup(fake_repo) == ["-m pip install --quiet .[dev]"]          # default: pip's own pick
    assert _setup(fake_repo) == []                                          # nothing changed
    assert _setup(fake_repo, "https://example.invalid/cpu") == [
        f"-m pip install --quiet --index-url https://example.invalid/cpu {pin}", "-m pip install --quiet .[dev]"]
    assert _setup(fake_repo, "https://example.invalid/cpu") == []
