"""Sweeps serially and on a local Dask cluster: wall time, speed-up, and whether the results are identical.

    python benchmarks/bench_sweeps.py [--workers 2] [--cases evaluate,tune] [--trajectories 16] [--cycles 1500]

evaluate: `daviz evaluate --system l96 --N 10,20 --filters enkf,esrf,letkf,ensf --trajectories 16 --cycles 1500`
(8 tasks), in this process and with --workers K; rows compared without their "seconds".
tune: `daviz tune --system l96 --filter enkf --N 5,10,15,20 --dry-run` with the default schedule (4 entries,
each a whole successive halving); entries compared without their timings.
Before each case it measures what the machine gives right now: the same CPU-bound job in one process, then in K at once
("capacity": K for K free cores, 1.0 when the others are busy; no engine beats it).
The cluster's start-up is part of its wall time. "tasks s" adds up the tasks' own wall times (evaluate's
"seconds", tune's entry "seconds"): when it grows on the workers, the tasks ran slower there (a busy machine,
or a slow worker setting), not the engine. The load average before and after each case says how busy the
machine was.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from daviz import cli
from daviz.tuning import tune_many


def _evaluate(args, workers: int, out: Path) -> tuple[list[dict], float]:
    argv = ["evaluate", "--system", "l96", "--N", "10,20", "--filters", "enkf,esrf,letkf,ensf",
            "--trajectories", str(args.trajectories), "--cycles", str(args.cycles), "--quiet", "--json", str(out),
            "--workers", str(workers)]
    with contextlib.redirect_stdout(io.StringIO()):  # the result table: compared below, not shown
        code = cli.main(argv)
    if code != 0:
        raise SystemExit(f"daviz {' '.join(argv)} failed")
    rows = json.loads(out.read_text())
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows], sum(r["seconds"] for r in rows)


def _tune(args, workers: int, out: Path) -> tuple[list[dict], float]:
    results = tune_many("l96", "enkf", [5, 10, 15, 20], [1.0], workers=workers, dry_run=True, directory=out,
                        log=lambda *a, **k: None)
    return ([{k: v for k, v in r.items() if k not in ("cpu_seconds", "seconds")} for r in results],
            sum(r["seconds"] for r in results))


CASES = {"evaluate": _evaluate, "tune": _tune}


def _busy(_=None) -> float:
    """A fixed single-threaded numpy job (small matrix products, as in the filters); its wall time."""
    a = np.random.default_rng(0).standard_normal((40, 40))
    start = time.perf_counter()
    for _ in range(200_000):
        a = np.tanh(a @ a.T * 0.01)
    return time.perf_counter() - start


def capacity(workers: int) -> float:
    """How many times the work of one process K processes get done in the same time (ideal: K)."""
    alone = _busy()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        together = max(pool.map(_busy, range(workers)))
    return workers * alone / together


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cases", default="evaluate,tune")
    ap.add_argument("--trajectories", type=int, default=16, help="evaluate: test trajectories per task")
    ap.add_argument("--cycles", type=int, default=1500, help="evaluate: cycles per trajectory (the L96 test length)")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"niceness {os.nice(0)}")
    head = (f"{'case':9} {'serial s':>9} {f'{args.workers} workers s':>12} {'speed-up':>8} {'identical':>9} "
            f"{'tasks s serial/workers':>22} {'capacity':>8} {'load before/after':>18}")
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            load, free = os.getloadavg()[0], capacity(args.workers)
            times, results, busy = [], [], []
            for workers in (1, args.workers):
                start = time.perf_counter()
                result, seconds = CASES[name](args, workers, Path(tmp) / f"{name}-{workers}.json")
                times.append(time.perf_counter() - start)
                results.append(result)
                busy.append(seconds)
            same = "yes" if results[0] == results[1] else "NO"
            print(f"{name:9} {times[0]:9.1f} {times[1]:12.1f} {times[0] / times[1]:8.2f} {same:>9} "
                  f"{f'{busy[0]:.1f} / {busy[1]:.1f}':>22} {free:8.2f} {f'{load:.2f} / {os.getloadavg()[0]:.2f}':>18}",
                  flush=True)


if __name__ == "__main__":
    main()
