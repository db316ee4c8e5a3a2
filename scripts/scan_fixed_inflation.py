"""Tune-set R-RMSE of a trained MNMEF with its fixed multiplicative inflation (the warm start's buffer, never
trained) set to each of several values: does the inflation it was trained with still suit it?

    python scripts/scan_fixed_inflation.py --weights pretrained/l96_sigma1.0_N10_ft40.pt --N 40 \
        --alphas 1.02,1.035,1.05,1.065 --json results/inflation_scan_l96_s1.0_N40.json
"""
from __future__ import annotations

import argparse
import json

import torch

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
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    data = ckpt.load(a.weights)
    rows = []
    for alpha in (float(x) for x in a.alphas.split(",")):
        model = ckpt.build_model(data, a.weights).eval().requires_grad_(False)
        trained_with = float(model.fixed_inflation)
        model.fixed_inflation.fill_(alpha)
        with torch.inference_mode():
            row = evaluate_model(model, a.N, trajectories=a.trajectories, cycles=a.cycles, purpose="tune")
        rows.append({"alpha": alpha, "trained_with": trained_with, **row})
        print(f"alpha {alpha:.3f}  R-RMSE {row['rrmse_mean']:.4f}  diverged {row['diverged']}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"weights": a.weights, "command": "python scripts/scan_fixed_inflation.py "
                       + f"--weights {a.weights} --N {a.N} --alphas {a.alphas}", "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
