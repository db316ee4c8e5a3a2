"""Cost of one analysis of EnSF and Latent-EnSF next to LETKF's: milliseconds per trajectory.

    OMP_NUM_THREADS=1 python benchmarks/bench_score_filters.py [--systems l96,ks] [--N 10,20,40,100] [--B 16]
        [--repeats 5] [--filters letkf,ensf,latent-ensf]
    python benchmarks/bench_score_filters.py --app [--systems l96,ks] [--N 20]
    python benchmarks/bench_score_filters.py --sites [--systems l96,ks] [--N 20] [--B 8] [--cycles 500]

--app measures instead the explorer's cycles per second with the filters of the preset "Why score filters
need a latent space" (LETKF, EnSF, Latent-EnSF), through benchmarks/bench_app.py's update path (engine,
frame, patch serialisation; one CPU core).

--sites measures EnSF's known weakness instead: the RMSE of each filter's analysis mean at the observed and at
the unobserved sites, separately (test streams, filters as `daviz evaluate` builds them, the first 100
cycles left out), next to the climatological standard deviation of one site.

The analysis alone (no forecast), on a forecast ensemble taken from a short twin experiment, B trajectories
at once, best of `repeats`; filters built as `daviz evaluate` builds them (tuned tables, shipped weights).
B=1 is what the explorer pays per cycle and filter; the explorer's budget at 20 cycles/s is 50 ms per cycle
for everything. Numbers depend on the machine and its load: rerun the LETKF row in the same call.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from daviz.experiment import TwinExperiment
from daviz.methods import build
from daviz.systems import get_system


def analysis_ms(system_name: str, name: str, N: int, B: int, repeats: int) -> float:
    system = get_system(system_name)
    f, _ = build(name, system, 1.0, N)
    exp = TwinExperiment(system, 1.0, N, {name: f}, trajectories=B, seed=0)
    exp.run(5)
    rng = np.random.default_rng(0)
    E = f.forecast(exp.states[name], rng)
    y = exp.observation
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        f.analysis(E, y, rng)
        best = min(best, time.perf_counter() - start)
    return 1e3 * best / B


def app_rate(system: str, N: int, cycles: int = 100) -> None:
    """Explorer cycles/s with the preset's filters (bench_app's measurement, on one core)."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_app  # noqa: E402  (pins one core and one thread on import)
    from bokeh.protocol import Protocol

    from daviz.app.presets import PRESETS
    from daviz.app.state import ExplorerState

    filters = PRESETS["Why score filters need a latent space"]["settings"]["filters"]
    state = ExplorerState(system=system, N=N, sigma_y=1.0, filters=filters)
    state.max_seconds_per_advance = 1e9
    state.restart()
    plots, doc, events = bench_app.headless_session(state)
    state.advance(20)
    plots.push_frame()
    before = dict(state.experiment.seconds)
    rows = [(k, bench_app.measure(state, plots, doc, events, cycles, k, Protocol())) for k in (1, 3)]
    n = sum(r["cycles"] for _, r in rows)
    per_filter = ", ".join(f"{k} {1e3 * (state.experiment.seconds[k] - before[k]) / n:.1f} ms"
                           for k in state.experiment.seconds)
    print(f"{system} N={N} [{', '.join(s.label for s in state.runs)}]{' ' + state.message if state.message else ''}: "
          + "; ".join(f"{k} cycle(s)/frame {r['cps']:.1f} cycles/s" for k, r in rows) + f" (engine: {per_filter})",
          flush=True)


def site_errors(system_name: str, N: int, B: int, cycles: int, names=("letkf", "ensf", "latent-ensf")) -> None:
    """RMSE at observed and unobserved sites per filter (one twin experiment: the same truths for all)."""
    system = get_system(system_name)
    filters = {name: build(name, system, 1.0, N)[0] for name in names}
    exp = TwinExperiment(system, 1.0, N, filters, trajectories=B, seed=0)
    observed = np.zeros(system.dim, bool)
    observed[system.obs_idx] = True
    sq = {name: np.zeros(system.dim) for name in filters}
    skip = 100
    for c in range(cycles):
        exp.step()
        if c >= skip:
            for name in filters:
                sq[name] += ((exp.mean(name) - exp.truth) ** 2).mean(0)
    print(f"{system_name} N={N}, {B} trajectories x {cycles} cycles (first {skip} left out); "
          f"climatological std of a site: {np.sqrt(_site_var(system)):.2f}")
    for name in filters:
        e = np.sqrt(sq[name] / (cycles - skip))
        print(f"  {name:12} RMSE observed sites {e[observed].mean():.2f}   unobserved sites {e[~observed].mean():.2f}"
              f"   R-RMSE {np.nanmean(exp.running_rrmse()[name]):.3f}", flush=True)


def _site_var(system) -> float:
    """Variance of one site over 8 free runs x 500 cycles ("tune" stream "climatology", seed 0)."""
    from daviz.seeding import stream

    x = system.initial_truth(stream(0, "tune", "climatology"), 8)
    states = []
    for _ in range(500):
        x = system.step(x)
        states.append(x)
    return float(np.var(np.array(states)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default="l96,ks")
    ap.add_argument("--N", default="10,20,40,100")
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--filters", default="letkf,ensf,latent-ensf")
    ap.add_argument("--app", action="store_true", help="explorer cycles/s with the preset's filters instead")
    ap.add_argument("--sites", action="store_true", help="RMSE at observed / unobserved sites instead")
    ap.add_argument("--cycles", type=int, default=500, help="--sites: cycles per trajectory")
    args = ap.parse_args()
    Ns = [int(n) for n in args.N.split(",")]
    if args.sites:
        for system in args.systems.split(","):
            for n in Ns:
                site_errors(system, n, args.B, args.cycles, args.filters.split(","))
        return
    if args.app:
        for system in args.systems.split(","):
            for n in Ns:
                app_rate(system, n)
        return
    print(f"milliseconds per analysis and trajectory, B={args.B}, best of {args.repeats} (lower is better)")
    head = f"{'system':6} {'filter':12} " + " ".join(f"{'N=' + str(n):>9}" for n in Ns)
    print(head)
    print("-" * len(head))
    for system in args.systems.split(","):
        for name in args.filters.split(","):
            try:
                costs = [analysis_ms(system, name, n, args.B, args.repeats) for n in Ns]
            except Exception as exc:  # e.g. no shipped weights
                print(f"{system:6} {name:12} skipped: {str(exc).splitlines()[0]}")
                continue
            print(f"{system:6} {name:12} " + " ".join(f"{c:9.2f}" for c in costs), flush=True)


if __name__ == "__main__":
    main()
