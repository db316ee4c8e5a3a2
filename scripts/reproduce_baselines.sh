#!/usr/bin/env bash
# Reproduces the baseline figures reported on the engine issue, on one core of a 2-core machine:
#   1. tuned tables for Lorenz '63 (no localization) at sigma_y 1.0 and 0.7, all seven N;
#   2. L96 sigma_y=1.0, N=10,20,40: all four filters on 64 test trajectories x 1500 cycles;
#   3. KS sigma_y=1.0, N=10,20,40: reduced tuning (4 trajectories x 200 cycles, 4x4 grid), then a reduced
#      evaluation (16 trajectories x 2000 cycles; IEnKF 8 x 1000) because a KS cycle costs ~10x an L96 one.
# Results land in runs/eval_*.json (and the tables in daviz/tuned/). WORKERS=2 uses both cores.
set -euo pipefail
W=${WORKERS:-1}
mkdir -p runs
for sy in 1.0 0.7; do
  for f in enkf esrf ienkf; do
    daviz tune --skip-existing --workers "$W" --system l63 --filter $f --sigma-y $sy --N 5,10,15,20,40,60,100 \
      --trajectories 16 --cycles 500
  done
done
daviz evaluate --system l96 --filters enkf,esrf,letkf,ienkf --N 10,20,40 --sigma-y 1.0 \
  --trajectories 64 --cycles 1500 --seed 0 --json runs/eval_l96_s1.0.json
for f in letkf enkf; do
  daviz tune --skip-existing --workers "$W" --system ks --filter $f --sigma-y 1.0 --N 10,20,40 \
    --trajectories 4 --cycles 200 --inflations 1.0,1.05,1.1,1.2 --radii 2,4,8,16
done
for f in esrf ienkf; do
  daviz tune --skip-existing --workers "$W" --system ks --filter $f --sigma-y 1.0 --N 10,20,40 \
    --trajectories 4 --cycles 200 --inflations 1.0,1.05,1.1,1.2
done
daviz evaluate --system ks --filters enkf,esrf,letkf --N 10,20,40 --sigma-y 1.0 \
  --trajectories 16 --cycles 2000 --seed 0 --json runs/eval_ks_s1.0.json
daviz evaluate --system ks --filters ienkf --N 10,20,40 --sigma-y 1.0 \
  --trajectories 8 --cycles 1000 --seed 0 --json runs/eval_ks_s1.0_ienkf.json

