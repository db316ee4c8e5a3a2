"""Lorenz '96 (paper §5.2, Table 1): d=40, F=8, observe every 4th component, dt=0.15 with 5 RK4 steps."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from array_api_compat import array_namespace

from .base import ODESystem


@dataclass(frozen=True, eq=False)
class Lorenz96(ODESystem):
    forcing: float = 8.0

    def rhs(self, x):
        if isinstance(x, np.ndarray):  # np.roll's bookkeeping cost most of a numpy step; gathers give the same values
            up, down, down2 = _neighbours(x.shape[-1])
            return (x[..., up] - x[..., down2]) * x[..., down] - x + self.forcing
        xp = array_namespace(x)
        return (xp.roll(x, -1, axis=-1) - xp.roll(x, 2, axis=-1)) * xp.roll(x, 1, axis=-1) - x + self.forcing

    def burn_in_start(self, rng, batch):
        return rng.normal(5.0, 1.0, size=(batch, self.dim))


@lru_cache(maxsize=8)
def _neighbours(dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of x_{i+1}, x_{i-1}, x_{i-2} on the ring (the values np.roll(x, -1 / 1 / 2) puts at i)."""
    i = np.arange(dim)
    return (i + 1) % dim, (i - 1) % dim, (i - 2) % dim


def make_lorenz96(dim: int = 40, obs_every: int = 4) -> Lorenz96:
    # Table 1 observes u1, u5, ..., u37 (1-based), i.e. indices 0, 4, ..., 36.
    return Lorenz96(
        name="l96", title="Lorenz '96", dim=dim, obs_idx=np.arange(0, dim, obs_every),
        dt_obs=0.15, substeps=5, clamp=20.0, periodic=True,
        train_lr=1e-3, train_batch=512, radius_grid=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0), fallback_radius=3.0,
        radius_bounds=(0.5, 20.0), field_limits=(-7.0, 12.0), error_limit=3.0,
    )
