"""Kuramoto–Sivashinsky (paper §5.3, Table 2): u_t + u_xxxx + u_xx + u u_x = 0 on [0, 32π), periodic.

Fourier pseudo-spectral in space (d=128 points), ETDRK4 in time (4 steps of 0.25 per observation
interval dt=1), observe every 8th grid point. The state is kept in physical space between
observation times; the stiff linear part is integrated exactly in Fourier space.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from array_api_compat import array_namespace

from .base import System
from .integrators import ConstantCache, etdrk4_coefficients, etdrk4_step


@dataclass(frozen=True, eq=False)
class KuramotoSivashinsky(System):
    length: float = 32 * np.pi

    @cached_property
    def _constants(self) -> ConstantCache:
        k = 2 * np.pi / self.length * np.arange(self.dim // 2 + 1)
        linear = k**2 - k**4  # Fourier symbol of -d²/dx² - d⁴/dx⁴
        deriv = 1j * k
        deriv[-1] = 0.0  # the Nyquist mode's derivative is ambiguous for a real field: drop it
        E, E2, Q, f1, f2, f3 = etdrk4_coefficients(tuple(linear), self.dt_obs / self.substeps)
        return ConstantCache(g=-0.5 * deriv, E=E, E2=E2, Q=Q, f1=f1, f2=f2, f3=f3)

    @cached_property
    def _numpy_constants(self) -> tuple:
        """(g, E, E2, Q, f1, f2, f3) as complex128 numpy arrays, for the in-place numpy path."""
        c = self._constants.like(np.zeros(1))
        return tuple(np.asarray(c[k], dtype=complex) for k in ("g", "E", "E2", "Q", "f1", "f2", "f3"))

    def step(self, x):
        if isinstance(x, np.ndarray) and x.dtype == np.float64:
            return self._step_numpy(x)
        xp = array_namespace(x)
        c = self._constants.like(x)
        n = self.dim

        def nonlinear(v_hat):  # -(u²/2)_x in Fourier space
            u = xp.fft.irfft(v_hat, n=n, axis=-1)
            return c["g"] * xp.fft.rfft(u * u, axis=-1)

        v = xp.fft.rfft(x, axis=-1)
        for _ in range(self.substeps):
            v = etdrk4_step(v, nonlinear, c)
        return xp.fft.irfft(v, n=n, axis=-1)

    def _step_numpy(self, x: np.ndarray) -> np.ndarray:
        """`step` for float64 numpy: the same ETDRK4 arithmetic (bit for bit, as measured), but in place
        with complex coefficients and E2·v computed once, ~20% faster (most of a KS filter's forecast)."""
        g, E, E2, Q, f1, f2, f3 = self._numpy_constants
        n = self.dim

        def nonlinear(v_hat):  # -(u²/2)_x in Fourier space
            u = np.fft.irfft(v_hat, n=n, axis=-1)
            u *= u
            out = np.fft.rfft(u, axis=-1)
            out *= g
            return out

        v = np.fft.rfft(x, axis=-1)
        for _ in range(self.substeps):
            Nv = nonlinear(v)
            E2v = E2 * v
            a = Q * Nv
            a += E2v
            Na = nonlinear(a)
            b = Q * Na
            b += E2v
            Nb = nonlinear(b)
            c = 2 * Nb
            c -= Nv
            c *= Q
            c += E2 * a
            Nc = nonlinear(c)
            out = E * v
            out += f1 * Nv
            Na += Nb
            Na *= 2
            Na *= f2
            out += Na
            Nc *= f3
            out += Nc
            v = out
        return np.fft.irfft(v, n=n, axis=-1)

    def burn_in_start(self, rng, batch):
        # The standard Kassam–Trefethen start u0(x) = cos(2πx/L)(1 + sin(2πx/L)): periodic, spatial
        # mean 0. App. C.3 prints cos(2x/L)(1 + sin(2x/L)), a typo: that function is not periodic on
        # [0, L) and has mean 0.668, which KS conserves forever (the pattern then drifts past the
        # sensors and is far easier to track). The random burn-in length alone would not separate the
        # trajectories, so each start gets a small perturbation, centred so the mean stays exactly 0.
        x = np.arange(self.dim) * self.length / self.dim
        u0 = np.cos(2 * np.pi * x / self.length) * (1 + np.sin(2 * np.pi * x / self.length))
        noise = 1e-3 * rng.standard_normal((batch, self.dim))
        return u0[None, :] + noise - noise.mean(axis=-1, keepdims=True)


def make_kuramoto_sivashinsky(dim: int = 128, obs_every: int = 8) -> KuramotoSivashinsky:
    return KuramotoSivashinsky(
        name="ks", title="Kuramoto–Sivashinsky", dim=dim, obs_idx=np.arange(0, dim, obs_every),
        dt_obs=1.0, substeps=4, clamp=10.0, periodic=True, test_cycles=2000,
        train_lr=5e-4, train_batch=256, radius_grid=(1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0), fallback_radius=4.0,
        radius_bounds=(0.5, 40.0), field_limits=(-3.0, 3.0), error_limit=1.5,
    )
