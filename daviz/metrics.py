"""The paper's metrics: R-RMSE (5.2), its average (5.3) and spread over trajectories (5.8),
relative improvement (5.4), and ensemble spread."""
from __future__ import annotations

import numpy as np


def rrmse(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """R-RMSE per trajectory, eq. (5.2): Σ_j ‖v̄_j − v†_j‖ / Σ_j ‖v†_j‖ over time axis 0.

    estimate, truth: (J, B, d) ensemble means and truths at the analysis times; returns (B,).
    """
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate {estimate.shape} and truth {truth.shape} differ in shape")
    return np.linalg.norm(estimate - truth, axis=-1).sum(0) / np.linalg.norm(truth, axis=-1).sum(0)


def average_rrmse(values: np.ndarray) -> float:
    """Eq. (5.3): mean R-RMSE over test trajectories (diverged ones, NaN, excluded; count them apart)."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def rrmse_std(values: np.ndarray) -> float:
    """Eq. (5.8): population standard deviation of R-RMSE over (non-diverged) trajectories."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.std()) if finite.size else float("nan")


def relative_improvement(benchmark: float, ours: float) -> float:
    """Eq. (5.4): (Ē_benchmark − Ē_ours) / Ē_benchmark; negative when ours is worse."""
    return (benchmark - ours) / benchmark

