#!/usr/bin/env python
"""Three starts for a per-N fine-tune (issue 20 point 4), scored on the tune set before any fine-tuning:

  n10        the shipped N = 10 weights as they are (localization prior and inflation of N = 10);
  n10+prior  the same weights with the tuned EnKF's localization prior and inflation for N swapped in
             (warm_start "prior" of a fine-tune: daviz.mnmef.warm_start.set_enkf_prior);
  enkf       the same weights with the heads' last layers zeroed as well (warm_start "enkf"): at step 0
             exactly the tuned localized EnKF for N, with the trained set transformer for the heads to learn on.

    python scripts/compare_starts.py --system l96 --sigma-y 1.0 --N 5,20,40,100 [--trajectories 32 --cycles 1000]

Each row goes to results/mnmef_starts_SYSTEM_sSIGMA.json as it finishes (a rerun skips rows already there).
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

from daviz.mnmef import checkpoint as ckpt  # noqa: E402
from daviz.mnmef.quickeval import evaluate_model  # noqa: E402
from daviz.mnmef.warm_start import set_enkf_prior, warm_start  # noqa: E402


def starts(weights: Path, N: int):
    data = ckpt.load(weights)
    yield "n10", ckpt.build_model(data, weights)
    model = ckpt.build_model(data, weights)
    set_enkf_prior(model, N)
    yield "n10+prior", model
    model = ckpt.build_model(data, weights)
    warm_start(model, N)
    yield "enkf", model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", default="l96")
    ap.add_argument("--sigma-y", type=float, default=1.0)
    ap.add_argument("--N", default="5,20,40,100")
    ap.add_argument("--weights", help="default: pretrained/SYSTEM_sigmaSIGMA_N10.pt")
    ap.add_argument("--trajectories", type=int, default=32)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--out", help="default: results/mnmef_starts_SYSTEM_sSIGMA.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    weights = Path(a.weights or ROOT / "pretrained" / f"{a.system}_sigma{a.sigma_y}_N10.pt")
    out = Path(a.out or ROOT / "results" / f"mnmef_starts_{a.system}_s{a.sigma_y}.json")
    doc = json.loads(out.read_text()) if out.is_file() else {"description": __doc__.split("\n\n")[0].strip(), "rows": []}
    meta = ckpt.read_meta(weights)
    doc["weights"] = {"file": weights.name, "step": (meta.get("progress") or {}).get("step"),
                      "trajectory_cycles": (meta.get("progress") or {}).get("trajectory_cycles")}
    doc["command"] = "python scripts/compare_starts.py " + " ".join(sys.argv[1:])
    done = {(r["start"], r["N"], r["weights_step"]) for r in doc["rows"]}
    for N in (int(n) for n in a.N.split(",")):
        for name, model in starts(weights, N):
            key = (name, N, doc["weights"]["step"])
            if key in done:
                continue
            t0 = time.time()
            with torch.inference_mode():
                row = evaluate_model(model.eval(), N, trajectories=a.trajectories, cycles=a.cycles, purpose="tune")
            doc["rows"].append({"start": name, "N": N, "weights_step": key[2], **row})
            out.write_text(json.dumps(doc, indent=1) + "\n")
            print(f"N={N:>3} {name:>10}: R-RMSE {row['rrmse_mean']:.4f} ± {row['rrmse_std']:.4f} "
                  f"(diverged {row['diverged']}, {time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
