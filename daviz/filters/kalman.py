"""The exact Kalman filter of the linear-Gaussian system: the reference every ensemble filter should track."""
from __future__ import annotations

import numpy as np

from ..systems import LinearGaussian
from .base import EnsembleFilter


class KalmanFilter(EnsembleFilter):
    """Mean (B, d) per trajectory and one covariance (d, d): the covariance does not depend on the data.

    Its state is a pair (mean, cov) instead of an ensemble; it starts from the prior the ensembles are
    drawn from, N(v0†, std² I).
    """

    name = "kalman"

    def __init__(self, system, sigma_y, inflation=1.0, radius=None):
        if not isinstance(system, LinearGaussian):
            raise ValueError(f"the exact Kalman filter needs the linear-Gaussian system, not {system.title}")
        super().__init__(system, sigma_y, 1.0, None)

    def initial_state(self, E0, prior_mean, prior_std):
        return prior_mean.copy(), prior_std**2 * np.eye(self.system.dim)

    def cycle(self, state, y, rng):
        m, P = state
        A = self.system.A
        H = np.eye(self.system.dim)[self.system.obs_idx]
        m = m @ A.T
        P = A @ P @ A.T + self.system.model_noise_std**2 * np.eye(self.system.dim)
        S = H @ P @ H.T + self.sigma_y**2 * np.eye(len(H))
        K = np.linalg.solve(S, H @ P).T  # P Hᵀ S⁻¹ (S and P symmetric)
        m = m + (y - m @ H.T) @ K.T
        P = P - K @ H @ P
        return m, 0.5 * (P + P.T)

    @staticmethod
    def mean(state):
        return state[0]

    @staticmethod
    def spread(state):
        m, P = state
        return np.broadcast_to(np.sqrt(np.diag(P)), m.shape)
