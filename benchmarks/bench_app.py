"""Cycles per second of the explorer's update path, without a browser, on one CPU core.

    python benchmarks/bench_app.py [--system l96] [--N 20] [--cycles 200]

What one cycle costs in the served app: the engine step of every running filter (`advance`), the
frame of the cycles since the last one (`ExplorerPlots.push_frame`: new Hovmöller columns as 8-bit
codes, streamed line points), and the serialisation of the resulting document patch into the
websocket message the server would send (Bokeh's PATCH-DOC protocol message, binary buffers
included). The app sends a frame whenever the browser has drawn the last one, so a frame carries
one cycle when the browser keeps up and several when it does not; rows for 1 and 3 show both.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# One core: no BLAS/OpenMP thread pools, pinned to CPU 0 (set before numpy/torch load).
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[var] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bokeh.document import Document  # noqa: E402
from bokeh.protocol import Protocol  # noqa: E402

from daviz.app.plots import ExplorerPlots  # noqa: E402
from daviz.app.runs import RUN_LABELS, RUNS  # noqa: E402
from daviz.app.state import ExplorerState  # noqa: E402

# The paper's filters (EnKF, ESRF, LETKF, IEnKF, MNMEF): the explorer's default line-up. The score-based and
# variational runs have their own benchmarks (bench_score_filters.py, bench_variational.py).
PAPER_BASES = ("enkf", "esrf", "letkf", "ienkf", "mnmef")
ALL = [label for label in RUN_LABELS if "(" not in label and RUNS[label].base in PAPER_BASES]


def headless_session(state: ExplorerState) -> tuple[ExplorerPlots, Document, list]:
    """The explorer's plots in a Bokeh document with no browser; `events` collects what a frame would send."""
    plots = ExplorerPlots(state)
    doc = Document()
    doc.add_root(plots.main)
    doc.add_root(plots.side)
    events: list = []
    doc.on_change(events.append)
    return plots, doc, events


def measure(state: ExplorerState, plots: ExplorerPlots, doc: Document, events: list, cycles: int,
            per_push: int, protocol: Protocol) -> dict:
    t_engine = t_update = t_patch = 0.0
    patch_bytes = 0
    pushes = max(1, cycles // per_push)
    for _ in range(pushes):
        t0 = time.perf_counter()
        state.advance(per_push)
        t1 = time.perf_counter()
        events.clear()
        plots.acked = plots.seq  # the browser has drawn the last frame
        plots.push_frame()
        t2 = time.perf_counter()
        msg = protocol.create("PATCH-DOC", list(events))
        patch_bytes += len(msg.content_json) + sum(len(b.to_bytes()) for b in msg.buffers)
        t3 = time.perf_counter()
        t_engine, t_update, t_patch = t_engine + t1 - t0, t_update + t2 - t1, t_patch + t3 - t2
    n = pushes * per_push
    total = t_engine + t_update + t_patch
    return {"cycles": n, "engine_ms": 1e3 * t_engine / n, "update_ms": 1e3 * t_update / n,
            "patch_ms": 1e3 * t_patch / n, "cps": n / total, "kb_per_push": patch_bytes / pushes / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", default="l96", choices=["l63", "l96", "ks"])
    ap.add_argument("--N", type=int, default=20)
    ap.add_argument("--sigma-y", type=float, default=1.0)
    ap.add_argument("--cycles", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

    state = ExplorerState(system=args.system, N=args.N, sigma_y=args.sigma_y, filters=ALL)
    state.max_seconds_per_advance = 1e9
    deadline = time.monotonic() + 300
    while state.mnmef_status.startswith("MNMEF: loading") and time.monotonic() < deadline:
        time.sleep(0.2)  # the weights load in a background thread, as in the served app
        state.restart()
    running = [s.label for s in state.runs]
    plots, doc, events = headless_session(state)
    protocol = Protocol()
    state.advance(args.warmup)
    plots.push_frame()  # the first frame fills the window; the rows measure the steady state

    print(f"# explorer update path: {state.sys.title}, N={args.N}, σ_y={args.sigma_y:g}, one CPU core")
    print(f"# filters running: {', '.join(running)}")
    if state.mnmef_status:
        print(f"# {state.mnmef_status}")
    print(f"# window {state.window} cycles; {len(plots.images)} Hovmöller images, "
          f"{len(plots.series)} band plots; {args.cycles} cycles per row after {args.warmup} warm-up cycles")
    seconds_before = dict(state.experiment.seconds)
    rows = [(k, measure(state, plots, doc, events, args.cycles, k, protocol)) for k in (1, 3)]
    seconds = {k: state.experiment.seconds[k] - seconds_before[k] for k in running}
    engine_cycles = sum(r["cycles"] for _, r in rows)

    print()
    print("| cycles/frame | engine ms/cycle | frame build ms/cycle | patch serialise ms/cycle | KB/frame | cycles/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k, r in rows:
        print(f"| {k} | {r['engine_ms']:.1f} | {r['update_ms']:.1f} | {r['patch_ms']:.1f} | "
              f"{r['kb_per_push']:.0f} | **{r['cps']:.1f}** |")
    print()
    print("| filter | engine ms/cycle |")
    print("|---|---:|")
    for label in running:
        print(f"| {label} | {1e3 * seconds[label] / engine_cycles:.2f} |")
    worst = min(r["cps"] for _, r in rows)
    print()
    print(f"target ≥ 20 cycles/s: {'met' if worst >= 20 else 'NOT met'} (worst row {worst:.1f} cycles/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
