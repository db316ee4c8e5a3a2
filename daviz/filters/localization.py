"""Gaspari–Cohn localization with DAPPER's radius convention, on periodic index distances."""
from __future__ import annotations

import numpy as np

from ..systems import System

# DAPPER's convention: the GC half-width is c = radius * sqrt(10/3), so the taper reaches zero at
# 2c and, near the origin, matches a Gaussian of length scale `radius`.
GC_SCALE = np.sqrt(10.0 / 3.0)


def gaspari_cohn(distance, radius) -> np.ndarray:
    """Gaspari–Cohn (1999) fifth-order taper, eq. (4.10); 1 at distance 0, 0 beyond 2c.

    `radius` broadcasts against `distance`; radius=inf gives all ones (no localization).
    """
    distance = np.asarray(distance, dtype=float)
    radius = np.asarray(radius, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(np.isinf(radius), 0.0, distance / (GC_SCALE * radius))
    inner = 1 - 5 / 3 * r**2 + 5 / 8 * r**3 + 1 / 2 * r**4 - 1 / 4 * r**5
    with np.errstate(divide="ignore"):
        outer = 4 - 5 * r + 5 / 3 * r**2 + 5 / 8 * r**3 - 1 / 2 * r**4 + 1 / 12 * r**5 - 2 / (3 * r)
    out = np.where(r <= 1, inner, np.where(r < 2, outer, 0.0))
    return np.clip(out, 0.0, 1.0)


def state_obs_distances(system: System) -> tuple[np.ndarray, np.ndarray]:
    """Periodic distances state-to-observation (d, p) and observation-to-observation (p, p)."""
    D = system.distances
    if D is None:
        raise ValueError(f"{system.title} has no spatial structure: localization is off")
    return D[:, system.obs_idx], D[np.ix_(system.obs_idx, system.obs_idx)]


def covariance_localization(system: System, radius) -> tuple[np.ndarray, np.ndarray]:
    """GC weight matrices L_vh (…, d, p) and L_hh (…, p, p); radius scalar or (B,)."""
    d_vh, d_hh = state_obs_distances(system)
    r = np.reshape(radius, (-1, 1, 1)) if np.ndim(radius) else radius
    return gaspari_cohn(d_vh, r), gaspari_cohn(d_hh, r)
