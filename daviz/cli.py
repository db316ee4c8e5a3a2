"""The `daviz` command: simulate, tune, evaluate (and train / finetune from daviz.mnmef).

Bad input gets one line on stderr and exit status 2, before any work: argument values, output paths
(the folder must exist and be writable) and the memory a run would need.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .experiment import TwinExperiment, available_memory, check_memory
from .filters import FILTER_NAMES, make_filter
from .metrics import average_rrmse, rrmse_std
from .systems import SYSTEM_NAMES, get_system
from .tuning import tuned_params
from .variational import VARIATIONAL_NAMES  # 4D-Var and Neural Incremental DA (no torch at import)

PAPER_N = (5, 10, 15, 20, 40, 60, 100)
MNMEF_VARIANTS = {"mnmef": "auto", "mnmef-pretrained": "pretrained", "mnmef-finetuned": "finetuned"}
SCORE_FILTERS = ("ensf", "latent-ensf")  # EnSF (daviz.filters.ensf) and Latent-EnSF (daviz.latent, shipped VAE)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def seed_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


def sigma_value(text: str) -> float:
    value = _float(text)
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"observation noise must be a positive finite number, got {text!r}")
    return value


def inflation_value(text: str) -> float:
    value = _float(text)
    if not (1 <= value < math.inf):
        raise argparse.ArgumentTypeError(f"inflation must be a finite number >= 1, got {text!r}")
    return value


def radius_value(text: str) -> float:
    return _float(text)  # 0, negative or inf: no localization; only NaN is meaningless


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
    if not values or any(math.isnan(v) or v <= 0 for v in values):  # NaN compares False: test it apart
        raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
    return values


def sigma_list(text: str) -> list[float]:
    values = float_list(text)
    if any(math.isinf(v) for v in values):
        raise argparse.ArgumentTypeError(f"observation noise must be positive and finite, got {text!r}")
    return values


def settings_grid(text: str) -> dict:
    """'kernel=0.25,0.5;steps=20' -> {'kernel': (0.25, 0.5), 'steps': (20.0,)} (EnSF settings for `tune`)."""
    from .filters.ensf import PARAM_NAMES

    grid = {}
    for item in (v.strip() for v in text.split(";")):
        if not item:
            continue
        name, _, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in PARAM_NAMES:
            raise argparse.ArgumentTypeError(f"unknown EnSF setting {name!r}; choose from {', '.join(PARAM_NAMES)}")
        try:
            grid[name] = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected NAME=V1,V2 with numbers, got {item!r}") from None
        if not grid[name] or any(math.isnan(v) for v in grid[name]):
            raise argparse.ArgumentTypeError(f"expected NAME=V1,V2 with numbers, got {item!r}")
    if not grid:
        raise argparse.ArgumentTypeError(f"no settings in {text!r}")
    return grid


def filter_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    known = set(FILTER_NAMES) | {"kalman"} | set(MNMEF_VARIANTS) | set(SCORE_FILTERS)
    known |= set(VARIATIONAL_NAMES)
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown filter(s) {bad}; choose from {sorted(known)}")
    return names


def build_filter(name, system, sigma_y, N, inflation=None, radius=None):
    """A filter with tuned parameters unless overridden; returns (filter, params-for-report)."""
    if name in VARIATIONAL_NAMES:  # 4D-Var (tuned window/B), NIDA (shipped weights): daviz.variational
        from .variational import build_variational

        return build_variational(name, system, sigma_y)
    if name in MNMEF_VARIANTS:
        from .mnmef.pretrained import load_filter  # torch only when asked for

        f, info = load_filter(system.name, sigma_y, N, variant=MNMEF_VARIANTS[name])
        return f, {"weights": info}
    if name == "latent-ensf":  # weights from pretrained/, inflation and gamma from the tuned table
        from .latent.pretrained import load_filter as load_latent  # torch only when asked for

        tuned = tuned_params(system.name, name, N, sigma_y)
        f, info = load_latent(system, sigma_y, inflation=tuned["inflation"] if inflation is None else inflation,
                              **tuned.get("params", {}))
        return f, {**f.params, "vae": info, "source": tuned["source"] if inflation is None else "command line"}
    tuned = tuned_params(system.name, name, N, sigma_y)
    infl = tuned["inflation"] if inflation is None else inflation
    rad = tuned["radius"] if radius is None else (None if radius <= 0 or np.isinf(radius) else radius)
    f = make_filter(name, system, sigma_y, inflation=infl, radius=rad, **tuned.get("params", {}))
    return f, {**f.params, "source": tuned["source"] if inflation is None and radius is None else "command line"}


def check_output(path, flag: str) -> None:
    """Refuse an output path that cannot be written, before any work (ValueError naming the flag)."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder, not a file")
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: " + (f"{folder} is not a folder" if folder.exists() else
                                                f"folder {folder} does not exist"))
    try:  # a real write, since os.access() says yes to root on read-only mounts and /proc
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".daviz-write-test-")
        os.close(fd)
        os.unlink(probe)
        if path.exists():
            open(path, "ab").close()  # appends nothing: just asks for write permission on the file
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None


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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(strict_json(rows), fh, indent=1, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, path)


