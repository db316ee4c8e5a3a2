#!/usr/bin/env bash
# Re-tunes every shipped table (daviz/tuned/*.json) by successive halving with the `daviz tune` defaults:
# every coarse grid point on 2 trajectories x 200 cycles, the best third on 4 x 300, the best third of those
# plus a finer grid around the optimum on 4 x 500, and the best 6 on 16 fresh tuning trajectories as long as
# the test ones (1500 cycles; KS 2000).
# Each entry records that budget and its CPU seconds; settings where every candidate diverges are listed in
# daviz/tuned/untunable.json. Resumable: --skip-existing leaves entries already tuned this way alone, so
# after a cut-off, rerun the same command and at most the entry in progress is lost.
#   nohup nice -n 10 scripts/tune_all.sh >> results/tune_log.txt 2>&1 &
# One process by default. WORKERS=2 tunes two (N, sigma_y) entries at a time on a local Dask cluster, and
# SCHEDULER=tcp://host:8786 sends the entries to an existing one; the tables come out the same either way
# (each entry is saved as it finishes). Or run its two halves side by side, one per core
# (table writes are locked, so the shared untunable.json stays whole):
#   nohup nice -n 10 scripts/tune_all.sh classic >> results/tune_log.txt 2>&1 &
#   nohup nice -n 10 scripts/tune_all.sh ienkf >> results/tune_log_ienkf.txt 2>&1 &
# "classic": L96 LETKF (sigma_y=0.7 is the fidelity issue's acceptance check), the cheaper L96 and L63
# tables, then KS LETKF/EnKF/ESRF. "ienkf": the global IEnKF on L63, L96, KS; up to 11 forecasts a cycle
# make it as expensive as the whole other half.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
WHERE=(--workers "${WORKERS:-1}")
if [ -n "${SCHEDULER:-}" ]; then WHERE=(--scheduler "$SCHEDULER"); fi
NS=${NS:-5,10,15,20,40,60,100}
PART=${1:-all}
case "$PART" in all|classic|ienkf) ;; *) echo "usage: $0 [all|classic|ienkf]" >&2; exit 2 ;; esac
tune() { daviz tune --skip-existing "${WHERE[@]}" --N "$NS" "$@"; }
if [ "$PART" != ienkf ]; then
for sy in 0.7 1.0; do tune --system l96 --filter letkf --sigma-y $sy; done
for f in enkf esrf; do
  for sy in 1.0 0.7; do tune --system l96 --filter $f --sigma-y $sy; done
done
# L63 is cheap (seconds per entry): its final round uses 64 trajectories, since a loss of track
# once in ~10 runs (EnKF, sigma_y=0.7) hides in 16.
for f in enkf esrf; do
  for sy in 1.0 0.7; do tune --system l63 --filter $f --sigma-y $sy --trajectories 64; done
done
for f in letkf enkf esrf; do
  for sy in 1.0 0.7; do tune --system ks --filter $f --sigma-y $sy; done
done
fi
if [ "$PART" != classic ]; then
for sy in 1.0 0.7; do tune --system l63 --filter ienkf --sigma-y $sy --trajectories 64; done
for s in l96 ks; do
  for sy in 1.0 0.7; do tune --system $s --filter ienkf --sigma-y $sy; done
done
fi
