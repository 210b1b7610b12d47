"""In CI with a ComfyUI source at hand, a ComfyUI test that skips fails the run (tests/conftest.py)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pytest(tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "COMFYUI_PATH", "COMFYUI_SRC")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_training_comfyui.py"],
                          cwd=REPO, env={**base, "COMFYUI_SRC": str(tmp_path / "comfyui"), **env},
                          capture_output=True, text=True, timeout=120)


def test_a_skipped_comfyui_test_fails_in_ci_and_only_there(tmp_path):
    (tmp_path / "comfyui").mkdir()
    (tmp_path / "comfyui" / "main.py").write_text("")          # a stand-in ComfyUI source
    ci = _pytest(tmp_path, CI="true")
    assert ci.returncode != 0 and "skipped in CI although a ComfyUI source is available" in ci.stdout
    local = _pytest(tmp_path)                # outside CI: a plain skip (exit 5: the only module collected nothing)
    assert local.returncode == 5 and "1 skipped" in local.stdout and "failed" not in local.stdout
    (tmp_path / "comfyui" / "main.py").unlink()                  # CI without a ComfyUI source: a plain skip
    assert _pytest(tmp_path, CI="true").returncode == 5


def test_a_python_that_cannot_run_comfyui_skips_with_the_reason_and_fails_in_ci(tmp_path):
    """With COMFYUI_PATH set, scripts/test.sh runs everything in .venv, which lacks ComfyUI's
    requirements (torchvision): every ComfyUI test module skips with that reason instead of stopping
    the collection, and in CI with a ComfyUI source the skip is a failure."""
    fake = tmp_path / "comfyui"
    (fake / "comfy").mkdir(parents=True)
    (fake / "main.py").write_text("")
    (fake / "comfy" / "__init__.py").write_text("")
    (fake / "comfy" / "options.py").write_text("import torchvision_that_is_not_installed  # noqa\n")
    tests = ["tests/comfyui/test_browser.py", "tests/comfyui/test_comfyui_integration.py",
             "tests/comfyui/test_server_load.py", "tests/test_training_comfyui.py"]
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "COMFYUI_PATH", "COMFYUI_SRC")}
    run = lambda **env: subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests],  # noqa: E731
                                       cwd=REPO, env={**base, "COMFYUI_PATH": str(fake), **env},
                                       capture_output=True, text=True, timeout=120)
    local = run(COMFYUI_SRC=str(tmp_path / "none"))
    assert local.returncode == 5 and "4 skipped" in local.stdout, local.stdout[-2000:]
    assert "cannot run ComfyUI (ModuleNotFoundError: No module named 'torchvision_that_is_not_installed')" in local.stdout
    ci = run(CI="true", COMFYUI_SRC=str(fake))
    assert ci.returncode != 0 and ci.stdout.count("skipped in CI although a ComfyUI source is available") >= 4