def _kind(name: str) -> str:
    return "mnmef" if name in MNMEF_VARIANTS else name


def _needs_weights(name: str) -> bool:
    return name in MNMEF_VARIANTS or name == "latent-ensf"


def cmd_evaluate(args) -> list[dict]:
    # Everything that can be refused is refused here, before any trajectory is computed.
    if args.json:
        check_output(args.json, "--json")
    system = get_system(args.system)
    args.cycles = args.cycles or system.test_cycles
    for N in args.N:
        check_memory(system, N, args.trajectories, [_kind(n) for n in args.filters])
    plan = []
    for sigma_y in args.sigma_y:
        for N in args.N:
            filters, params = {}, {}
            for name in args.filters:
                if not _needs_weights(name):
                    filters[name], params[name] = build_filter(name, system, sigma_y, N, args.inflation, args.radius)
                    continue
                try:
                    filters[name], params[name] = build_filter(name, system, sigma_y, N,
                                                               args.inflation if name == "latent-ensf" else None)
                except Exception as exc:  # no/corrupt weights, no torch: skip MNMEF, keep the rest
                    print(f"skipping {name} at N={N}, sigma_y={sigma_y}: {exc}", file=sys.stderr)
            if filters:
                plan.append((sigma_y, N, filters, params))
    if not plan:
        raise ValueError("nothing to evaluate: every requested filter was skipped")

    rows, started = [], time.perf_counter()
    for sigma_y, N, filters, params in plan:
        block = time.perf_counter()
        exp_cls = TwinExperiment
        if any(name in VARIATIONAL_NAMES for name in filters):  # also scores their window-end analyses
            from .variational.experiment import WindowEndExperiment as exp_cls
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


def cmd_tune(args) -> None:
    from .tuning import parse_rounds, tune_many  # successive halving; the logic lives in daviz.tuning

    tune_many(args.system, args.filter, args.N, args.sigma_y, rounds=parse_rounds(args.rounds),
              final=(args.trajectories, args.cycles), keep=args.keep, finalists=args.finalists,
              refine=not args.no_refine, inflations=args.inflations, radii=args.radii, seed=args.seed,
              workers=args.workers, dry_run=args.dry_run, skip_existing=args.skip_existing, grid=args.ensf_grid)


