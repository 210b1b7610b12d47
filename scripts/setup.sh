#!/usr/bin/env bash
# Create (once) and update the project's virtual environment in .venv with the dev extras:
# torch as pinned by the dev extra in pyproject.toml, diffusers, peft, accelerate, transformers, bitsandbytes (8-bit AdamW), pytest.
#
# Environment:
#   PYTHON           the interpreter that creates .venv (default: python3)
#   TORCH_INDEX_URL  package index torch is installed from, passed to pip as --index-url; default:
#                    unset, i.e. whatever pip picks from PyPI (on Linux x86-64 the CUDA build, several GB).
#                    The CPU-only build (about 1.6 GB for the whole .venv):
#                      TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
#                    pip's own variables (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, ...) apply as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.rayflow-setup
want="${TORCH_INDEX_URL}"   # the stamp holds the index it was set up from (empty: PyPI)
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  if [ -n "$TORCH_INDEX_URL" ]; then
    # the dev extra's torch pin, from that index (a local build tag such as +cpu satisfies the pin)
    torch_pin=$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
    .venv/bin/python -m pip install --quiet --index-url "$TORCH_INDEX_URL" "${torch_pin:-torch}"
  fi
  .venv/bin/python -m pip install --quiet ".[dev]"
  printf '%s' "$want" > "$stamp"
fi
