#!/usr/bin/env bash
# Quick start, command 2: set up .venv and run the test suite (CPU only, no network, no ComfyUI).
# ComfyUI integration tests run too when COMFYUI_PATH points at a ComfyUI checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
