"""Grid search of 4D-Var's window length L and B_scale on "tune"-stream trajectories (never the test ones).

Scored by the window-end R-RMSE (daviz.variational.experiment); every grid point of one L runs in the same
experiment (same truth and observations). Prints the table and writes it as JSON; the chosen entry is copied
into daviz/variational/tuned.py by hand, with this command as its source.

    python -m daviz.variational.tune --system l96 --windows 2,3 --B-scales 0.07,0.1,0.15 --outer 5 \
        --trajectories 16 --cycles 600 --json results/tune_4dvar_l96.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from ..systems import get_system
from .experiment import WindowEndExperiment
from .filter import FourDVar


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m daviz.variational.tune")
    p.add_argument("--system", default="l96")
    p.add_argument("--sigma-y", type=float, default=1.0)
    p.add_argument("--windows", default="2,3")
    p.add_argument("--B-scales", default="0.05,0.1,0.2")
    p.add_argument("--outer", type=int, default=5)
    p.add_argument("--inner", type=int, default=20)
    p.add_argument("--trajectories", type=int, default=16)
    p.add_argument("--cycles", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    system = get_system(args.system)
    rows = []
    for L in [int(v) for v in args.windows.split(",")]:
        filters = {f"L{L}_B{b}": FourDVar(system, args.sigma_y, window=L, outer=args.outer, inner=args.inner,
                                          B_scale=float(b)) for b in args.B_scales.split(",")}
        exp = WindowEndExperiment(system, args.sigma_y, 10, filters, trajectories=args.trajectories,
                                  seed=args.seed, purpose="tune")
        start = time.perf_counter()
        exp.run(args.cycles)
        end, every = exp.window_end_rrmse(), exp.running_rrmse()
        for name, f in filters.items():
            row = {"system": args.system, "sigma_y": args.sigma_y, "window": L, "B_scale": f.B_scale,
                   "outer": args.outer, "inner": args.inner, "trajectories": args.trajectories, "cycles": args.cycles,
                   "rrmse_window_end": float(np.nanmean(end[name])), "rrmse_all_cycles": float(np.nanmean(every[name])),
                   "diverged": int(exp.diverged[name].sum()), "seconds_per_solve": f.solve_seconds / max(1, f.solves)}
            rows.append(row)
            print(f"{args.system} L={L} B_scale={f.B_scale:<6} window-end {row['rrmse_window_end']:.4f}  all cycles "
                  f"{row['rrmse_all_cycles']:.4f}  diverged {row['diverged']}  {row['seconds_per_solve']:.3f} s/solve",
                  flush=True)
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    best = min(rows, key=lambda r: (r["diverged"], r["rrmse_window_end"]))
    print("best:", {k: best[k] for k in ("window", "B_scale", "outer", "inner", "rrmse_window_end")})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"command": "python -m daviz.variational.tune " + " ".join(argv if argv is not None else sys.argv[1:]),
                       "rows": rows, "best": best}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
