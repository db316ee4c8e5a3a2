#!/usr/bin/env bash
# One command that trains every shipped MNMEF model on one GPU within 9 minutes (issue 11 point 2):
# a smoke test that stops with one clear line on any problem, the six pretrains (l96, ks, l63 x sigma_y 1.0,
# 0.7) at once on the GPU (Table C.8 data/batch/LR, wsd schedule fitted to the time left, resumed exactly
# from the trunk states in pretrained/train_state/), fine-tunes for N = 5, 15, 20, 40, 60, 100, a quick
# held-out evaluation, and at most 8 files (< 16 MiB each) in OUT_DIR. Details: daviz/mnmef/gpu.py.
#
#   scripts/train_gpu.sh OUT_DIR [--wheels DIR] [--toy] [options of `python -m daviz.mnmef.gpu run`]
#
# On the developer machine afterwards (repository root; FILES = the folder the files came back to):
#   python -m daviz.mnmef.gpu unpack FILES        # weights -> pretrained/, trunk states, logs -> runs/gpu/
#
# --pairs l96:1.0,ks:1.0: only those models (six workers share one saturated GPU: two get three times the steps).
# --toy: the same code at CI size on the CPU (CUDA features off), well under a minute (tests/test_mnmef_gpu_script.py).
# --wheels DIR: install the Python packages the GPU machine lacks, offline, from wheel files in DIR first.
#   Needed there: array-api-compat (every other import -- numpy, torch, tqdm -- is in its image).
#   Build DIR on a machine with internet (repository root; .whl/ kept out of git):
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl array-api-compat==1.16.0
#   and carry .whl with the run (device tool: carry=[".whl"], command "scripts/train_gpu.sh $OUT --wheels .whl").
# PYTHON (default python3) picks the interpreter.
set -euo pipefail
DAVIZ_GPU_T0=$(date +%s.%N)   # the budget counts from here, Python's start-up included
export DAVIZ_GPU_T0
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: scripts/train_gpu.sh OUT_DIR [--wheels DIR] [--toy] [run options]" >&2
  exit 2
fi
out=$1
shift
wheels=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels=${2:?--wheels needs a folder}; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
PY=${PYTHON:-python3}
if [ -n "$wheels" ]; then
  ls "$wheels"/*.whl > /dev/null 2>&1 || { echo "daviz: error: no .whl files in $wheels" >&2; exit 2; }
  site=${TMPDIR:-/tmp}/daviz-site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec "$PY" -m daviz.mnmef.gpu run --out "$out" ${args[@]+"${args[@]}"}
