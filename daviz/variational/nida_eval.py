"""Window-level evaluation of NIDA against 4D-Var, as the paper does: held-out windows, accuracy and wall time,
observation patterns seen and not seen in training, and the hybrid (NIDA's estimate as 4D-Var's first guess).

    python -m daviz.variational.nida_eval --system l96 --windows 256 --json results/eval_nida_windows_l96.json

Windows: `--windows` test-stream truths (daviz.seeding purpose "test", never trained or tuned on), the model's
window length L. Every method gets the same background x_b = u†_0 + a C_λ^{1/2} ξ (a fixed: `--a`, default 0.1 for
L63 and 0.5 for L96, about the analysis-error level of cycling) and the same observations (σ_y of the model).
4D-Var is given the oracle B = a² C_λ (exactly the background-error covariance), the strongest strong-constraint
baseline. Reported: RMSE per component at the window end (what cycling uses) and over the window (all L+1
states), of the first guess (x_b forecast), 4D-Var (full: tuned outer loops; and one outer loop), NIDA, and
NIDA + 4D-Var (one outer loop from NIDA's first guess); seconds for the whole batch of windows (one thread).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from ..systems import get_system
from . import nida_io
from .background import climatological_covariance, shrink
from .filter import FourDVar, NIDAFilter
from .fourdvar import window_states
from .nida_train import WindowSampler, own_pattern, seen_pattern, unseen_patterns
from .tuned import fourdvar_params

DEFAULT_A = {"l63": 0.1, "l96": 0.5}


def _rmse(est, truth):
    err = est - truth
    return float(np.sqrt(np.nanmean(err[:, -1] ** 2))), float(np.sqrt(np.nanmean(err ** 2)))


def patterns(system, L: int) -> dict[str, tuple[str, np.ndarray]]:
    """label -> (seen/unseen, mask (L + 1, d))."""
    out = {"own (seen)": ("seen", own_pattern(system, L))}
    rng = np.random.default_rng(1)
    if system.periodic:
        m = np.zeros((L + 1, system.dim))
        m[1:, 1::2] = 1.0
        out["every 2nd from 1 (seen)"] = ("seen", m)
    else:
        m = np.zeros((L + 1, system.dim))
        m[1:, [0, 2]] = 1.0
        out["x and z (seen)"] = ("seen", m)
    for label, m in unseen_patterns(system, L, rng).items():
        out[f"{label} (unseen)"] = ("unseen", m)
    seen = {seen_pattern(system, L, np.random.default_rng(s)).tobytes() for s in range(500)}
    for label, (kind, m) in out.items():
        assert (m.tobytes() in seen) == (kind == "seen"), label
    return out


def evaluate(system_name: str, windows: int, a: float, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    system = get_system(system_name)
    model, meta = nida_io.load_pretrained(system_name, 1.0)
    sigma_y, L = model.sigma_y, model.config.window
    tuned = fourdvar_params(system_name, sigma_y)
    tuned.pop("source")
    # oracle B: B_scale · C_λ = a² C_λ
    base = {**tuned, "window": L, "B_scale": a ** 2}
    rows = []
    for label, (kind, mask) in patterns(system, L).items():
        batch = WindowSampler(system, sigma_y, L, windows, seed=seed, purpose="test", a_range=(a, a),
                              pattern=mask).draw()
        truth, xb, Y = batch["truth"], batch["xb"], batch["Y"]
        obs_mask = mask[1:]

        def fourdvar(outer, first_guess=None):
            f = FourDVar(system, sigma_y, **{**base, "outer": outer}, obs_mask=np.ones(system.dim))
            f.window_mask = obs_mask.copy()  # this pattern, time by time
            state = f.state_from(xb)
            start = time.perf_counter()
            out = f.solve_window(state, Y[:, 1:], first_guess=first_guess)
            seconds = time.perf_counter() - start
            traj = np.concatenate([out["x0"][:, None], window_states(system, out["x0"], L)], axis=1)
            return traj, seconds, out["stats"]

        nida = NIDAFilter(model)
        nida.window_mask = obs_mask.copy()
        start = time.perf_counter()
        u, _ = nida.reconstruct(xb, Y[:, 1:])
        t_nida = time.perf_counter() - start
        full, t_full, st_full = fourdvar(base["outer"])
        one, t_one, st_one = fourdvar(1)
        hyb, t_hyb, st_hyb = fourdvar(1, first_guess=u[:, 0])
        results = {"first guess (background forecast)": (batch["first_guess"], 0.0, None),
                   f"4D-Var ({base['outer']} outer)": (full, t_full, st_full), "4D-Var (1 outer)": (one, t_one, st_one),
                   "NIDA": (u, t_nida, None), "NIDA + 4D-Var (1 outer)": (hyb, t_hyb + t_nida, st_hyb)}
        for method, (est, seconds, stats) in results.items():
            end, whole = _rmse(est, truth)
            rows.append({"pattern": label, "kind": kind, "observed_per_window": int(mask.sum()), "method": method,
                         "rmse_window_end": end, "rmse_window": whole, "seconds": round(seconds, 4),
                         "ms_per_window": round(1e3 * seconds / windows, 3),
                         **({"solver": stats} if stats else {})})
            print(f"{system_name} {label:26} {method:36} end {end:.4f}  window {whole:.4f}  {seconds:7.3f} s",
                  flush=True)
    clim_std = float(np.sqrt(np.mean(np.diag(shrink(climatological_covariance(system)["cov"])))))
    return {"system": system_name, "sigma_y": sigma_y, "window": L, "windows": windows, "a": a,
            "background_error_std": a * clim_std, "weights": meta.get("file"), "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m daviz.variational.nida_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--system", default="l96")
    p.add_argument("--windows", type=int, default=256)
    p.add_argument("--a", type=float, help="background error in climatological std units (default per system)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    p.add_argument("--record", action="store_true", help="also add the figures to the weights' sidecar")
    args = p.parse_args(argv)
    a = args.a if args.a is not None else DEFAULT_A.get(args.system, 0.3)
    result = evaluate(args.system, args.windows, a, args.seed)
    command = "python -m daviz.variational.nida_eval " + " ".join(sys.argv[1:] if argv is None else argv)
    result["command"] = command
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
            fh.write("\n")
    if args.record:
        nida_io.record_evaluation(args.system, result["sigma_y"], "windows", {
            "command": command, "purpose": "test",
            **{k: result[k] for k in ("windows", "a", "background_error_std")}, "rows": result["rows"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
