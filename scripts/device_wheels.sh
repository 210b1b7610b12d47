#!/usr/bin/env bash
# The wheels the GPU machines' image lacks (diffusers and what it needs beyond that image), fetched
# here into .whl/ (ignored by git) for scripts/device_rerun.sh: Python 3.12 on x86-64 there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
version=$("$PY" -c "import diffusers; print(diffusers.__version__)")      # the version the tests here run
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl "diffusers==$version" importlib_metadata
ls .whl
