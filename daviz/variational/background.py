"""The static background-error covariance B of 4D-Var, estimated from the system's climatology.

Recipe (`climatological_covariance`): a free run of the model from `trajectories` truths put on the
attractor by the system's own burn-in (the "tune" random stream "variational-climatology", seed 0, so
never a test trajectory), `cycles` observation intervals each; the sample covariance C of all states.
Where the system is translation-invariant (periodic: L96, KS) C is averaged along its periodic diagonals,
which makes it exactly circulant (the symmetry the model has) and removes most of the sampling noise.

Conditioning (`background_covariance`): shrinkage towards a scaled identity,

    C_λ = (1 − λ) C + λ (tr C / d) I,      B = B_scale · C_λ,

so every eigenvalue of C_λ is at least λ·tr C/d and cond(B) ≤ 1 + (1 − λ)/λ · λ_max(C)/(tr C/d): with the
default λ = 0.1 at most 1 + 9·d whatever the sample. Measured: L63 cond 15.8 → 8.6, L96 5.8 → 4.8,
linear 1.57 → 1.50 (the climatologies are not ill-conditioned here; the shrinkage is a guarantee, and it
keeps B positive definite for systems whose sample covariance would be singular).
`B_scale` (tuned) turns the climatological spread into a background-error spread: cycling 4D-Var's
background is much closer to the truth than climatology is.
"""
from __future__ import annotations

import threading

import numpy as np

from ..seeding import stream
from ..systems import System, get_system

_cache: dict = {}
_lock = threading.Lock()
DEFAULT_SHRINKAGE = 0.1


def circulant_average(C: np.ndarray) -> np.ndarray:
    """C averaged along its periodic diagonals: the closest circulant matrix in Frobenius norm."""
    d = len(C)
    i = np.arange(d)
    lag = (i[None, :] - i[:, None]) % d
    profile = np.array([C[lag == k].mean() for k in range(d)])
    profile = 0.5 * (profile + profile[(-np.arange(d)) % d])  # symmetric in the lag
    return profile[lag]


def climatological_covariance(system: System | str, trajectories: int = 16, cycles: int = 2000) -> dict:
    """{"mean": (d,), "cov": (d, d)} of the free-running model (cached per process, thread-safe)."""
    system = get_system(system) if isinstance(system, str) else system
    key = (system.name, system.dim, int(trajectories), int(cycles))
    with _lock:
        if key not in _cache:
            x = system.initial_truth(stream(0, "tune", "variational-climatology"), int(trajectories))
            total = np.zeros(system.dim)
            outer = np.zeros((system.dim, system.dim))
            for _ in range(int(cycles)):
                x = system.step(x)
                total += x.sum(0)
                outer += x.T @ x
            n = int(cycles) * int(trajectories)
            mean = total / n
            cov = outer / n - np.outer(mean, mean)
            if system.periodic:
                mean = np.full_like(mean, mean.mean())
                cov = circulant_average(cov)
            cov = 0.5 * (cov + cov.T)
            _cache[key] = {"mean": mean, "cov": cov}
        return _cache[key]


def shrink(C: np.ndarray, shrinkage: float = DEFAULT_SHRINKAGE) -> np.ndarray:
    """(1 − λ) C + λ (tr C / d) I."""
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage!r}")
    d = len(C)
    return (1.0 - shrinkage) * C + shrinkage * (np.trace(C) / d) * np.eye(d)


def background_covariance(system: System | str, B_scale: float, shrinkage: float = DEFAULT_SHRINKAGE) -> np.ndarray:
    """B = B_scale · shrink(C_clim, λ) (d, d)."""
    if not np.isfinite(B_scale) or B_scale <= 0:
        raise ValueError(f"B_scale must be a positive number, got {B_scale!r}")
    return float(B_scale) * shrink(climatological_covariance(system)["cov"], shrinkage)


def sqrt_and_inverse(B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric square root U = B^{1/2} and its inverse (B symmetric positive definite)."""
    w, V = np.linalg.eigh(0.5 * (B + B.T))
    if not np.all(w > 0):
        raise ValueError("the background covariance is not positive definite")
    return (V * np.sqrt(w)) @ V.T, (V / np.sqrt(w)) @ V.T


def condition_number(B: np.ndarray) -> float:
    w = np.linalg.eigvalsh(B)
    return float(w[-1] / w[0])
