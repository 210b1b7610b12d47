#!/usr/bin/env bash
# Quick start, command 1: set up .venv and run the main job on the embedded proxy default:
# build the proxy data, load the committed proxy teacher, distill a RayFlow LoRA through
# training.distill, evaluate, and write LoRA + sample grid + metrics to outputs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m proxy.demo "$@"
