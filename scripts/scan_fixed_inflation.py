"""Tune-set R-RMSE of a trained MNMEF with its fixed multiplicative inflation (the warm start's buffer, never
trained) set to each of several values: does the inflation it was trained with still suit it?

    python scripts/scan_fixed_inflation.py --weights pretrained/l96_sigma1.0_N10_ft40.pt --N 40 \
        --alphas 1.02,1.035,1.05,1.065 --json results/inflation_scan_l96_s1.0_N40.json [--write-best]

The value it was trained with is always scored too. With --write-best the file gets the best value when that
beats the trained-with one on the tune set by more than --min-gain (no more diverged trajectories): a
hyperparameter tuned on the tune set like the baselines' inflation; the sidecar records the scan
(fixed_inflation_tuned) and the new tune score. The default margin is about twice the float-rounding noise of a
64-trajectory mean (scripts/eval_noise_floor.py: 0.0012 at L96 N=20), so noise is not written in.
"""
from __future__ import annotations

import argparse
import json

import torch

from daviz.artifacts import add_evaluation
from daviz.mnmef import checkpoint as ckpt
from daviz.mnmef.quickeval import evaluate_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--N", type=int, required=True)
    p.add_argument("--alphas", required=True, help="comma-separated inflation factors")
    p.add_argument("--trajectories", type=int, default=64)
    p.add_argument("--cycles", type=int, default=1500)
    p.add_argument("--json")
    p.add_argument("--write-best", action="store_true", help="store the best value in --weights if it is better")
    p.add_argument("--min-gain", type=float, default=0.0025, help="R-RMSE margin --write-best needs")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    data = ckpt.load(a.weights)
    trained_with = round(float(data["model"]["fixed_inflation"]), 6)
    model = ckpt.build_model(data, a.weights).eval().requires_grad_(False)
    rows = []
    for alpha in sorted({float(x) for x in a.alphas.split(",")} | {trained_with}):
        model.fixed_inflation.fill_(alpha)
        with torch.inference_mode():
            row = evaluate_model(model, a.N, trajectories=a.trajectories, cycles=a.cycles, purpose="tune")
        rows.append({"alpha": alpha, "trained_with": trained_with, **row})
        print(f"alpha {alpha:.3f}  R-RMSE {row['rrmse_mean']:.4f}  diverged {row['diverged']}", flush=True)
    command = f"python scripts/scan_fixed_inflation.py --weights {a.weights} --N {a.N} --alphas {a.alphas}"
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"weights": a.weights, "command": command, "rows": rows}, f, indent=1)
    if a.write_best:
        write_best(a.weights, data, rows, trained_with, command, a.min_gain)
    return 0


def write_best(path, data: dict, rows: list, trained_with: float, command: str, min_gain: float) -> None:
    base = next(r for r in rows if r["alpha"] == trained_with)
    best = min((r for r in rows if r["diverged"] <= base["diverged"]), key=lambda r: r["rrmse_mean"])
    if best["rrmse_mean"] > base["rrmse_mean"] - min_gain:
        print(f"kept {trained_with}: no value scored better by more than {min_gain}")
        return
    data["model"]["fixed_inflation"] = torch.tensor(best["alpha"], dtype=data["model"]["fixed_inflation"].dtype)
    meta = ckpt.read_meta(path)
    meta["fixed_inflation_tuned"] = {"from": trained_with, "to": best["alpha"], "command": command + " --write-best",
                                     "scores": {str(r["alpha"]): r["rrmse_mean"] for r in rows}}
    add_evaluation(meta, {"tune": {k: v for k, v in best.items() if k not in ("alpha", "trained_with")}})
    ckpt.save(path, {k: v for k, v in data.items() if k != "format"}, meta)
    print(f"wrote fixed_inflation {best['alpha']} (tune {best['rrmse_mean']:.4f} vs {base['rrmse_mean']:.4f})")


if __name__ == "__main__":
    raise SystemExit(main())
