"""The `daviz` command: simulate, tune, evaluate (and train / finetune from daviz.mnmef)."""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .experiment import TwinExperiment
from .filters import FILTER_NAMES, make_filter
from .metrics import average_rrmse, rrmse_std
from .systems import SYSTEM_NAMES, get_system
from .tuning import grid_for, is_tuned, save_tuned, sweep, tuned_params

PAPER_N = (5, 10, 15, 20, 40, 60, 100)
MNMEF_VARIANTS = {"mnmef": "auto", "mnmef-pretrained": "pretrained", "mnmef-finetuned": "finetuned"}


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"ensemble sizes must be integers >= 2, got {text!r}")
    return values


def float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
    return values


def filter_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    known = set(FILTER_NAMES) | {"kalman"} | set(MNMEF_VARIANTS)
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown filter(s) {bad}; choose from {sorted(known)}")
    return names


def build_filter(name, system, sigma_y, N, inflation=None, radius=None):
    """A filter with tuned parameters unless overridden; returns (filter, params-for-report)."""
    if name in MNMEF_VARIANTS:
        from .mnmef.pretrained import load_filter  # torch only when asked for

        f, info = load_filter(system.name, sigma_y, N, variant=MNMEF_VARIANTS[name])
        return f, {"weights": info}
    tuned = tuned_params(system.name, name, N, sigma_y)
    infl = tuned["inflation"] if inflation is None else inflation
    rad = tuned["radius"] if radius is None else (None if radius <= 0 or np.isinf(radius) else radius)
    f = make_filter(name, system, sigma_y, inflation=infl, radius=rad)
    return f, {**f.params, "source": tuned["source"] if inflation is None and radius is None else "command line"}


