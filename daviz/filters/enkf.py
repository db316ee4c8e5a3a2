"""Stochastic EnKF with perturbed observations (Burgers et al. 1998), optionally localized.

The gain is K = (C_vh ∘ L_vh)(C_hh ∘ L_hh + Γ)⁻¹ built from the forecast sample covariances
(eq. 4.33), applied through a linear solve. MNMEF's analysis reduces to exactly this update when its
learned corrections are zero, its localization weights are 1 and its inflation is off.
"""
from __future__ import annotations

import numpy as np

from .base import EnsembleFilter, check_ensemble, finite_or_identity
from .localization import covariance_localization


def observation_perturbations(rng: np.random.Generator, B: int, N: int, p: int, sigma_y: float) -> np.ndarray:
    """(B, N, p) draws of N(0, sigma_y² I), centred over the ensemble and rescaled by sqrt(N/(N-1))
    so their sample mean is 0 and their sample covariance has expectation sigma_y² I
    (as DAPPER and the authors' code do)."""
    D = rng.standard_normal((B, N, p))
    D -= D.mean(axis=1, keepdims=True)
    return sigma_y * np.sqrt(N / (N - 1)) * D


def perturbed_obs_analysis(E, y, obs_idx, sigma_y, D, loc_vh=None, loc_hh=None):
    """v_a⁽ⁿ⁾ = v⁽ⁿ⁾ + K (y − h(v⁽ⁿ⁾) − D⁽ⁿ⁾) for E (B, N, d), y (B, p), D (B, N, p).

    loc_vh (…, d, p) and loc_hh (…, p, p) multiply the sample covariances (None: no localization).
    """
    N = E.shape[1]
    Hx = E[..., obs_idx]
    A = E - E.mean(axis=1, keepdims=True)
    Y = Hx - Hx.mean(axis=1, keepdims=True)
    C_vh = np.einsum("bnd,bnp->bdp", A, Y) / (N - 1)
    C_hh = np.einsum("bnp,bnq->bpq", Y, Y) / (N - 1)
    if loc_vh is not None:
        C_vh = C_vh * loc_vh
        C_hh = C_hh * loc_hh
    S, bad = finite_or_identity(C_hh + sigma_y**2 * np.eye(len(obs_idx)))
    innovations = y[:, None, :] - Hx - D  # (B, N, p)
    # K δ = C_vh S⁻¹ δ: solve S X = δᵀ for all members at once (S symmetric positive definite).
    X = np.linalg.solve(S, np.swapaxes(innovations, 1, 2))  # (B, p, N)
    X[bad] = np.nan  # a diverged trajectory stays non-finite and is flagged by the caller
    return E + np.swapaxes(C_vh @ X, 1, 2)


class EnKF(EnsembleFilter):
    """Perturbed-observation EnKF; Gaspari–Cohn covariance localization when `radius` is set."""

    name = "enkf"
    localizes = True

    def analysis(self, E, y, rng):
        check_ensemble(E, y, self.system)
        B, N, _ = E.shape
        D = observation_perturbations(rng, B, N, self.system.obs_dim, self.sigma_y)
        loc = (None, None)
        if self.radius is not None and self.system.periodic:
            loc = covariance_localization(self.system, self.radius)
        return perturbed_obs_analysis(E, y, self.system.obs_idx, self.sigma_y, D, *loc)
