#!/usr/bin/env bash
# Regenerate the result tables and figures (R-RMSE vs N, relative improvement (5.4), std (5.8), learning
# curve) from the evaluation JSON in results/ into results/report/ (issue 11 point 6). Files named in
# results/superseded.json are left out (e.g. runs on a system definition since corrected).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m daviz.mnmef.report --results results --out results/report "$@"
