#!/usr/bin/env bash
# Regenerates the shipped tuned tables (daviz/tuned/*.json), skipping entries already there.
# Reduced budget for a 2-core machine (tuning trajectories x cycles below); WORKERS=2 uses both cores.
set -euo pipefail
W=${WORKERS:-1}
NS=5,10,15,20,40,60,100
KSI=1.0,1.02,1.05,1.1,1.2,1.3
tune() { daviz tune --skip-existing --workers "$W" --N $NS "$@"; }
for sy in 1.0 0.7; do
  for f in letkf enkf esrf ienkf; do tune --system l96 --filter $f --sigma-y $sy --trajectories 8 --cycles 300; done
  for f in letkf enkf; do tune --system ks --filter $f --sigma-y $sy --trajectories 6 --cycles 300 --inflations $KSI --radii 2,4,6,8,12,16; done
  for f in esrf ienkf; do tune --system ks --filter $f --sigma-y $sy --trajectories 6 --cycles 300 --inflations $KSI; done
  for f in enkf esrf ienkf; do tune --system l63 --filter $f --sigma-y $sy --trajectories 16 --cycles 500; done
done
