"""How tuning ranks candidate settings: by (diverged trajectories, lost trajectories, mean R-RMSE).

A point on which any trajectory diverges or loses track ranks behind every point on which none does,
whatever its mean, so one bad trajectory is penalised rather than averaged away. A trajectory loses track when its R-RMSE over the whole run, or over some window of LOST_TRACK_WINDOW
consecutive cycles, is above the climatological level (`lost_track_level`): the same flag as `evaluate`'s
"lost" column, so that rare, temporary losses of track count and not only runs that are lost on average.
"""
from __future__ import annotations

import numpy as np

from ..experiment import climatology


def lost_track_level(system_name: str) -> float:
    """R-RMSE above which a trajectory counts as having lost track: the climatological level R_clim.

    R_clim = Σ_j ‖v_j − μ‖ / Σ_j ‖v_j‖ is the R-RMSE (5.2) of the estimator that ignores every observation
    and always answers the climatological mean μ (`daviz.experiment.climatology`, estimated from 16 truths
    x 2000 cycles on the attractor; L63 0.50, L96 0.84, KS 1.00). A trajectory whose R-RMSE over the whole
    tuning run is above R_clim was, on average, further from the truth than the constant climatological
    mean: the observations did not help at all, i.e. the filter lost track of the truth for a good part
    of the run. The tuner applies the same test to every window of LOST_TRACK_WINDOW cycles (the twin
    experiment's lost-track flag), which also catches a trajectory that loses track for a while and recovers.
    """
    return climatology(system_name)["rrmse"]


def assess(values: np.ndarray, level: float, lost_windows: np.ndarray | None = None) -> dict:
    """Per point, from per-trajectory R-RMSEs (n_points, trajectories) with NaN where diverged, and
    optionally the trajectories that lost track in some window (same shape, bool): counts of diverged and
    lost trajectories (run R-RMSE above `level`, or a lost window) and the mean R-RMSE of the finite ones."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    finite = np.isfinite(values)
    diverged = (~finite).sum(axis=1)
    with np.errstate(invalid="ignore"):
        lost = values > level
    if lost_windows is not None:
        lost |= np.atleast_2d(np.asarray(lost_windows, dtype=bool))
    lost = (finite & lost).sum(axis=1)
    counts = finite.sum(axis=1)
    mean = np.where(counts > 0, np.where(finite, values, 0.0).sum(axis=1) / np.maximum(counts, 1), np.inf)
    return {"diverged": diverged, "lost": lost, "mean": mean}


def ranking(assessed: dict) -> np.ndarray:
    """Indices from best to worst: fewest diverged, then fewest lost trajectories, then lowest mean."""
    return np.lexsort((assessed["mean"], assessed["lost"], assessed["diverged"]))
