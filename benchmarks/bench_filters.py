"""Throughput of the numpy baselines: trajectory-cycles per second (forecast + analysis + inflation).

    python benchmarks/bench_filters.py [--cycles 20] [--systems l96,ks] [--N 10,20,40] [--B 64] [--filters ienkf]

Each filter runs with its tuned parameters (daviz/tuned) on B trajectories at once.
"""
from __future__ import annotations

import argparse
import time

from daviz.experiment import TwinExperiment
from daviz.filters import FILTER_NAMES
from daviz.methods import build


def throughput(system: str, name: str, N: int, B: int, cycles: int) -> float:
    f, _ = build(name, system, 1.0, N)
    exp = TwinExperiment(system, 1.0, N, {name: f}, trajectories=B, seed=0)
    exp.step()  # warm-up (caches, first allocation)
    start = time.perf_counter()
    exp.run(cycles)
    return B * cycles / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default="l96,ks")
    ap.add_argument("--N", default="10,20,40")
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--filters", default=",".join(FILTER_NAMES), help="comma-separated subset of the baselines")
    args = ap.parse_args()
    names = args.filters.split(",")
    unknown = sorted(set(names) - set(FILTER_NAMES))
    if unknown:
        ap.error(f"unknown filters {unknown}; choose from {', '.join(FILTER_NAMES)}")
    Ns = [int(n) for n in args.N.split(",")]
    print(f"trajectory-cycles per second, B={args.B}, {args.cycles} cycles (higher is better)")
    head = f"{'system':6} {'filter':7} " + " ".join(f"{'N=' + str(n):>9}" for n in Ns)
    print(head)
    print("-" * len(head))
    for system in args.systems.split(","):
        for name in names:
            rates = [throughput(system, name, n, args.B, args.cycles) for n in Ns]
            print(f"{system:6} {name:7} " + " ".join(f"{r:9.0f}" for r in rates), flush=True)


if __name__ == "__main__":
    main()
