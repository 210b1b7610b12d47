#!/usr/bin/env bash
# The fair benchmark's whole rerun (issue 37) on one GPU, in order, from the repository root:
#   (a) the sweep, seeds 0-2, 2400 steps: every arm's learning rate (ray, anchor0.5, no_ray at 1e-3 and 3e-4;
#       LCM with the L2 loss at 1e-5 to 1e-3 and with the pseudo-Huber loss at 1e-4 to 1e-3), chosen on the
#       held-out set -> docs/results/quality_fair_2400.json (lr_selection)
#   (b) the headline: each arm at the setting (a) chose, and no_ts, seeds 0-4 (same out and results);
#       its Holm family: anchor0.5 against ray, no_ray and lcm
#   (c) LCM with the EMA target (0.95), seeds 0-2 (same out and results); then the other diagnosis arms of
#       item 4 (sigma0.03, rank64: sigma-ball, capacity), seeds 0-2
#   (d) the one-step preset against the tuned LCM (the setting (a) chose) at the preset's budget: 72 x 64
#       trajectories, 7200 steps, seeds 0-3   -> docs/results/quality_onestep_fair_7200.json
#   (e) the flow-matching proxy (issue 33): ray, anchor0.5, no_ray, no_ts, seeds 0-2, 2400 steps -> docs/results/quality_flow_2400.json,
#       then its LCM-LoRA on the flow ODE (bench/lcm_flow.py) at both losses and 1e-4, 3e-4, 1e-3, seeds 0-2 (same
#       summary; its Holm family: anchor0.5 against ray, no_ray and lcm) (skipped where proxy/weights/flow_teacher is absent)
# Every stage is `python -m bench.quality --seeds ...`: a finished job (in <out>/runs or the archive beside
# the results) is not trained again and a killed one resumes from its checkpoint, so the same command
# continues where it stopped; the summary is rewritten after every job. No network is needed.
#
#   bash scripts/gpu_rerun.sh [--workers N] [--device auto|cpu|cuda] [--no-compile] [--tiny] [--dry-run]
#
# --workers N (default 8): jobs at a time, sharing the one GPU (bench/device.py).
# --tiny (or GPU_RERUN_TINY=1): everything shrunk (1 seed, 2-3 training steps, 3 captions, 1-2 trajectories
#   per caption, 2 evaluation images per caption, eager step) so that it runs on a CPU in minutes; it writes
#   under $GPU_RERUN_TINY_DIR (default outputs/gpu_rerun_tiny), never docs/results.
# --dry-run: print each stage's command (stages b and d with the choices as they stand) and run nothing.
# Python: $PYTHON, else .venv/bin/python, else python3 (it needs torch, diffusers, peft, accelerate).
set -euo pipefail
cd "$(dirname "$0")/.."

workers=8 tiny=${GPU_RERUN_TINY:-0} dry=0 opts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers=$2; shift 2 ;;
    --device) opts+=(--device "$2"); shift 2 ;;
    --no-compile) opts+=(--no-compile); shift ;;
    --tiny) tiny=1; shift ;;
    --dry-run) dry=1; shift ;;
    *) echo "usage: bash scripts/gpu_rerun.sh [--workers N] [--device auto|cpu|cuda] [--no-compile] [--tiny] [--dry-run]" >&2
       exit 2 ;;
  esac
done
PY=${PYTHON:-}
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python; } || PY=python3

if [ "$tiny" = 1 ]; then
  out=${GPU_RERUN_TINY_DIR:-outputs/gpu_rerun_tiny} res=${GPU_RERUN_TINY_DIR:-outputs/gpu_rerun_tiny}/results
  steps=2 one_steps=3 seeds5="0" seeds3="0" seeds4="0"
  sets=(--captions 3 --seeds-per-prompt 1 --eval-per-caption 2) one_sets=(--captions 3 --seeds-per-prompt 2 --eval-per-caption 2)
  opts+=(--no-compile)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}    # its tensors are too small for more: threads only contend
else
  out=outputs res=docs/results steps=2400 one_steps=7200 seeds5="0 1 2 3 4" seeds3="0 1 2" seeds4="0 1 2 3"
  sets=() one_sets=(--seeds-per-prompt 64)
fi
fair=(--train-steps "$steps" --out "$out/quality_fair_2400" --results "$res/quality_fair_2400.json"
      --holm-family anchor0.5:ray,no_ray,lcm "${sets[@]}")
