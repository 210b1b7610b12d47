#!/usr/bin/env bash
# Create (once) and update the project's virtual environment in .venv with the dev extras:
# a CPU build of torch, diffusers, peft, accelerate, transformers, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.rayflow-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet ".[dev]"
  touch "$stamp"
fi
