"""`daviz evaluate`: run methods on held-out test trajectories and report R-RMSE (table, strict JSON).

Everything that can be refused (output path, memory, a method that cannot be built) is refused before any
trajectory is computed; an optional method (daviz.methods: MNMEF, Latent-EnSF) that cannot be built (no
weights, no torch) is skipped with a message instead.
"""
from __future__ import annotations

import json
import math
import sys
import time

import numpy as np

from .. import methods
from ..artifacts import check_writable, write_text
from ..experiment import TwinExperiment, check_memory
from ..methods import build
from ..metrics import average_rrmse, rrmse_std
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
    if args.json:
        check_writable(args.json, "--json")
    system = get_system(args.system)
    args.cycles = args.cycles or system.test_cycles
    for N in args.N:
        check_memory(system, N, args.trajectories, [methods.get(n).kind for n in args.filters])
    plan = []
    for sigma_y in args.sigma_y:
        for N in args.N:
            filters, params = {}, {}
            for name in args.filters:
                try:
                    filters[name], params[name] = build(name, system, sigma_y, N, args.inflation, args.radius)
                except Exception as exc:  # no/corrupt weights, no torch: skip an optional method, keep the rest
                    if not methods.get(name).optional:
                        raise
                    print(f"skipping {name} at N={N}, sigma_y={sigma_y}: {exc}", file=sys.stderr)
            if filters:
                plan.append((sigma_y, N, filters, params))
    if not plan:
        raise ValueError("nothing to evaluate: every requested filter was skipped")

    rows, started = [], time.perf_counter()
    for sigma_y, N, filters, params in plan:
        block = time.perf_counter()
        exp_cls = TwinExperiment
        if any(methods.get(name).windowed for name in filters):  # also scores their window-end analyses
            from ..variational.experiment import WindowEndExperiment as exp_cls
        exp = exp_cls(system, sigma_y, N, filters, trajectories=args.trajectories, seed=args.seed)
        start = time.perf_counter()
        result = exp.run(args.cycles, progress=not args.quiet)
        total = time.perf_counter() - start
        shared = total - sum(exp.seconds.values())  # truth and observations, shared by all filters
        if not args.quiet:
            now = time.perf_counter()
            print(f"{system.name} N={N} sigma_y={sigma_y}: {args.cycles} cycles x {args.trajectories} trajectories "
                  f"in {now - block:.1f} s (elapsed {now - started:.1f} s)", file=sys.stderr, flush=True)
        for name, values in result.items():
            rows.append({
                "system": system.name, "filter": name, "N": N, "sigma_y": sigma_y,
                "trajectories": args.trajectories, "cycles": args.cycles,
                "rrmse_mean": average_rrmse(values), "rrmse_std": rrmse_std(values),
                "diverged": int(exp.diverged[name].sum()),
                "lost_track": int(exp.lost_track(name, ever=True).sum()),
                "lost_track_window": exp.lost_track_window, "climatology_rrmse": exp.climatology_level,
                "params": params[name],
                "seconds": round(exp.seconds[name] + shared / len(filters), 3),
            })
            if name in getattr(exp, "window_end_names", ()):  # R-RMSE of the window-end analyses, solver figures
                rows[-1].update(exp.variational_report(name))
    print_table(rows)
    if args.json:
        write_json(args.json, rows)
        print(f"wrote {args.json}")
    return rows


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
