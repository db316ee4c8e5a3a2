#!/usr/bin/env bash
# Regenerates the shipped tuned tables (daviz/tuned/*.json). Reduced budget for a 2-core machine:
# tuning trajectories x cycles below; set WORKERS=2 to use both cores.
set -euo pipefail
W=${WORKERS:-1}
NS=5,10,15,20,40,60,100
for sy in 1.0 0.7; do
  daviz tune --system l96 --filter letkf --N $NS --sigma-y $sy --trajectories 8 --cycles 300 --workers $W
  daviz tune --system l96 --filter enkf  --N $NS --sigma-y $sy --trajectories 8 --cycles 300 --workers $W
  daviz tune --system l96 --filter esrf  --N $NS --sigma-y $sy --trajectories 8 --cycles 300 --workers $W
  daviz tune --system l96 --filter ienkf --N $NS --sigma-y $sy --trajectories 8 --cycles 300 --workers $W
  for f in enkf esrf ienkf; do
    daviz tune --system l63 --filter $f --N $NS --sigma-y $sy --trajectories 16 --cycles 500 --workers $W
  done
done
KSI=1.0,1.02,1.05,1.1,1.2,1.3
for sy in 1.0 0.7; do
  daviz tune --system ks --filter letkf --N $NS --sigma-y $sy --trajectories 6 --cycles 300 --workers $W --inflations $KSI --radii 2,4,6,8,12,16
  daviz tune --system ks --filter enkf  --N $NS --sigma-y $sy --trajectories 6 --cycles 300 --workers $W --inflations $KSI --radii 2,4,6,8,12,16
  daviz tune --system ks --filter esrf  --N $NS --sigma-y $sy --trajectories 6 --cycles 300 --workers $W --inflations $KSI
  daviz tune --system ks --filter ienkf --N $NS --sigma-y $sy --trajectories 6 --cycles 300 --workers $W --inflations $KSI
done