def cmd_simulate(args) -> None:
    check_output(args.out, "--out")
    system = get_system(args.system)
    # truth (cycles+1) and observations (cycles) per trajectory, float64, twice over while stacking
    need = 2 * 8 * args.trajectories * ((args.cycles + 1) * system.dim + args.cycles * system.obs_dim)
    limit = available_memory()
    if need > limit:
        raise ValueError(f"{args.trajectories} trajectories x {args.cycles} cycles need about {need / 2**30:.3g} GiB, "
                         f"more than the {limit / 2**30:.3g} GiB available (limit: DAVIZ_MAX_MEMORY_GB, else the "
                         "free memory); ask for fewer")
    exp = TwinExperiment(system, args.sigma_y, 2, {}, trajectories=args.trajectories, seed=args.seed)
    truth, obs = [exp.truth], []
    for _ in range(args.cycles):
        exp.step()
        truth.append(exp.truth)
        obs.append(exp.observation)
    truth, obs = np.stack(truth), np.stack(obs)
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as fh:  # a file object: numpy would otherwise append ".npz" to other names
        np.savez_compressed(fh, truth=truth, observations=obs, obs_idx=system.obs_idx,
                            dt_obs=system.dt_obs, sigma_y=args.sigma_y)
    os.replace(tmp, out)
    print(f"wrote {args.out}: truth {truth.shape} (cycle, trajectory, d), observations {obs.shape}")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block: the message says what to fix
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; given the command line `argv`, train/finetune are left out unless asked for, since
    registering them imports torch (~1 s) and evaluate/tune/simulate should refuse bad input at once."""
    p = _Parser(prog="daviz", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, N_default="10,20"):
        sp.add_argument("--system", choices=SYSTEM_NAMES, default="l96")
        sp.add_argument("--N", type=int_list, default=int_list(N_default), help="ensemble sizes, e.g. 10,20")
        sp.add_argument("--sigma-y", type=sigma_list, default=[1.0], help="observation noise std(s)")
        sp.add_argument("--seed", type=seed_int, default=0)

    ev = sub.add_parser("evaluate", help="run filters on held-out test trajectories and report R-RMSE")
    common(ev)
    ev.add_argument("--filters", type=filter_list, default=list(FILTER_NAMES))
    ev.add_argument("--trajectories", type=positive_int, default=64)
    ev.add_argument("--cycles", type=positive_int, help="cycles per trajectory (default: the paper's test length, "
                                                        "1500; KS 2000)")
    ev.add_argument("--inflation", type=inflation_value, help="override the tuned inflation")
    ev.add_argument("--radius", type=radius_value, help="override the tuned radius (0 or inf: no localization)")
    ev.add_argument("--json", help="write the results as a JSON list (strict JSON: NaN, e.g. the R-RMSE of a filter "
                                   "that diverged everywhere, is written as null)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar and timing lines")
    ev.set_defaults(run=cmd_evaluate)

    tu = sub.add_parser("tune", help="successive-halving search of inflation x radius on tuning trajectories")
    common(tu, ",".join(map(str, PAPER_N)))
    tu.add_argument("--filter", choices=FILTER_NAMES + ("ensf",), default="letkf")
    tu.add_argument("--trajectories", type=int, default=16, help="final round: trajectories per point")
    tu.add_argument("--cycles", type=int, help="final round: cycles per trajectory (default: the test length, "
                                               "1500; KS 2000: rare losses of track need the full length to show)")
    tu.add_argument("--rounds", help="earlier rounds as TRAJxCYCLES list, e.g. 4x250,8x500 (first: every point)")
    tu.add_argument("--keep", type=float, help="each round keeps the best 1/keep of the points (default 3)")
    tu.add_argument("--finalists", type=int, help="points that reach the final round (default 6)")
    tu.add_argument("--no-refine", action="store_true", help="skip the finer grid around the optimum")
    tu.add_argument("--inflations", type=float_list)
    tu.add_argument("--radii", type=float_list)
    tu.add_argument("--ensf-grid", type=settings_grid, metavar="NAME=V1,V2;...",
                    help="EnSF settings searched with the inflations (default kernel=0.25,0.5,0.75), e.g. "
                         "'kernel=0.25,0.5;damping=0.5,1,2;steps=20,50' (also eps_alpha, eps_beta)")
    tu.add_argument("--workers", type=int, help="processes (default: all cores)")
    tu.add_argument("--dry-run", action="store_true", help="print the optimum without writing the table")
    tu.add_argument("--skip-existing", action="store_true",
                    help="leave (N, sigma_y) already tuned by successive halving (or found untunable) alone")
    tu.set_defaults(run=cmd_tune)

    si = sub.add_parser("simulate", help="write truth and observations of test trajectories to .npz")
    si.add_argument("--system", choices=SYSTEM_NAMES, default="l96")
    si.add_argument("--sigma-y", type=sigma_value, default=1.0)
    si.add_argument("--trajectories", type=positive_int, default=1)
    si.add_argument("--cycles", type=positive_int, default=200)
    si.add_argument("--seed", type=seed_int, default=0)
    si.add_argument("--out", default="simulation.npz")
    si.set_defaults(run=cmd_simulate)

    command = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    if command not in ("evaluate", "tune", "simulate"):
        try:  # train / finetune need torch; the engine does not
            from .mnmef.commands import register
        except ImportError:
            pass
        else:
            register(sub)
        try:  # train-latent (Latent-EnSF's coupled VAE) needs torch too
            from .latent.commands import register as register_latent
        except ImportError:
            pass
        else:
            register_latent(sub)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser(argv).parse_args(argv)
    except SystemExit as done:  # argparse: --help (0) or a refused argument (2, message already printed)
        return done.code if isinstance(done.code, int) else 2
    try:
        result = args.run(args)
    except (ValueError, OSError, MemoryError) as err:  # bad input, unwritable output: one line, not a traceback
        text = str(err) or type(err).__name__
        print(f"daviz {args.command}: error: {text.splitlines()[0]}", file=sys.stderr)
        return 1 if isinstance(err, MemoryError) else 2
    except KeyboardInterrupt:
        print(f"daviz {args.command}: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
