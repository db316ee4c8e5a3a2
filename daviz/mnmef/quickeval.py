"""Held-out R-RMSE of MNMEF weights without going through pretrained/: a model or a checkpoint file, one N.

Used by the learning curve (scripts/learning_curve.py) and the GPU training script's quick evaluation.
The default trajectories come from the "tune" streams: held out from training (purpose "train") and from
the test set that README's tables use (purpose "test"), so choosing a recipe on them does not peek at it.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..experiment import TwinExperiment
from ..metrics import average_rrmse, rrmse_std
from . import checkpoint as ckpt
from .filter import MNMEFFilter


def evaluate_model(model, N: int, trajectories: int = 64, cycles: int = 1500, seed: int = 0,
                   purpose: str = "tune", device=None) -> dict:
    """R-RMSE (mean and std over trajectories, eq. 5.3/5.8) of `model` at ensemble size N."""
    start = time.perf_counter()
    f = MNMEFFilter(model, device=device)
    exp = TwinExperiment(model.system, model.sigma_y, N, {"mnmef": f}, trajectories=trajectories, seed=seed,
                         purpose=purpose)
    values = exp.run(cycles)["mnmef"]
    return {"system": model.system.name, "sigma_y": model.sigma_y, "N": int(N), "trajectories": trajectories,
            "cycles": cycles, "seed": seed, "purpose": purpose, "rrmse_mean": average_rrmse(values),
            "rrmse_std": rrmse_std(values), "diverged": int(exp.diverged["mnmef"].sum()),
            "seconds": round(time.perf_counter() - start, 1)}


def evaluate_file(path, N: int | None = None, device=None, **kw) -> dict:
    """Like evaluate_model for a checkpoint or weights file (N: the file's own by default)."""
    data = ckpt.load(path)
    model = ckpt.build_model(data, path).eval()
    for q in model.parameters():
        q.requires_grad_(False)
    with torch.inference_mode():
        row = evaluate_model(model, int(N or data["N"]), device=device, **kw)
    return {**row, "file": Path(path).name}
