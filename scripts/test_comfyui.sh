#!/usr/bin/env bash
# The ComfyUI integration tests (tests/comfyui/, tests/test_training_comfyui.py) against a real
# ComfyUI: builds the ComfyUI venv .venv-comfyui (once; rebuilt only when its pins change), makes
# sure a Chromium is on PATH for the browser test (scripts/ensure_chromium.sh: Debian's chromium when
# running as root with apt-get, else a line saying what to install), copies the ComfyUI source to a
# temporary folder, links this project into its custom_nodes/ and runs
# pytest there with COMFYUI_PATH set. Extra arguments go to pytest.
#
# Environment:
#   COMFYUI_SRC      the ComfyUI source to test against (default: ../shared/comfyui beside the repository)
#   PYTHON           the interpreter that creates .venv-comfyui (default: python3)
#   TORCH_INDEX_URL  package index torch and torchvision come from (as in scripts/setup.sh; default: PyPI)
#   CI=true          a ComfyUI test that skips is a failure (tests/conftest.py)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${COMFYUI_SRC:-../shared/comfyui}
if [ ! -f "$SRC/main.py" ]; then
  echo "test_comfyui: no ComfyUI source at $SRC (set COMFYUI_SRC to a ComfyUI checkout)" >&2
  exit 2
fi
PY=${PYTHON:-python3}
VENV=.venv-comfyui
# what ComfyUI's own requirements run with here (README, Development); torch is not this project's pin
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
# the venv's inputs: the pins, ComfyUI's requirements and this project's dependency lists
deps() { sed -n '/^dependencies/,/^]/p;/^\[project.optional-dependencies\]/,/^\[tool/p' pyproject.toml; }
want=$( { echo "$TORCH_PINS $TORCH_INDEX_URL"; cat "$SRC/requirements.txt" requirements.txt; deps; } | sha256sum | cut -c1-16)
stamp=$VENV/.rayflow-setup
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "test_comfyui: building $VENV ($TORCH_PINS, ComfyUI's requirements, this project's; a few minutes)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  pip=("$VENV/bin/python" -m pip install --quiet)
  "${pip[@]}" --upgrade pip >/dev/null 2>&1 || true
  # shellcheck disable=SC2086
  "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} $TORCH_PINS
  "${pip[@]}" -r "$SRC/requirements.txt" $TORCH_PINS
  "${pip[@]}" ".[train]" "pytest>=8" "playwright>=1.40" $TORCH_PINS
  printf '%s' "$want" > "$stamp"
fi
bash scripts/ensure_chromium.sh          # the browser test's Chromium: installed where possible
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$SRC" "$tmp/ComfyUI"
chmod -R u+w "$tmp/ComfyUI"
mkdir -p "$tmp/ComfyUI/custom_nodes"
ln -s "$PWD" "$tmp/ComfyUI/custom_nodes/rayflow"
export COMFYUI_PATH="$tmp/ComfyUI"
"$VENV/bin/python" -m pytest tests/comfyui tests/test_training_comfyui.py "$@"
