"""ESRF / ETKF: the deterministic ensemble transform with the symmetric square root (Hunt et al. 2007).

Everything is computed in observation space through the eigen-decomposition of the p×p Gram
matrix G = SᵀS of the scaled observation anomalies S = Y/σ_y (N×p), so a step costs a p×p eigh
whatever N is. With M = (N−1)I + S Sᵀ (the ensemble-space precision):
    w̄ = M⁻¹ S δ                      (mean weights, δ = (y − h̄)/σ_y)
    T = √(N−1) M^(−1/2) = I + S V diag(g) Vᵀ Sᵀ   (symmetric transform)
with G = V Λ Vᵀ and g(λ) = −1 / (√(N−1+λ) (√(N−1) + √(N−1+λ))), a form without cancellation.
LETKF reuses this with per-grid-point observation weights.
"""
from __future__ import annotations

import numpy as np

from .base import EnsembleFilter, check_ensemble, finite_or_identity


def gram_eigen(S):
    """Eigen-decomposition of SᵀS for S (..., N, p): returns (S V, V, λ ≥ 0); NaN for non-finite items."""
    G, bad = finite_or_identity(np.swapaxes(S, -1, -2) @ S)
    lam, V = np.linalg.eigh(G)
    lam = np.where(bad[..., None], np.nan, np.clip(lam, 0.0, None))
    return S @ V, V, lam


def inverse_sqrt_factor(a, lam):
    """g(λ) with √a (a I + S Sᵀ)^(−1/2) = I + S V diag(g) Vᵀ Sᵀ, free of cancellation at small λ."""
    return -1.0 / (np.sqrt(a + lam) * (np.sqrt(a) + np.sqrt(a + lam)))


def transform_analysis(A, S, delta):
    """Analysis anomalies+mean increment for anomalies A (..., N, m), scaled obs anomalies S (..., N, p)
    and scaled innovation delta (..., p). Returns (..., N, m): (w̄ + T) applied to A, i.e. the
    analysis ensemble minus the forecast mean.

    Works in observation space (p×p eigen-decompositions) when p <= N, else in ensemble space (N×N):
    the same transform, on the smaller matrix.
    """
    N, p = S.shape[-2:]
    if N < p:
        return _transform_analysis_ensemble_space(A, S, delta)
    a = N - 1.0
    SV, V, lam = gram_eigen(S)  # SV: (..., N, p)
    g = inverse_sqrt_factor(a, lam)
    w_mean = SV @ ((np.swapaxes(V, -1, -2) @ delta[..., None])[..., 0] / (a + lam))[..., None]  # (..., N, 1)
    SVt_A = np.swapaxes(SV, -1, -2) @ A  # (..., p, m)
    TA = A + SV @ (g[..., None] * SVt_A)
    return TA + np.swapaxes(w_mean, -1, -2) @ A


def _transform_analysis_ensemble_space(A, S, delta):
    """`transform_analysis` through S Sᵀ = U diag(μ) Uᵀ (N×N): with M = a I + S Sᵀ,
    w̄ = U diag(1/(a+μ)) Uᵀ S δ and T = √a M^(−1/2) = I + U diag(μ g(μ)) Uᵀ."""
    a = S.shape[-2] - 1.0
    M, bad = finite_or_identity(S @ np.swapaxes(S, -1, -2))
    mu, U = np.linalg.eigh(M)
    mu = np.where(bad[..., None], np.nan, np.clip(mu, 0.0, None))
    Ut = np.swapaxes(U, -1, -2)
    w_mean = U @ ((Ut @ (S @ delta[..., None]))[..., 0] / (a + mu))[..., None]  # (..., N, 1)
    TA = A + U @ ((mu * inverse_sqrt_factor(a, mu))[..., None] * (Ut @ A))
    return TA + np.swapaxes(w_mean, -1, -2) @ A


def etkf_analysis(E, y, obs_idx, sigma_y):
    """The global ETKF analysis of ensembles E (B, N, d) given observations y (B, p) of E[..., obs_idx]."""
    mean = E.mean(axis=1, keepdims=True)
    Hx = E[..., obs_idx]
    h_mean = Hx.mean(axis=1)
    S = (Hx - h_mean[:, None, :]) / sigma_y
    delta = (y - h_mean) / sigma_y
    return mean + transform_analysis(E - mean, S, delta)


class ESRF(EnsembleFilter):
    """Ensemble square root filter in its ETKF form (symmetric square root), no localization."""

    name = "esrf"

    def analysis(self, E, y, rng):
        check_ensemble(E, y, self.system)
        return etkf_analysis(E, y, self.system.obs_idx, self.sigma_y)
