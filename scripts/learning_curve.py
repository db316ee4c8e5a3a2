#!/usr/bin/env python
"""Learning curve of MNMEF on the CPU (issue 11 point 4): held-out R-RMSE after S optimizer steps for several
LR schedules, everything else equal.

    python scripts/learning_curve.py [--budgets 100,300,1000] [--arms steps,cosine,wsd] [--out results/...json]

Setup (all arms): L96, sigma_y=1, N=10; 2048 windows x 60 cycles, batch 64 (32 steps per epoch); AdamW
LR 1e-3, weight decay 1e-2, g = 2·softmax (the library defaults then); seed 42; one CPU thread.
Arms:
  steps   the current recipe: LR halved at 20/30/40 % of the run, no warm-up; one run per budget S;
  cosine  20 warm-up steps, cosine decay to 0 over S; one run per budget S;
  wsd     20 warm-up steps, constant LR, cosine decay over the last 20 % of S. One trunk is trained once and
          a decayed branch is cut from it for each budget (the trunk continues exactly from step 0.8·S).
Evaluation: 64 "tune"-stream trajectories x 1500 cycles at N=10 (held out from training and from the test
set of README's tables), same for every point; step 0 is the untrained model.
Each finished point is written to the JSON at once; a rerun skips the points already there.
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
from daviz.mnmef.quickeval import evaluate_file, evaluate_model  # noqa: E402
from daviz.mnmef.train import TrainConfig, branch_path, init_model, train  # noqa: E402

BASE = dict(system="l96", sigma_y=1.0, N=10, trajectories=2048, cycles=60, batch_size=64, lr=1e-3,
            weight_decay=1e-2, seed=42, model={"loc_activation": "softmax"})
ARMS = {
    "steps": dict(schedule="steps", lr_milestones=(0.2, 0.3, 0.4)),
    "cosine": dict(schedule="cosine", warmup_steps=20),
    "wsd": dict(schedule="wsd", warmup_steps=20, decay_fraction=0.2),
}


def config(arm: str, budget: int, wsd_total: int) -> TrainConfig:
    extra = dict(ARMS[arm])
    total = wsd_total if arm == "wsd" else budget
    bpe = BASE["trajectories"] // BASE["batch_size"]
    return TrainConfig(**BASE, **extra, epochs=-(-total // bpe), max_steps=total,
                       recipe_note=f"learning curve arm {arm}, {budget} steps")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="100,300,1000", help="all budgets (the wsd trunk is sized for the largest)")
    ap.add_argument("--only", help="train only these budgets now (comma list); the others wait for a later run")
    ap.add_argument("--arms", default="steps,cosine,wsd")
    ap.add_argument("--trajectories", type=int, default=64)
    ap.add_argument("--cycles", type=int, default=1500)
    ap.add_argument("--runs", default="runs/curve")
    ap.add_argument("--out", default="results/mnmef_learning_curve_l96_s1.0.json")
    ap.add_argument("--shipped", default="pretrained/l96_sigma1.0_N10.pt", help="also evaluate these weights")
    a = ap.parse_args()
    torch.set_num_threads(1)
    budgets = sorted(int(b) for b in a.budgets.split(","))
    arms = a.arms.split(",")
    runs, out = Path(a.runs), Path(a.out)
    runs.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    doc.update(description=__doc__.split("\n\n")[0].strip(), setup={**BASE, "arms": {k: {**v, "lr_milestones": list(v.get("lr_milestones", ()))} for k, v in ARMS.items()},
                                                                   "eval": {"N": 10, "trajectories": a.trajectories, "cycles": a.cycles, "purpose": "tune", "seed": 0}},
               command="python scripts/learning_curve.py " + " ".join(sys.argv[1:]))
    points = doc.setdefault("points", [])
    done = {(p["arm"], p["steps"]) for p in points}
    ev = dict(trajectories=a.trajectories, cycles=a.cycles, purpose="tune", seed=0)

    def record(row):
        points.append(row)
        points.sort(key=lambda p: (p["arm"], p["steps"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{row['arm']:>8} {row['steps']:>5} steps: R-RMSE {row['rrmse_mean']:.4f} ± {row['rrmse_std']:.4f} "
              f"(diverged {row['diverged']}, train {row.get('train_seconds', 0):.0f} s, eval {row['seconds']:.0f} s)", flush=True)

    if ("untrained", 0) not in done:
        model, _ = init_model(TrainConfig(**BASE))
        with torch.inference_mode():
            record({"arm": "untrained", "steps": 0, **evaluate_model(model, 10, **ev)})
    if a.shipped and Path(a.shipped).is_file() and ("shipped", 0) not in done:
        meta = ckpt.read_meta(a.shipped)
        steps = meta.get("progress", {}).get("epoch", 0) * meta.get("recipe", {}).get("batches_per_epoch", 0)
        record({"arm": "shipped", "steps": steps, "note": meta.get("recipe_note", ""), **evaluate_file(a.shipped, 10, **ev)})
        done.add(("shipped", 0))
    todo = sorted(int(b) for b in a.only.split(",")) if a.only else budgets
    for budget in todo:
        for arm in arms:
            if (arm, budget) in done:
                continue
            t0 = time.time()
            cfg = config(arm, budget, max(budgets))
            path = runs / f"{arm}.pt" if arm == "wsd" else runs / f"{arm}_{budget}.pt"
            if arm == "wsd":  # continue the one trunk; the branch ends exactly at `budget`
                meta = train(cfg, path, resume=True, progress=False, until_step=budget, checkpoint_minutes=10)
                weights = branch_path(path) if budget < cfg.total_steps else path
            else:
                meta = train(cfg, path, resume=True, progress=False, checkpoint_minutes=10)
                weights = path
            if not meta["progress"]["finished"]:  # interrupted (SIGTERM): resumable, nothing to record yet
                print(f"{arm} {budget}: interrupted at step {meta['progress']['step']}; rerun to continue", flush=True)
                return
            with torch.inference_mode():
                row = evaluate_file(weights, 10, **ev)
            h = meta["loss_history"]
            record({"arm": arm, "steps": budget, **row, "train_seconds": round(time.time() - t0, 1),
                    "train_loss_last_32": round(sum(h[-32:]) / len(h[-32:]), 5), "weights": str(weights)})


if __name__ == "__main__":
    main()
