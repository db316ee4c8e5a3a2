"""Lorenz '63 (paper §5.4, Table 3): sigma=10, rho=28, beta=8/3, observe x, dt=0.15 with 5 RK4 steps."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from array_api_compat import array_namespace

from .base import ODESystem


@dataclass(frozen=True, eq=False)
class Lorenz63(ODESystem):
    sigma: float = 10.0
    rho: float = 28.0
    beta: float = 8.0 / 3.0

    def rhs(self, v):
        xp = array_namespace(v)
        x, y, z = v[..., 0], v[..., 1], v[..., 2]
        return xp.stack(
            [self.sigma * (y - x), x * (self.rho - z) - y, x * y - self.beta * z], axis=-1
        )

    def burn_in_start(self, rng, batch):
        return rng.normal(0.0, 1.0, size=(batch, 3))


def make_lorenz63() -> Lorenz63:
    return Lorenz63(
        name="l63", title="Lorenz '63", dim=3, obs_idx=np.array([0]),
        dt_obs=0.15, substeps=5, clamp=60.0, periodic=False,
        train_lr=1e-3, train_batch=1024, field_limits=(-20.0, 45.0), error_limit=6.0,
        component_limits=((-22.0, 22.0), (-28.0, 28.0), (0.0, 52.0)),
    )
