"""Importing ComfyUI from a checkout in a test process, on the CPU; a Python that cannot run
ComfyUI (e.g. ``.venv``, without torchvision) skips the calling test module with the reason, which
in CI with a ComfyUI source is a failure (``tests/conftest.py``)."""

import importlib
import sys

import pytest


def import_comfyui(path: str, *modules: str) -> None:
    """Put the ComfyUI checkout ``path`` on ``sys.path``, set it up for the CPU without parsing this
    process's arguments, and import ``modules`` (e.g. ``"comfy.lora"``); skip the module without them."""
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        import comfy.options

        comfy.options.enable_args_parsing(False)
        from comfy.cli_args import args

        args.cpu = True
        for name in modules:
            importlib.import_module(name)
    except ImportError as exc:
        pytest.skip(f"this Python ({sys.executable}) cannot run ComfyUI ({type(exc).__name__}: {exc}); "
                    f"scripts/test_comfyui.sh runs these tests in the ComfyUI venv .venv-comfyui",
                    allow_module_level=True)
