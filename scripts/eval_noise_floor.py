"""How much of a tune-set difference is float rounding? Scores the same MNMEF weights twice on the same
trajectories, observations and noise, once as shipped and once with the set transformer's softmax computed the
other way (written out instead of torch.softmax for key axes of 16-32: equal to ~1e-7). Over 1500 chaotic cycles
such differences grow until each trajectory's error path is its own, so the gap between the two means is the
noise floor below which an A/B on these trajectories (or a promotion) says nothing.

    python scripts/eval_noise_floor.py --weights pretrained/l96_sigma1.0_N10_ft20.pt --N 20 \
        --json results/eval_noise_floor_l96_s1.0_N20.json
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from daviz.experiment import TwinExperiment
from daviz.metrics import average_rrmse
from daviz.mnmef import checkpoint as ckpt
from daviz.mnmef import set_transformer
from daviz.mnmef.filter import MNMEFFilter


def per_trajectory(model, N: int, trajectories: int, cycles: int) -> np.ndarray:
    exp = TwinExperiment(model.system, model.sigma_y, N, {"mnmef": MNMEFFilter(model)}, trajectories=trajectories,
                         seed=0, purpose="tune")
    return np.asarray(exp.run(cycles)["mnmef"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--N", type=int, required=True)
    p.add_argument("--trajectories", type=int, default=64)
    p.add_argument("--cycles", type=int, default=1500)
    p.add_argument("--json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    data = ckpt.load(a.weights)
    model = ckpt.build_model(data, a.weights).eval().requires_grad_(False)
    runs = {}
    for name, short_axis in (("shipped", set_transformer.SHORT_AXIS), ("rounded otherwise", 33)):
        set_transformer.SHORT_AXIS = short_axis
        with torch.inference_mode():
            runs[name] = per_trajectory(model, a.N, a.trajectories, a.cycles)
    x, y = runs["shipped"], runs["rounded otherwise"]
    row = {"weights": a.weights, "N": a.N, "trajectories": a.trajectories, "cycles": a.cycles, "purpose": "tune",
           "mean_shipped": average_rrmse(x), "mean_rounded_otherwise": average_rrmse(y),
           "mean_difference": average_rrmse(x) - average_rrmse(y),
           "per_trajectory_rms_difference": float(np.sqrt(np.mean((x - y) ** 2))),
           "std_over_trajectories": float(np.std(x)),
           "standard_error_of_mean": float(np.std(x) / np.sqrt(len(x)))}
    for k, v in row.items():
        print(f"{k:32s} {v}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(row, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
