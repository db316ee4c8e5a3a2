#!/usr/bin/env bash
# Reduced-budget tuned tables for what scripts/tune_all.sh has not reached yet: LETKF and EnKF on L96 and KS
# at sigma_y 0.7 and 1.0 and every paper N, 4 trajectories x 200 cycles on a small grid. Each entry records
# its budget (trajectories, cycles, grid_points) in daviz/tuned/*.json; entries already there are kept.
set -euo pipefail
W=${WORKERS:-1}
for sy in 0.7 1.0; do
  for f in ${FILTERS:-letkf enkf}; do
    daviz tune --skip-existing --workers "$W" --system l96 --filter $f --sigma-y $sy --N 10,20,40,5,15,60,100 \
      --trajectories 4 --cycles 200 --inflations 1.02,1.05,1.1,1.2 --radii 1,2,3,4,6
    daviz tune --skip-existing --workers "$W" --system ks --filter $f --sigma-y $sy --N 10,20,40,5,15,60,100 \
      --trajectories 4 --cycles 200 --inflations 1.0,1.05,1.1,1.2 --radii 4,8,16
  done
done
# The unlocalized filters at sigma_y=0.7, N=10,20,40 (inflation only; grid points where every trajectory
# diverged leave no entry, e.g. ESRF on L96 at N=10 and 20).
if [ -z "${FILTERS:-}" ]; then
  for f in esrf ienkf; do
    daviz tune --skip-existing --workers "$W" --system l96 --filter $f --sigma-y 0.7 --N 10,20,40 --trajectories 4 --cycles 200
    daviz tune --skip-existing --workers "$W" --system ks --filter $f --sigma-y 0.7 --N 10,20,40 --trajectories 4 --cycles 200 \
      --inflations 1.0,1.05,1.1,1.2
  done
fi
