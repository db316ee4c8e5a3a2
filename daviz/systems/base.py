"""The common shape of a dynamical system: state (..., d), index observations, periodic distances."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .integrators import rk4_step


def periodic_index_distances(dim: int) -> np.ndarray:
    """(dim, dim) matrix of min(|i-j|, dim-|i-j|): distances on a ring of grid points."""
    i = np.arange(dim)
    diff = np.abs(i[:, None] - i[None, :])
    return np.minimum(diff, dim - diff)


@dataclass(frozen=True, eq=False)
class System:
    """A discrete-time system observed at `obs_idx` every `dt_obs` time units.

    Subclasses implement `step(x)` for x of shape (..., d) as numpy or torch arrays; the same
    code serves both (array API). `initial_truth` puts B states on the attractor by burn-in.
    """

    name: str
    title: str
    dim: int
    obs_idx: np.ndarray = field(repr=False)
    dt_obs: float
    substeps: int
    clamp: float  # MNMEF clamps states to ±clamp (Table C.8)
    periodic: bool  # localization by periodic index distance (False: no localization)
    model_noise_std: float = 0.0  # sigma_v; 0 for the nonlinear systems, as in the paper's runs
    init_ensemble_std: float = 1.0  # initial ensemble N(v0†, std² I), App. C.3
    burn_in: tuple[int, int] = (1000, 2000)  # random burn-in length range, in observation steps
    test_cycles: int = 1500  # length of the paper's test trajectories (L96, L63 1500; KS 2000)
    # What the tools need to know per system lives here, not in per-system tables of each tool:
    train_lr: float = 1e-3  # MNMEF pretraining learning rate and batch size (Table C.8)
    train_batch: int = 512
    radius_grid: tuple[float, ...] = ()  # `daviz tune`'s coarse localization radii (periodic systems)
    fallback_inflation: float = 1.05  # inflation and localization radius used where nothing is tuned
    fallback_radius: float | None = None
    radius_bounds: tuple[float, float] = (0.5, 10.0)  # the explorer's radius slider
    field_limits: tuple[float, float] = (-1.0, 1.0)  # the explorer's colour range for the state (~0.5/99.5 %)
    error_limit: float = 1.0  # ... and for |error| and spread, from 0
    component_limits: tuple[tuple[float, float], ...] = ()  # y ranges of per-component plots (no Hovmöller)

    @property
    def obs_dim(self) -> int:
        return len(self.obs_idx)

    @property
    def distances(self) -> np.ndarray | None:
        """Periodic index distances between state components, or None where localization is off."""
        return periodic_index_distances(self.dim) if self.periodic else None

    def observe(self, x):
        """h(x): the observed components, for numpy or torch x of shape (..., d)."""
        return x[..., self.obs_idx]

    def step(self, x):
        """Advance x (..., d) by one observation interval dt_obs."""
        raise NotImplementedError

    def add_model_noise(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """x + σ_v·ξ with ξ ~ N(0, I) drawn from rng; x itself (no draw) when the system has no model noise."""
        if self.model_noise_std <= 0:
            return x
        return x + self.model_noise_std * rng.standard_normal(x.shape)

    def burn_in_start(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """(batch, d) states from which the burn-in starts."""
        raise NotImplementedError

    def initial_truth(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """(batch, d) initial truths on the attractor (App. C.3).

        Each trajectory is run for its own random number of steps in `burn_in`; the paper draws
        10^3 to 5·10^5 steps. Past 10^3 steps (hundreds of Lyapunov times) the state is already
        distributed as the invariant measure, so the default range stops at 2000 to keep start-up
        cheap; pass `burn_in=(1000, 500_000)` through `dataclasses.replace` for the literal recipe.
        """
        lo, hi = self.burn_in
        lengths = rng.integers(lo, hi + 1, size=batch)
        x = self.burn_in_start(rng, batch)
        out = np.empty_like(x)
        for n in range(int(lengths.max()) + 1):
            done = lengths == n
            out[done] = x[done]
            if n < lengths.max():
                x = self.step(x)
        return out


@dataclass(frozen=True, eq=False)
class ODESystem(System):
    """A system given by dx/dt = rhs(x), integrated with `substeps` RK4 steps per observation interval."""

    def rhs(self, x):
        raise NotImplementedError

    def step(self, x):
        h = self.dt_obs / self.substeps
        for _ in range(self.substeps):
            x = rk4_step(self.rhs, x, h)
        return x
