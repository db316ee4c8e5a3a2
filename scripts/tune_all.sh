#!/usr/bin/env bash
# Regenerates the shipped tuned tables (daviz/tuned/*.json), skipping entries already there.
# Reduced budget for a 2-core machine (tuning trajectories x cycles below); WORKERS=2 uses both cores.
# Order: what the evaluation needs first (sigma_y=1.0; KS at N=10,20,40), then the rest.
set -euo pipefail
W=${WORKERS:-1}
KSI=1.0,1.02,1.05,1.1,1.2,1.3
l96() { daviz tune --skip-existing --workers "$W" --system l96 --trajectories 8 --cycles 300 "$@"; }
ks() { daviz tune --skip-existing --workers "$W" --system ks --trajectories 6 --cycles 300 --inflations $KSI "$@"; }
l63() { daviz tune --skip-existing --workers "$W" --system l63 --trajectories 16 --cycles 500 "$@"; }
for NS in 10,20,40 5,15,60,100; do
  for sy in 1.0 0.7; do
    for f in letkf enkf esrf ienkf; do l96 --filter $f --sigma-y $sy --N $NS; done
    for f in letkf enkf; do ks --filter $f --sigma-y $sy --N $NS --radii 2,4,6,8,12,16; done
    for f in esrf ienkf; do ks --filter $f --sigma-y $sy --N $NS; done
    for f in enkf esrf ienkf; do l63 --filter $f --sigma-y $sy --N $NS; done
  done
done
