"""What every ensemble filter shares: forecast, post-analysis inflation, divergence-safe cycling.

Ensembles are numpy float64 arrays of shape (B, N, d): B independent trajectories (or grid points of
a tuning sweep) at once, N members, d state components. Observations y are (B, p).
`inflation` and `radius` may be scalars or arrays of shape (B,) (one value per batch element, which
is how a tuning sweep runs many grid points in one batch).
"""
from __future__ import annotations

import numpy as np

from ..systems import System


def check_ensemble(E: np.ndarray, y: np.ndarray, system: System) -> None:
    """Raise a ValueError naming the bad shape."""
    if E.ndim != 3 or E.shape[2] != system.dim:
        raise ValueError(f"ensemble must have shape (B, N, {system.dim}), got {E.shape}")
    if E.shape[1] < 2:
        raise ValueError(f"ensemble size N must be at least 2, got N={E.shape[1]}")
    if y.shape != (E.shape[0], system.obs_dim):
        raise ValueError(f"observations must have shape ({E.shape[0]}, {system.obs_dim}), got {y.shape}")


def per_batch(value, name: str, lower: float, allow_none: bool = False, allow_inf: bool = False):
    """Validate a scalar-or-(B,) parameter; returns it as float or float array (None kept if allowed)."""
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be given")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    bad = np.isnan(arr) | (np.isinf(arr) & ~allow_inf) | (arr < lower)
    if arr.ndim > 1 or np.any(bad):
        raise ValueError(f"{name} must be a number >= {lower} (or one per trajectory), got {value!r}")
    return float(arr) if arr.ndim == 0 else arr


def finite_or_identity(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace batch items of M (..., k, k) holding non-finite values by the identity.

    LAPACK gufuncs fail the whole batch on one bad item; this keeps one diverging trajectory from
    taking down the others. Returns (safe M, mask of bad items); callers set those results to NaN.
    """
    bad = ~np.isfinite(M).all(axis=(-1, -2))
    if bad.any():
        M = np.where(bad[..., None, None], np.eye(M.shape[-1]), M)
    return M, bad


CHUNK_BYTES = 2**18  # rows of a state batch per model call: the temporaries stay in cache


def step_in_chunks(system: System, E: np.ndarray) -> np.ndarray:
    """system.step on an ensemble (..., d) in blocks of ~CHUNK_BYTES of states.

    Each row evolves on its own, so the result is bit-identical to one call; on a big batch (N=100 x
    dozens of trajectories) the blocks keep the integrator's temporaries in cache, 2-2.5x faster for
    KS and L96 as measured. Small batches go through in one call.
    """
    d = E.shape[-1]
    rows = max(1, CHUNK_BYTES // (8 * d))
    flat = E.reshape(-1, d)
    if len(flat) <= 2 * rows:
        return system.step(E)
    out = np.empty_like(flat)
    for i in range(0, len(flat), rows):
        out[i:i + rows] = system.step(flat[i:i + rows])
    return out.reshape(E.shape)


def inflate(E: np.ndarray, inflation) -> np.ndarray:
    """Multiplicative inflation of anomalies, v <- v + (alpha-1)(v - mean) (paper eq. 4.29 / C.8)."""
    if np.isscalar(inflation) and inflation == 1.0:
        return E
    alpha = np.reshape(inflation, (-1, 1, 1)) if np.ndim(inflation) else inflation
    mean = E.mean(axis=1, keepdims=True)
    return mean + alpha * (E - mean)


class EnsembleFilter:
    """Base class: subclasses implement `analysis`; `cycle` = forecast, analysis, inflation.

    Inflation is applied after the analysis (post-analysis, as in the paper's Remark 19 and DAPPER).
    """

    name = "base"
    localizes = False  # whether `radius` is used

    def __init__(self, system: System, sigma_y: float, inflation=1.0, radius=None):
        if not np.isfinite(sigma_y) or sigma_y <= 0:
            raise ValueError(f"sigma_y must be a positive number, got {sigma_y!r}")
        self.system = system
        self.sigma_y = float(sigma_y)
        self.inflation = per_batch(inflation, "inflation", 1.0)
        self.radius = per_batch(radius, "radius", 0.0, allow_none=True, allow_inf=True) if self.localizes else None

    @property
    def params(self) -> dict:
        """JSON-friendly parameters (inflation, radius) for reports."""
        as_json = lambda v: None if v is None else (v if np.isscalar(v) else np.asarray(v).tolist())
        return {"inflation": as_json(self.inflation), "radius": as_json(self.radius)}

    # The filter's state is its ensemble; the exact Kalman filter overrides these with (mean, cov).
    def initial_state(self, E0: np.ndarray, prior_mean: np.ndarray, prior_std: float):
        return E0.copy()

    @staticmethod
    def mean(state) -> np.ndarray:
        return state.mean(axis=1)

    @staticmethod
    def spread(state) -> np.ndarray:
        """Ensemble standard deviation per component, (B, d)."""
        return state.std(axis=1, ddof=1)

    def forecast(self, E: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.system.add_model_noise(step_in_chunks(self.system, E), rng)

    def analysis(self, E: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def cycle(self, E: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One assimilation cycle from the previous analysis E to the analysis at the new obs y."""
        Ea = self.analysis(self.forecast(E, rng), y, rng)
        return inflate(Ea, self.inflation)
