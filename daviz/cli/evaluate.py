"""`daviz evaluate`: run methods on held-out test trajectories and report R-RMSE (table, strict JSON).

Everything that can be refused (output path, memory, a method that cannot be built, --workers/--scheduler) is
refused before any trajectory is computed; an optional method (daviz.methods: MNMEF, Latent-EnSF) that cannot
be built (no weights, no torch) is skipped with a message instead.

Each (sigma_y, N, filter) is one task (`evaluate_filter`), run here one after the other or on a Dask cluster
(daviz.parallel: --workers K, --scheduler ADDRESS) with identical results: only "seconds" differs.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter

import numpy as np

from .. import methods
from ..artifacts import check_writable, write_text
from ..experiment import TwinExperiment, check_memory
from ..methods import build
from ..metrics import average_rrmse, rrmse_std
from ..parallel import check_workers, run_tasks, runs_here
from ..systems import get_system


def strict_json(value):
    """value with NaN/inf as None and numpy numbers as Python ones, for RFC 8259 JSON."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, rows) -> None:
    """Strict JSON, written to a temporary file first so a failure never leaves half a file."""
    write_text(path, json.dumps(strict_json(rows), indent=1, allow_nan=False) + "\n")


def cmd_evaluate(args) -> list[dict]:
    # Everything that can be refused is refused here, before any trajectory is computed.
    workers, scheduler = args.workers, args.scheduler
    check_workers(workers, scheduler)
    if args.json:
        check_writable(args.json, "--json")
    system = get_system(args.system)
    args.cycles = args.cycles or system.test_cycles
    for N in args.N:
        check_memory(system, N, args.trajectories, [methods.get(n).kind for n in args.filters])
    plan = []  # (sigma_y, N, name, tuned settings, (filter, report)): one task each
    for sigma_y in args.sigma_y:
        for N in args.N:
            for name in args.filters:
                try:
                    tuned = methods.tuned_settings(name, system, sigma_y, N)
                    built = build(name, system, sigma_y, N, args.inflation, args.radius, tuned=tuned)
                except Exception as exc:  # no/corrupt weights, no torch: skip an optional method, keep the rest
                    if not methods.get(name).optional:
                        raise
                    print(f"skipping {name} at N={N}, sigma_y={sigma_y}: {exc}", file=sys.stderr)
                    continue
                plan.append((sigma_y, N, name, tuned, built))
    if not plan:
        raise ValueError("nothing to evaluate: every requested filter was skipped")

    # One task per (sigma_y, N, filter): its own twin experiment. Truth, observations and the initial ensemble
    # come from streams that do not depend on which filters run, and each filter has its own noise stream, so
    # a task gives exactly the numbers the filter would get beside the others, wherever it runs. The serial
    # run hands its tasks the filters built above; a worker builds its own from the same settings.
    here = runs_here(workers, scheduler, len(plan))
    tasks = [(system.name, sigma_y, N, name, args.inflation, args.radius, tuned, args.trajectories, args.cycles,
              args.seed, here and not args.quiet, built if here else None)
             for sigma_y, N, name, tuned, built in plan]
    left = Counter((sigma_y, N) for sigma_y, N, *_ in plan)
    spent: Counter = Counter()
    started = time.perf_counter()

    def finished(i, result):  # a block's timing line once its last filter is in
        sigma_y, N = plan[i][:2]
        left[sigma_y, N] -= 1
        spent[sigma_y, N] += result["seconds"]
        if not args.quiet and left[sigma_y, N] == 0:
            print(f"{system.name} N={N} sigma_y={sigma_y}: {args.cycles} cycles x {args.trajectories} trajectories "
                  f"in {spent[sigma_y, N]:.1f} s (elapsed {time.perf_counter() - started:.1f} s)",
                  file=sys.stderr, flush=True)

    rows = run_tasks(evaluate_filter, tasks, workers, scheduler, on_result=finished, progress=not args.quiet,
                     label="evaluate")
    print_table(rows)
    if args.json:
        write_json(args.json, rows)
        print(f"wrote {args.json}")
    return rows


def evaluate_filter(system_name: str, sigma_y: float, N: int, name: str, inflation, radius, tuned: dict,
                    trajectories: int, cycles: int, seed: int, progress: bool = False, built=None) -> dict:
    """The JSON row of one filter at (sigma_y, N) on the test trajectories: a pure function of its arguments.

    `built`: the (filter, report) that `build` gives for these arguments, where the caller has it already.
    "seconds" is the wall time of its run: the filter's cycles with the truth and observations they need.
    """
    system = get_system(system_name)
    f, params = built or build(name, system, sigma_y, N, inflation, radius, tuned=tuned)
    exp_cls = TwinExperiment
    if methods.get(name).windowed:  # also scores its window-end analyses
        from ..variational.experiment import WindowEndExperiment as exp_cls
    exp = exp_cls(system, sigma_y, N, {name: f}, trajectories=trajectories, seed=seed)
    start = time.perf_counter()
    values = exp.run(cycles, progress=progress)[name]
    row = {
        "system": system.name, "filter": name, "N": N, "sigma_y": sigma_y,
        "trajectories": trajectories, "cycles": cycles,
        "rrmse_mean": average_rrmse(values), "rrmse_std": rrmse_std(values),
        "diverged": int(exp.diverged[name].sum()),
        "lost_track": int(exp.lost_track(name, ever=True).sum()),
        "lost_track_window": exp.lost_track_window, "climatology_rrmse": exp.climatology_level,
        "params": params,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if name in getattr(exp, "window_end_names", ()):  # R-RMSE of the window-end analyses, solver figures
        row.update(exp.variational_report(name))
    return row


def _fmt(value, spec: str) -> str:
    return "nan" if value is None or not math.isfinite(value) else format(value, spec)


def print_table(rows: list[dict]) -> None:
    head = (f"{'system':6} {'filter':16} {'N':>4} {'sigma_y':>7} {'R-RMSE mean':>11} {'± std':>7} {'diverged':>8} "
            f"{'lost':>4} {'inflation':>9} {'radius':>6} {'seconds':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        p = r["params"]
        infl = "learned" if "weights" in p else ("-" if p.get("inflation") is None else f"{p['inflation']:.3g}")
        rad = "learned" if "weights" in p else ("off" if p["radius"] is None else f"{p['radius']:.3g}")
        print(f"{r['system']:6} {r['filter']:16} {r['N']:>4} {r['sigma_y']:>7.2f} {_fmt(r['rrmse_mean'], '.4f'):>11} "
              f"{_fmt(r['rrmse_std'], '.4f'):>7} {r['diverged']:>8d} {r['lost_track']:>4d} {infl:>9} {rad:>6} "
              f"{r['seconds']:>8.1f}")
    if any(r["lost_track"] for r in rows):
        r = rows[0]
        print(f"lost: trajectories whose R-RMSE over some {r['lost_track_window']} consecutive cycles exceeded "
              f"climatology ({r['climatology_rrmse']:.3f} for {r['system']}); diverged: non-finite ensemble")
