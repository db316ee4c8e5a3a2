"""IEnKF cost against its stopping rule: model forecasts per trajectory-cycle, CPU seconds and R-RMSE.

    python benchmarks/bench_ienkf.py [--systems l96,ks] [--N 20,40] [--B 16] [--cycles 200]

"relative" is the shipped rule, DAPPER's wtol: stop once |dw|^2 < 1e-5 N. "absolute" is the rule it
replaced, |dw| < 1e-5 (tol = 1e-10 / N in the relative form). Both run the tuned inflation on the same
B test trajectories, timed after 100 cycles of spin-up, on one thread.
"""
from __future__ import annotations

import argparse
import os
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads BLAS
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

from daviz.experiment import TwinExperiment  # noqa: E402
from daviz.methods import build  # noqa: E402


def measure(system: str, N: int, tol: float, B: int, cycles: int) -> tuple[float, float, float]:
    f, _ = build("ienkf", system, 1.0, N, tol=tol)  # the tuned inflation
    exp = TwinExperiment(system, 1.0, N, {"ienkf": f}, trajectories=B, seed=0)
    exp.run(100)
    before, start = f.forecasts, time.process_time()
    rrmse = exp.run(cycles)["ienkf"]
    return (f.forecasts - before) / (B * cycles), time.process_time() - start, float(np.nanmean(rrmse))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default="l96,ks")
    ap.add_argument("--N", default="20,40")
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--cycles", type=int, default=200)
    args = ap.parse_args()
    print(f"IEnKF, sigma_y=1.0, B={args.B}, {args.cycles} cycles after 100 of spin-up")
    head = f"{'system':6} {'N':>4} {'rule':9} {'forecasts/cycle':>15} {'CPU s':>7} {'R-RMSE':>7}"
    print(head)
    print("-" * len(head))
    for system in args.systems.split(","):
        for N in (int(n) for n in args.N.split(",")):
            for rule, tol in (("absolute", 1e-10 / N), ("relative", 1e-5)):
                per_cycle, cpu, rrmse = measure(system, N, tol, args.B, args.cycles)
                print(f"{system:6} {N:4d} {rule:9} {per_cycle:15.2f} {cpu:7.1f} {rrmse:7.3f}", flush=True)


if __name__ == "__main__":
    main()