def cmd_evaluate(args) -> list[dict]:
    system = get_system(args.system)
    rows = []
    for sigma_y in args.sigma_y:
        for N in args.N:
            filters, params = {}, {}
            for name in args.filters:
                try:
                    filters[name], params[name] = build_filter(name, system, sigma_y, N, args.inflation, args.radius)
                except ValueError as exc:  # e.g. no shipped weights for this N: skip it, keep the rest
                    if name not in MNMEF_VARIANTS:
                        raise
                    print(f"skipping {name} at N={N}, sigma_y={sigma_y}: {exc}", file=sys.stderr)
            if not filters:
                continue
            exp = TwinExperiment(system, sigma_y, N, filters, trajectories=args.trajectories, seed=args.seed)
            start = time.perf_counter()
            result = exp.run(args.cycles, progress=not args.quiet)
            total = time.perf_counter() - start
            shared = total - sum(exp.seconds.values())  # truth and observations, shared by all filters
            for name, values in result.items():
                rows.append({
                    "system": system.name, "filter": name, "N": N, "sigma_y": sigma_y,
                    "trajectories": args.trajectories, "cycles": args.cycles,
                    "rrmse_mean": average_rrmse(values), "rrmse_std": rrmse_std(values),
                    "diverged": int(exp.diverged[name].sum()), "params": params[name],
                    "seconds": round(exp.seconds[name] + shared / len(filters), 3),
                })
    print_table(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
        print(f"wrote {args.json}")
    return rows


def print_table(rows: list[dict]) -> None:
    head = f"{'system':6} {'filter':16} {'N':>4} {'sigma_y':>7} {'R-RMSE mean':>11} {'± std':>7} {'diverged':>8} {'inflation':>9} {'radius':>6} {'seconds':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        p = r["params"]
        infl = "learned" if "weights" in p else f"{p['inflation']:.3g}"
        rad = "learned" if "weights" in p else ("off" if p["radius"] is None else f"{p['radius']:.3g}")
        print(f"{r['system']:6} {r['filter']:16} {r['N']:>4} {r['sigma_y']:>7.2f} {r['rrmse_mean']:>11.4f} "
              f"{r['rrmse_std']:>7.4f} {r['diverged']:>8d} {infl:>9} {rad:>6} {r['seconds']:>8.1f}")


def cmd_tune(args) -> None:
    from .tuning import parse_rounds, tune_many  # successive halving; the logic lives in daviz.tuning

    tune_many(args.system, args.filter, args.N, args.sigma_y, rounds=parse_rounds(args.rounds),
              final=(args.trajectories, args.cycles), keep=args.keep, finalists=args.finalists,
              refine=not args.no_refine, inflations=args.inflations, radii=args.radii, seed=args.seed,
              workers=args.workers, dry_run=args.dry_run, skip_existing=args.skip_existing)


def cmd_simulate(args) -> None:
    system = get_system(args.system)
    exp = TwinExperiment(system, args.sigma_y, 2, {}, trajectories=args.trajectories, seed=args.seed)
    truth, obs = [exp.truth], []
    for _ in range(args.cycles):
        exp.step()
        truth.append(exp.truth)
        obs.append(exp.observation)
    np.savez_compressed(args.out, truth=np.stack(truth), observations=np.stack(obs), obs_idx=system.obs_idx,
                        dt_obs=system.dt_obs, sigma_y=args.sigma_y)
    print(f"wrote {args.out}: truth {np.stack(truth).shape} (cycle, trajectory, d), observations {np.stack(obs).shape}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="daviz", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, N_default="10,20"):
        sp.add_argument("--system", choices=SYSTEM_NAMES, default="l96")
        sp.add_argument("--N", type=int_list, default=int_list(N_default), help="ensemble sizes, e.g. 10,20")
        sp.add_argument("--sigma-y", type=float_list, default=[1.0], help="observation noise std(s)")
        sp.add_argument("--seed", type=int, default=0)

    ev = sub.add_parser("evaluate", help="run filters on held-out test trajectories and report R-RMSE")
    common(ev)
    ev.add_argument("--filters", type=filter_list, default=list(FILTER_NAMES))
    ev.add_argument("--trajectories", type=int, default=64)
    ev.add_argument("--cycles", type=int, default=1500)
    ev.add_argument("--inflation", type=float, help="override the tuned inflation")
    ev.add_argument("--radius", type=float, help="override the tuned radius (0 or inf: no localization)")
    ev.add_argument("--json", help="write the results as a JSON list")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(run=cmd_evaluate)

    tu = sub.add_parser("tune", help="successive-halving search of inflation x radius on tuning trajectories")
    common(tu, ",".join(map(str, PAPER_N)))
    tu.add_argument("--filter", choices=FILTER_NAMES, default="letkf")
    tu.add_argument("--trajectories", type=int, default=16, help="final round: trajectories per point")
    tu.add_argument("--cycles", type=int, default=1000, help="final round: cycles per trajectory")
    tu.add_argument("--rounds", help="earlier rounds as TRAJxCYCLES list, e.g. 4x250,8x500 (first: every point)")
    tu.add_argument("--keep", type=float, help="each round keeps the best 1/keep of the points (default 3)")
    tu.add_argument("--finalists", type=int, help="points that reach the final round (default 3)")
    tu.add_argument("--no-refine", action="store_true", help="skip the finer grid around the optimum")
    tu.add_argument("--inflations", type=float_list)
    tu.add_argument("--radii", type=float_list)
    tu.add_argument("--workers", type=int, help="processes (default: all cores)")
    tu.add_argument("--dry-run", action="store_true", help="print the optimum without writing the table")
    tu.add_argument("--skip-existing", action="store_true",
                    help="leave (N, sigma_y) already tuned by successive halving (or found untunable) alone")
    tu.set_defaults(run=cmd_tune)

    si = sub.add_parser("simulate", help="write truth and observations of test trajectories to .npz")
    si.add_argument("--system", choices=SYSTEM_NAMES, default="l96")
    si.add_argument("--sigma-y", type=float, default=1.0)
    si.add_argument("--trajectories", type=int, default=1)
    si.add_argument("--cycles", type=int, default=200)
    si.add_argument("--seed", type=int, default=0)
    si.add_argument("--out", default="simulation.npz")
    si.set_defaults(run=cmd_simulate)

    try:  # train / finetune need torch; the engine does not
        from .mnmef.commands import register
    except ImportError:
        pass
    else:
        register(sub)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except ValueError as err:  # bad input: a clear message, not a traceback
        print(f"daviz: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
