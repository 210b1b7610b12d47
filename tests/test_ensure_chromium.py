"""``scripts/ensure_chromium.sh`` (run by scripts/test_comfyui.sh): the browser test's Chromium is
installed with apt-get where that is possible (root), once; otherwise one line says what to install.
Run against stand-ins for ``id``, ``apt-get`` and ``chromium`` on an otherwise empty PATH."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "ensure_chromium.sh")
BASH = shutil.which("bash")


def _tool(folder, name, body):
    path = folder / name
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def shims(tmp_path):
    if BASH is None:
        pytest.skip("bash is not available")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def make(uid=0, apt=True, apt_works=True):
        _tool(bin_dir, "id", f'echo {uid}')
        if apt:       # a successful install puts a chromium on PATH
            install = f': > "{bin_dir}/chromium"; {shutil.which("chmod")} +x "{bin_dir}/chromium"' if apt_works else "exit 100"
            _tool(bin_dir, "apt-get", f'echo "$*" >> "{tmp_path}/apt.log"\ncase "$1" in install) {install} ;; esac')
        return bin_dir
    return make


def _run(bin_dir):
    res = subprocess.run([BASH, SCRIPT], env={"PATH": str(bin_dir)}, capture_output=True, text=True)
    log = bin_dir.parent / "apt.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return res, calls


def test_root_with_apt_installs_chromium_once(shims):
    bin_dir = shims(uid=0)
    res, calls = _run(bin_dir)
    assert res.returncode == 0 and "installing Debian's chromium" in res.stdout
    assert calls == ["update -qq", "install -y -qq --no-install-recommends chromium"]
    res, calls = _run(bin_dir)                        # now on PATH: nothing to do
    assert res.returncode == 0 and calls == [] and res.stdout == res.stderr == ""


def test_without_root_it_says_what_to_install(shims):
    res, calls = _run(shims(uid=1000))
    assert res.returncode == 0 and calls == []
    assert "no Chromium on PATH, so the browser test will skip (a failure with CI=true)" in res.stderr
    assert "apt-get install chromium" in res.stderr and res.stderr.count("\n") == 1


def test_a_failed_install_is_one_line_and_not_fatal(shims):
    res, calls = _run(shims(uid=0, apt_works=False))
    assert res.returncode == 0 and calls[-1].startswith("install")
    assert "apt-get could not install chromium; the browser test will skip" in res.stderr
