#!/usr/bin/env python
"""Three starts for a per-N fine-tune (issue 20 point 4), scored on the tune set before any fine-tuning; each
is a value of the fine-tune's --warm-start:

  none   the shipped N = 10 weights as they are (localization prior and inflation of N = 10);
  prior  the same weights with the tuned EnKF's localization prior and inflation for N swapped in
         (daviz.mnmef.warm_start.set_enkf_prior);
  enkf   the same weights with the heads' last layers zeroed as well: at step 0 exactly the tuned localized
         EnKF for N, with the trained set transformer for the heads to learn on.

    python scripts/compare_starts.py --system l96 --sigma-y 1.0 --N 5,20,40,100 [--trajectories 32 --cycles 1000]
    python scripts/compare_starts.py --system l96 --sigma-y 1.0 --N 40 --best   # prints the best start only

Each row goes to results/mnmef_starts_SYSTEM_sSIGMA.json as it finishes, keyed by the weights' file name and
training step (a rerun, or --best, measures only what is not there yet). --weights may be a fine-tune's file:
its start "none" keeps that fine-tune's prior and inflation.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daviz.artifacts import update_json  # noqa: E402
from daviz.mnmef import checkpoint as ckpt  # noqa: E402
from daviz.mnmef.quickeval import evaluate_model  # noqa: E402
from daviz.mnmef.warm_start import set_enkf_prior, warm_start  # noqa: E402


def starts(weights: Path, N: int):
    data = ckpt.load(weights)
    yield "none", ckpt.build_model(data, weights)
    model = ckpt.build_model(data, weights)
    set_enkf_prior(model, N)
    yield "prior", model
    model = ckpt.build_model(data, weights)
    warm_start(model, N)
    yield "enkf", model


def adding(row: dict, header: dict):
    """The change update_json makes to the results file: the header refreshed, `row` appended."""
    def change(doc):
        doc.update(header)
        doc["rows"].append(row)
    return change


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", default="l96")
    ap.add_argument("--sigma-y", type=float, default=1.0)
    ap.add_argument("--N", default="5,20,40,100")
    ap.add_argument("--weights", help="default: pretrained/SYSTEM_sigmaSIGMA_N10.pt")
    ap.add_argument("--trajectories", type=int, default=32)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--out", help="default: results/mnmef_starts_SYSTEM_sSIGMA.json")
    ap.add_argument("--best", action="store_true", help="print only the name of the best start (one --N)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    weights = Path(a.weights or ROOT / "pretrained" / f"{a.system}_sigma{a.sigma_y}_N10.pt")
    out = Path(a.out or ROOT / "results" / f"mnmef_starts_{a.system}_s{a.sigma_y}.json")
    meta = ckpt.read_meta(weights)
    progress = meta.get("progress") or {}
    header = {"weights": {"file": weights.name, "step": progress.get("step"),
                          "trajectory_cycles": progress.get("trajectory_cycles")},
              "command": "python scripts/compare_starts.py " + " ".join(sys.argv[1:])}

    def empty():
        return {"description": __doc__.split("\n\n")[0].strip(), "rows": []}

    def key_of(row):  # rows written before the file name was recorded all scored the shipped N = 10 weights
        return row["start"], row["N"], row.get("weights_file", f"{a.system}_sigma{a.sigma_y}_N10.pt"), row["weights_step"]

    doc = json.loads(out.read_text()) if out.is_file() else empty()
    done = {key_of(r) for r in doc["rows"]}
    for N in (int(n) for n in a.N.split(",")):
        for name, model in starts(weights, N):
            which = {"start": name, "N": N, "weights_file": weights.name, "weights_step": header["weights"]["step"]}
            if key_of(which) in done:
                continue
            t0 = time.time()
            with torch.inference_mode():
                row = evaluate_model(model.eval(), N, trajectories=a.trajectories, cycles=a.cycles, purpose="tune")
            # Re-read under the lock: two fine-tunes comparing their starts side by side share this file.
            doc = update_json(out, adding({**which, **row}, header), empty)
            print(f"N={N:>3} {name:>6}: R-RMSE {row['rrmse_mean']:.4f} ± {row['rrmse_std']:.4f} "
                  f"(diverged {row['diverged']}, {time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    if a.best:
        rows = [r for r in doc["rows"] if key_of(r)[1:] == (int(a.N), weights.name, header["weights"]["step"])]
        print(min(rows, key=lambda r: (r["diverged"], r["rrmse_mean"]))["start"])


if __name__ == "__main__":
    main()
