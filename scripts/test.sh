#!/usr/bin/env bash
# Quick start, command 2: set up .venv and run the test suite (CPU only, no network).
# Where a ComfyUI source is at hand (COMFYUI_SRC, default ../shared/comfyui) and COMFYUI_PATH is not
# set, the ComfyUI integration tests run against it through scripts/test_comfyui.sh (its own venv);
# with COMFYUI_PATH set, or with test paths or -k among the arguments, everything runs in .venv
# (the ComfyUI tests skip, with the reason, where that venv cannot run ComfyUI).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit $?
COMFY_TESTS=(tests/comfyui tests/test_training_comfyui.py)
src=${COMFYUI_SRC:-../shared/comfyui}
selective=0
for a in "$@"; do
  case "$a" in -k|-m) selective=1 ;; -*) ;; *) selective=1 ;; esac
done
if [ -n "${COMFYUI_PATH:-}" ] || [ ! -f "$src/main.py" ] || [ "$selective" = 1 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# the rest in .venv; COMFYUI_PATH lets the tests that only read ComfyUI's files (its CLIP tokenizer) run
COMFYUI_PATH="$(cd "$src" && pwd)" .venv/bin/python -m pytest "${COMFY_TESTS[@]/#/--ignore=}" "$@"
rc=$?
echo "== ComfyUI integration tests (scripts/test_comfyui.sh, ComfyUI from $src)"
bash scripts/test_comfyui.sh "$@"
rc_comfy=$?
if [ "$rc" -ne 0 ]; then exit "$rc"; fi
exit "$rc_comfy"
