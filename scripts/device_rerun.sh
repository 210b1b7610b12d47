#!/usr/bin/env bash
# The fair benchmark's rerun (scripts/gpu_rerun.sh) on a lent GPU machine, packed for the trip back.
# The GPU image has torch, peft, accelerate and transformers but no diffusers: fetch its wheels here
# first (bash scripts/device_wheels.sh: .whl/, ignored by git) and carry them with the run, with the
# phase-1 cache and the evaluation references of this machine, so that GPU jobs train and are measured
# on the very data of the CPU jobs:
#
#   carry: .whl outputs/quality_fair_2400/data outputs/quality_fair_2400/reference.safetensors
#          outputs/quality_fair_2400/teacher.json outputs/quality_fair_2400/prompts.txt
#          (and outputs/quality_flow_2400/data, .../reference.safetensors once flow jobs ran here)
#   command: bash scripts/device_rerun.sh 500            (seconds for the rerun; packing follows)
#
# Arguments after the seconds go to gpu_rerun.sh (--workers N, --tiny, ...). Every finished job is in
# the archive beside its summary (docs/results/*_runs), so what finished within the time comes back in
# $OUT/results.tgz.* (split in 15 MB parts: cat them | tar xzf - in the repository root) and the next
# run on any machine continues from it. Without $OUT (a CPU try) the parts go to outputs/device_rerun/.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:?usage: bash scripts/device_rerun.sh SECONDS [gpu_rerun.sh options]}
shift
out=${OUT:-outputs/device_rerun}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    && export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} || { echo "device_rerun: the carried wheels did not install" >&2; exit 1; }
fi
[ -x .venv/bin/python ] || export PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
timeout --signal=INT --kill-after=30 "$seconds" bash scripts/gpu_rerun.sh "$@" 2>&1 | tee "$out/gpu_rerun.log"
rc=${PIPESTATUS[0]}
results=docs/results
case " $* " in *" --tiny "*) results=${GPU_RERUN_TINY_DIR:-outputs/gpu_rerun_tiny}/results ;; esac
[ "${GPU_RERUN_TINY:-0}" = 1 ] && results=${GPU_RERUN_TINY_DIR:-outputs/gpu_rerun_tiny}/results
paths=$(ls -d "$results"/quality_fair_2400* "$results"/quality_onestep_fair_7200* "$results"/quality_flow_2400* 2>/dev/null)
if [ -n "$paths" ]; then
  tar czf - $paths | split -b 15m - "$out/results.tgz."
  echo "device_rerun: packed $(echo $paths | wc -w) result paths into $out/results.tgz.* (rerun exit $rc)"
else
  echo "device_rerun: no results to pack (rerun exit $rc)"
fi
exit "$rc"
