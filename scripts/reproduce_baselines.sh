#!/usr/bin/env bash
# Baseline evaluations on held-out test trajectories (seed 0, "test" streams) with the shipped tuned tables
# (daviz/tuned/*.json, made by scripts/tune_all.sh). Results in results/eval_<system>_s<sigma_y>_baselines.json.
# Sizes as in the README: L96 and L63 64 trajectories x 1500 cycles, KS 64 x 2000.
# Set ONLY=ks (or l96, l63) to run one system.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
ev() { daviz evaluate --seed 0 --quiet "$@"; }
run() { [ -z "${ONLY:-}" ] || [ "$ONLY" = "$1" ]; }
if run ks; then
  for sy in 1.0 0.7; do
    ev --system ks --filters enkf,esrf,letkf,ienkf --N 10,20,40 --sigma-y $sy --trajectories 64 --cycles 2000 \
      --json results/eval_ks_s${sy}_baselines.json
  done
fi
if run l96; then
  for sy in 0.7 1.0; do
    ev --system l96 --filters enkf,esrf,letkf,ienkf --N 5,10,15,20,40,60,100 --sigma-y $sy --trajectories 64 \
      --cycles 1500 --json results/eval_l96_s${sy}_baselines.json
  done
fi
if run l63; then
  for sy in 1.0 0.7; do
    ev --system l63 --filters enkf,esrf,ienkf --N 5,10,15,20,40,60,100 --sigma-y $sy --trajectories 64 \
      --cycles 1500 --json results/eval_l63_s${sy}_baselines.json
  done
fi
