"""Tuning the numpy baselines' inflation × localization radius (or EnSF's settings), and the tuned tables.

- tables.py   daviz/tuned/<system>_<filter>.json and untunable.json: read, write (locked, atomic), lookup
- scoring.py  ranking of candidates: diverged, then lost-track trajectories, then mean R-RMSE
- search.py   grids, batched evaluation of grid points (canonical batches), successive halving, `daviz tune`
              (tune_many: one task per table entry, here or on a Dask cluster)

The package sits below the method packages: daviz.methods reads the baselines' tuned settings from the
tables, MNMEF's warm start reads them too, and Latent-EnSF's settings search ranks as scoring does.
"""
from __future__ import annotations

from .scoring import assess, lost_track_level, ranking
from .search import (CHUNKS, DEFAULT_FINAL, DEFAULT_FINALISTS, DEFAULT_KEEP, DEFAULT_ROUNDS, INFLATION_GRID,
                     evaluate_points, final_budget, grid_for, parse_rounds, refined_points, successive_halving, sweep,
                     tune_many)
from .tables import (METHOD, TUNED_DIR, UNTUNABLE, is_current, is_tuned, is_untunable, save_tuned, save_untunable,
                     table_path, tuned_params, untuned)

__all__ = ["CHUNKS", "DEFAULT_FINAL", "DEFAULT_FINALISTS", "DEFAULT_KEEP", "DEFAULT_ROUNDS", "INFLATION_GRID", "METHOD",
           "TUNED_DIR", "UNTUNABLE", "assess", "evaluate_points", "final_budget", "grid_for", "is_current", "is_tuned",
           "is_untunable", "lost_track_level", "parse_rounds", "ranking", "refined_points", "save_tuned",
           "save_untunable", "successive_halving", "sweep", "table_path", "tune_many", "tuned_params", "untuned"]