flow=(--train-steps "$steps" --out "$out/quality_flow_2400" --results "$res/quality_flow_2400.json"
      --holm-family anchor0.5:ray,no_ray,lcm "${sets[@]}")
flow_lcm=lcm,lcm_lr3e-4,lcm_lr1e-3,lcm_huber,lcm_huber_lr3e-4,lcm_huber_lr1e-3
[ "$tiny" = 1 ] && flow_lcm=lcm,lcm_huber      # both losses: enough to check the stage

if [ "$dry" = 0 ]; then
  "$PY" - <<'PYEOF'          # what it runs on, before anything starts
import torch, diffusers, peft, accelerate  # noqa: F401  (a missing package stops here, not after an hour)
print("gpu_rerun: torch", torch.__version__, "on", torch.cuda.get_device_name() if torch.cuda.is_available()
      else "the CPU (no CUDA device)", flush=True)
PYEOF
  echo "gpu_rerun: $workers workers, tiny=$tiny; wall time on an H100 not yet measured: per-stage times follow"
fi

stage() {     # stage NAME ARGS...: one bench.quality run, timed
  local name=$1 t0=$SECONDS
  shift
  echo "== $(date -u +%H:%M:%S) stage $name: python -m bench.quality --workers $workers ${opts[*]:+${opts[*]} }$*"
  [ "$dry" = 1 ] && return 0
  "$PY" -m bench.quality --workers "$workers" "${opts[@]}" "$@"
  echo "== stage $name done in $((SECONDS - t0)) s ($SECONDS s since the start)"
}

# (a) every arm's learning rate (and LCM's loss) on the held-out set; L2 LCM at 1e-4 (lcm) is a candidate too
stage a-sweep --seeds $seeds3 --variants ray,anchor0.5,no_ray,lcm,ray_lr3e-4,anchor0.5_lr3e-4,no_ray_lr3e-4,lcm_lr1e-5,lcm_lr3e-5,lcm_lr3e-4,lcm_lr1e-3,lcm_huber,lcm_huber_lr3e-4,lcm_huber_lr1e-3 "${fair[@]}"
pick() {     # pick ARM...: the setting the sweep chose for each arm (the summary's lr_selection; the arm itself where none was made)
  "$PY" -c "import json, os, sys; p = sys.argv[1]; d = json.load(open(p)) if os.path.isfile(p) else {}
print(','.join(d.get('lr_selection', {}).get(a, {}).get('chosen', a) for a in sys.argv[2:]))" "$res/quality_fair_2400.json" "$@"
}
chosen=$(pick ray no_ray anchor0.5 lcm) lcm=$(pick lcm)
echo "gpu_rerun: the settings the held-out sweep chose (ray, no_ray, anchor0.5, lcm): $chosen"
stage b-headline --seeds $seeds5 --variants "$chosen,no_ts" "${fair[@]}"
stage c-lcm-ema --seeds $seeds3 --variants lcm_ema "${fair[@]}"
# why ray sits far from the teacher's distribution (issue 37 item 4; the start point, anchor0.5, is in stage a):
# the sigma-ball, capacity
stage c2-diagnosis --seeds $seeds3 --variants sigma0.03,rank64 "${fair[@]}"

stage d-one-step --seeds $seeds4 --variants "one_step,$lcm" --train-steps "$one_steps" "${one_sets[@]}" \
  --out "$out/quality_onestep_fair_7200" --results "$res/quality_onestep_fair_7200.json" --holm-family "one_step:$lcm"

# (e) issue 33: the flow-matching proxy's verdict on the same yardstick, once its teacher is committed
if [ -f proxy/weights/flow_teacher/model_index.json ]; then
  stage e-flow --proxy flow --seeds $seeds3 --variants ray,anchor0.5,no_ray,no_ts "${flow[@]}"
  # its consistency baseline (bench/lcm_flow.py), tuned as the VP one: both losses at 1e-4, 3e-4, 1e-3 on held-out noise
  stage e2-flow-lcm --proxy flow --seeds $seeds3 --variants "$flow_lcm" "${flow[@]}"
else
  echo "gpu_rerun: proxy/weights/flow_teacher is absent (python -m proxy.teacher_flow makes it): stage e skipped"
fi
[ "$dry" = 1 ] || echo "gpu_rerun: all stages done in $SECONDS s"
