"""Tuned 4D-Var parameters per (system, sigma_y), with how they were found.

Tuning: window-end R-RMSE on "tune"-stream trajectories (never the test ones), grids and budgets as recorded
in each entry's "source"; `python -m daviz.variational.tune` reruns it. Untuned (system, sigma_y) fall back
to DEFAULTS.
"""
from __future__ import annotations

DEFAULTS = {"window": 3, "outer": 3, "inner": 20, "B_scale": 0.1}

TUNED: dict[tuple[str, float], dict] = {
    # window-end R-RMSE 0.0521 (16 tune trajectories x 600 cycles); grid L 1,2,3 x B_scale 0.005,0.01,0.02 at
    # outer 5: L=1 ≥ 0.057, L=3 ≥ 0.066, L=2 0.0521-0.0560 (results/eval_4dvar_tuning_l63.json)
    ("l63", 1.0): {"window": 2, "outer": 5, "inner": 20, "B_scale": 0.005,
                   "source": "python -m daviz.variational.tune --system l63 --windows 1,2,3 --B-scales 0.005,0.01,0.02 "
                             "--outer 5 --trajectories 16 --cycles 600"},
    # window-end R-RMSE 0.4567 (16 x 600); L 2,3 x B_scale 0.07,0.1,0.15 at outer 5 (L=2 ≥ 0.482), then L 3,4 x
    # B_scale 0.04,0.07 at outer 8: L=4 0.4563 at 3.5x the cost, B_scale 0.04 worse (results/eval_4dvar_tuning_l96_*.json)
    ("l96", 1.0): {"window": 3, "outer": 5, "inner": 20, "B_scale": 0.07,
                   "source": "python -m daviz.variational.tune --system l96 --windows 2,3 --B-scales 0.07,0.1,0.15 "
                             "--outer 5 --trajectories 16 --cycles 600 (+ --windows 3,4 --B-scales 0.04,0.07 --outer 8)"},
}


def fourdvar_params(system: str, sigma_y: float) -> dict:
    """{"window", "outer", "inner", "B_scale", "source"} for the system and sigma_y."""
    for (name, sigma), params in TUNED.items():
        if name == system and abs(sigma - float(sigma_y)) < 1e-9:
            return dict(params)
    return {**DEFAULTS, "source": "defaults (not tuned for this system and sigma_y)"}
