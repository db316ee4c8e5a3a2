"""The linear-Gaussian system of App. C.6, whose exact filter is the Kalman filter.

d=10, v_{j+1} = A v_j + xi with A orthogonal (all |eigenvalues| = 1, marginally stable),
xi ~ N(0, sigma_v² I) with sigma_v = 0.01, every other coordinate observed, v0 ~ N(0, I).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .base import System
from .integrators import ConstantCache


def orthogonal_matrix(dim: int, seed: int) -> np.ndarray:
    """A fixed random orthogonal matrix (QR of a Gaussian matrix, signs fixed so it is unique)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


@dataclass(frozen=True, eq=False)
class LinearGaussian(System):
    matrix_seed: int = 2024

    @cached_property
    def A(self) -> np.ndarray:
        return orthogonal_matrix(self.dim, self.matrix_seed)

    @cached_property
    def _constants(self) -> ConstantCache:
        return ConstantCache(At=self.A.T)

    def step(self, x):
        return x @ self._constants.like(x)["At"]

    def burn_in_start(self, rng, batch):
        return rng.standard_normal((batch, self.dim))

    def initial_truth(self, rng, batch):
        return self.burn_in_start(rng, batch)  # v0 ~ N(0, I): no attractor to reach


def make_linear_gaussian(dim: int = 10) -> LinearGaussian:
    return LinearGaussian(
        name="linear", title="Linear-Gaussian", dim=dim, obs_idx=np.arange(0, dim, 2),
        dt_obs=1.0, substeps=1, clamp=1e6, periodic=False, model_noise_std=0.01,
        train_lr=1e-3, train_batch=512, fallback_inflation=1.0,  # linear and exact: no inflation needed
    )
