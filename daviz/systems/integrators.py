"""Time integrators shared by the numpy and torch code paths.

Everything here works on arrays of shape (..., d) from any array-API namespace (numpy or torch,
through `array_api_compat`), so the baselines and the differentiable MNMEF rollout integrate the
very same model.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from array_api_compat import array_namespace, device


def rk4_step(rhs, x, h: float):
    """One classical Runge–Kutta 4 step of dx/dt = rhs(x)."""
    k1 = rhs(x)
    k2 = rhs(x + (0.5 * h) * k1)
    k3 = rhs(x + (0.5 * h) * k2)
    k4 = rhs(x + h * k3)
    return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


@lru_cache(maxsize=32)
def etdrk4_coefficients(linear: tuple, h: float, contour_points: int = 64):
    """ETDRK4 coefficients (Cox & Matthews 2002) by the contour integral of Kassam & Trefethen (2005).

    `linear` holds the diagonal linear operator L (one value per Fourier mode). The phi-functions
    are evaluated as means over `contour_points` points on a unit circle around each h*L, which
    avoids the cancellation error of the direct formulas at small |h*L|.
    Returns float64 numpy arrays (E, E2, Q, f1, f2, f3).
    """
    L = np.asarray(linear, dtype=float)
    E = np.exp(h * L)
    E2 = np.exp(h * L / 2)
    r = np.exp(1j * np.pi * (np.arange(1, contour_points + 1) - 0.5) / contour_points)
    LR = h * L[:, None] + r[None, :]
    Q = h * np.real(np.mean((np.exp(LR / 2) - 1) / LR, axis=1))
    f1 = h * np.real(np.mean((-4 - LR + np.exp(LR) * (4 - 3 * LR + LR**2)) / LR**3, axis=1))
    f2 = h * np.real(np.mean((2 + LR + np.exp(LR) * (LR - 2)) / LR**3, axis=1))
    f3 = h * np.real(np.mean((-4 - 3 * LR - LR**2 + np.exp(LR) * (4 - LR)) / LR**3, axis=1))
    return E, E2, Q, f1, f2, f3


def etdrk4_step(v, nonlinear, c: dict):
    """One ETDRK4 step (Cox & Matthews 2002) of v' = L v + N(v) for diagonal L, given the
    coefficients c = {E, E2, Q, f1, f2, f3} of `etdrk4_coefficients` (as arrays like v)."""
    Nv = nonlinear(v)
    a = c["E2"] * v + c["Q"] * Nv
    Na = nonlinear(a)
    b = c["E2"] * v + c["Q"] * Na
    Nb = nonlinear(b)
    cc = c["E2"] * a + c["Q"] * (2 * Nb - Nv)
    Nc = nonlinear(cc)
    return c["E"] * v + Nv * c["f1"] + 2 * (Na + Nb) * c["f2"] + Nc * c["f3"]


class ConstantCache:
    """Numpy constants converted once per (namespace, dtype, device) and reused."""

    def __init__(self, **arrays: np.ndarray):
        self._numpy = arrays
        self._converted: dict = {}

    def like(self, x) -> dict:
        xp = array_namespace(x)
        key = (xp.__name__, str(x.dtype), str(device(x)))
        if key not in self._converted:
            complex_dtype = xp.complex64 if x.dtype == xp.float32 else xp.complex128
            out = {}
            for name, value in self._numpy.items():
                dtype = complex_dtype if np.iscomplexobj(value) else x.dtype
                out[name] = xp.asarray(value, dtype=dtype, device=device(x))
            self._converted[key] = out
        return self._converted[key]
