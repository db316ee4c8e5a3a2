#!/usr/bin/env python
"""A/B of MNMEF's localization activation from the warm start (issue 20 point 2): g = 2·sigmoid(prior + F_loc)
against g = 2·softmax(prior + F_loc), at N = 10 and N = 40, several seeds, equal budget.

    python scripts/ab_loc_activation.py [--steps 128] [--seeds 1,2,3] [--N 10,40] [--out results/ab_loc_activation.json]

Each arm is warm-started at its N (daviz.mnmef.warm_start): sigmoid starts exactly as the tuned localized EnKF;
softmax starts from the same Gaspari–Cohn shape rescaled to Σg = 2 (it cannot hold GC's sum, about 2.4 at N = 10
and 6.9 at N = 40 on L96). Training: L96, σ_y = 1, 2048 windows x 60 cycles, observation noise redrawn per batch,
batch 32, LR 1e-3 with a 20-step warm-up, weight decay 1e-2, `--steps` AdamW steps; seed s sets the data and the
initial weights. Evaluation: the same 16 "tune" trajectories x 1000 cycles at the arm's N (held out from
training and from README's test set); step 0 is the warm start itself. Each finished point is written to the
JSON at once; a rerun skips the points already there.
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

from daviz.mnmef.quickeval import evaluate_model  # noqa: E402
from daviz.mnmef.train import init_model, train  # noqa: E402
from daviz.mnmef.train_config import TrainConfig  # noqa: E402
from daviz.mnmef import checkpoint as ckpt  # noqa: E402

BASE = dict(system="l96", sigma_y=1.0, trajectories=2048, cycles=60, batch_size=32, lr=1e-3, weight_decay=1e-2,
            schedule="wsd", warmup_steps=20, warm_start="enkf")


def config(activation: str, N: int, seed: int, steps: int) -> TrainConfig:
    bpe = BASE["trajectories"] // BASE["batch_size"]
    return TrainConfig(**BASE, N=N, seed=seed, epochs=-(-steps // bpe), max_steps=steps,
                       model={"loc_activation": activation},
                       recipe_note=f"A/B localization activation {activation}, N={N}, seed {seed}, {steps} steps")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--N", default="10,40")
    ap.add_argument("--trajectories", type=int, default=16)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--runs", default="runs/ab_activation")
    ap.add_argument("--out", default="results/ab_loc_activation.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out, runs = Path(a.out), Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    doc.update(description=__doc__.split("\n\n")[0].strip(), setup={**BASE, "steps": a.steps},
               command="python scripts/ab_loc_activation.py " + " ".join(sys.argv[1:]),
               eval={"trajectories": a.trajectories, "cycles": a.cycles, "purpose": "tune", "seed": 0})
    points = doc.setdefault("points", [])
    done = {(p["activation"], p["N"], p["train_seed"], p["steps"]) for p in points}
    ev = dict(trajectories=a.trajectories, cycles=a.cycles, purpose="tune", seed=0)

    def record(row):
        points.append(row)
        points.sort(key=lambda p: (p["N"], p["activation"], p["steps"], p["train_seed"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"N={row['N']:>3} {row['activation']:>7} seed {row['train_seed']} {row['steps']:>4} steps: R-RMSE "
              f"{row['rrmse_mean']:.4f} ± {row['rrmse_std']:.4f} (diverged {row['diverged']})", flush=True)

    for N in (int(n) for n in a.N.split(",")):
        for activation in ("sigmoid", "softmax"):
            if (activation, N, 0, 0) not in done:  # the warm start itself (no training; seed-independent up to F)
                model, _ = init_model(config(activation, N, 0, a.steps))
                with torch.inference_mode():
                    record({**evaluate_model(model, N, **ev), "activation": activation, "N": N, "train_seed": 0, "steps": 0})
            for seed in (int(s) for s in a.seeds.split(",")):
                if (activation, N, seed, a.steps) in done:
                    continue
                t0 = time.time()
                path = runs / f"{activation}_N{N}_s{seed}_{a.steps}.pt"
                meta = train(config(activation, N, seed, a.steps), path, resume=True, progress=False,
                             checkpoint_minutes=10)
                if not meta["progress"]["finished"]:
                    print(f"{path}: interrupted at step {meta['progress']['step']}; rerun to continue", flush=True)
                    return
                model = ckpt.build_model(ckpt.load(path), path).eval()
                with torch.inference_mode():
                    row = evaluate_model(model, N, **ev)
                record({**row, "activation": activation, "N": N, "train_seed": seed, "steps": a.steps,
                        "train_seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
