"""The `daviz` command: simulate, tune, evaluate (and train / finetune from daviz.mnmef).

Bad input gets one line on stderr and exit status 2, before any work: argument values, output paths
(the folder must exist and be writable) and the memory a run would need.
"""
from __future__ import annotations

import argparse
import sys

from ..filters import FILTER_NAMES
from ..methods import tunable_names
from ..systems import SYSTEM_NAMES
from .args import (filter_list, float_list, inflation_value, int_list, positive_int, radius_value, seed_int,
                   settings_grid, sigma_list, sigma_value)
from .evaluate import cmd_evaluate
from .simulate import cmd_simulate

PAPER_N = (5, 10, 15, 20, 40, 60, 100)


def cmd_tune(args) -> None:
    from ..tuning import parse_rounds, tune_many  # successive halving; the logic lives in daviz.tuning

    tune_many(args.system, args.filter, args.N, args.sigma_y, rounds=parse_rounds(args.rounds),
              final=(args.trajectories, args.cycles), keep=args.keep, finalists=args.finalists,
              refine=not args.no_refine, inflations=args.inflations, radii=args.radii, seed=args.seed,
              workers=args.workers, scheduler=args.scheduler, dry_run=args.dry_run, skip_existing=args.skip_existing,
              grid=args.ensf_grid)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block: the message says what to fix
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; given the command line `argv`, train/finetune are left out unless asked for, since
    registering them imports torch (~1 s) and evaluate/tune/simulate should refuse bad input at once."""
    p = _Parser(prog="daviz", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, N_default="10,20", tasks=""):
        sp.add_argument("--system", choices=SYSTEM_NAMES, default="l96")
        sp.add_argument("--N", type=int_list, default=int_list(N_default), help="ensemble sizes, e.g. 10,20")
        sp.add_argument("--sigma-y", type=sigma_list, default=[1.0], help="observation noise std(s)")
        sp.add_argument("--seed", type=seed_int, default=0)
        sp.add_argument("--workers", type=positive_int, default=1,
                        help=f"run each (sigma_y, N{tasks}) on a local Dask cluster of this many processes, results "
                             "identical to one process (default 1: this process, one after the other)")
        sp.add_argument("--scheduler", metavar="ADDRESS",
                        help="run on an existing Dask cluster instead, e.g. tcp://10.0.0.5:8786 (`dask scheduler`)")

    ev = sub.add_parser("evaluate", help="run filters on held-out test trajectories and report R-RMSE")
    common(ev, tasks=", filter")
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
    tu.add_argument("--filter", choices=tunable_names(), default="letkf")
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
            from ..mnmef.commands import register
        except ImportError:
            pass
        else:
            register(sub)
        try:  # train-latent (Latent-EnSF's coupled VAE) needs torch too
            from ..latent.commands import register as register_latent
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
