"""The twin experiment: a hidden truth, noisy observations of it, and filters stepping in lock-step.

Random streams are separate and named (seeding.stream): truth, observation noise, initial ensemble
and one stream per filter. Adding or removing a filter therefore never changes the truth, the
observations or the other filters' noise. All filters start from the same initial ensemble.

`replicas` repeats the same truth/observations/initial ensemble k times along the batch (copy-major:
batch index = copy * trajectories + trajectory): a tuning sweep puts one grid point in each copy.
"""
from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
from tqdm.auto import tqdm

from .filters.base import EnsembleFilter
from .seeding import stream
from .systems import System, get_system


class TwinExperiment:
    def __init__(self, system: System | str, sigma_y: float, N: int, filters: Mapping[str, EnsembleFilter],
                 trajectories: int = 1, seed: int = 0, purpose: str = "test", replicas: int = 1):
        self.system = get_system(system) if isinstance(system, str) else system
        if not np.isfinite(sigma_y) or sigma_y <= 0:
            raise ValueError(f"sigma_y must be a positive number, got {sigma_y!r}")
        if int(N) != N or N < 2:
            raise ValueError(f"ensemble size N must be an integer >= 2, got N={N!r}")
        if int(trajectories) != trajectories or trajectories < 1 or replicas < 1:
            raise ValueError(f"need trajectories >= 1 and replicas >= 1, got {trajectories!r}, {replicas!r}")
        self.sigma_y, self.N = float(sigma_y), int(N)
        self.trajectories, self.replicas = int(trajectories), int(replicas)
        self.seed, self.purpose = seed, purpose
        self._truth_rng = stream(seed, purpose, "truth")
        self._obs_rng = stream(seed, purpose, "observation")
        init_rng = stream(seed, purpose, "initial-ensemble")

        sys_, n = self.system, self.trajectories
        self._truth = sys_.initial_truth(self._truth_rng, n)  # (n, d); tiled on access
        std = sys_.init_ensemble_std
        E0 = self._tile(self._truth[:, None, :] + std * init_rng.standard_normal((n, self.N, sys_.dim)))
        self.cycle = 0
        self.observation: np.ndarray | None = None
        self.filters = dict(filters)
        self.states = {name: f.initial_state(E0, self.truth, std) for name, f in self.filters.items()}
        self._rngs = {name: stream(seed, purpose, f"filter:{name}") for name in self.filters}
        B = n * self.replicas
        self.diverged = {name: np.zeros(B, dtype=bool) for name in self.filters}
        self.seconds = {name: 0.0 for name in self.filters}
        self._error_sum = {name: np.zeros(B) for name in self.filters}
        self._truth_norm_sum = np.zeros(B)

    def _tile(self, a: np.ndarray) -> np.ndarray:
        return np.tile(a, (self.replicas,) + (1,) * (a.ndim - 1)) if self.replicas > 1 else a

    @property
    def truth(self) -> np.ndarray:
        """(B, d) current truth."""
        return self._tile(self._truth)

    @property
    def ensembles(self) -> dict:
        """Current analysis state per filter: (B, N, d) ensembles ((mean, cov) for the Kalman filter)."""
        return self.states

    def mean(self, name: str) -> np.ndarray:
        return self.filters[name].mean(self.states[name])

    def spread(self, name: str) -> np.ndarray:
        return self.filters[name].spread(self.states[name])

    def step(self) -> None:
        """Advance the truth, draw the observation, and run one cycle of every filter."""
        sys_ = self.system
        truth = sys_.step(self._truth)
        if sys_.model_noise_std > 0:
            truth = truth + sys_.model_noise_std * self._truth_rng.standard_normal(truth.shape)
        self._truth = truth
        y = self._tile(sys_.observe(truth) + self.sigma_y * self._obs_rng.standard_normal((len(truth), sys_.obs_dim)))
        self.observation = y
        truth_b = self.truth
        self.cycle += 1
        self._truth_norm_sum += np.linalg.norm(truth_b, axis=-1)
        for name, f in self.filters.items():
            dead = self.diverged[name]
            if dead.all():
                continue
            start = time.perf_counter()
            with np.errstate(all="ignore"):
                try:
                    state = f.cycle(self.states[name], y, self._rngs[name])
                except np.linalg.LinAlgError:  # a non-finite ensemble broke a decomposition
                    state = np.full_like(self.states[name], np.nan)
                mean = f.mean(state)
                bad = ~np.isfinite(mean).all(axis=-1)
                if isinstance(state, np.ndarray):
                    bad |= ~np.isfinite(state).all(axis=(1, 2))
                    # Freeze diverged trajectories at a harmless finite value so the batch goes on.
                    newly = bad & ~dead
                    state[bad] = np.where(newly[bad, None, None], 0.0, self.states[name][bad])
                dead |= bad
                self._error_sum[name] += np.where(dead, 0.0, np.linalg.norm(f.mean(state) - truth_b, axis=-1))
            self.states[name] = state
            self.seconds[name] += time.perf_counter() - start

    def running_rrmse(self) -> dict[str, np.ndarray]:
        """R-RMSE (5.2) over the cycles so far, per filter and trajectory (NaN where diverged)."""
        denom = np.where(self._truth_norm_sum > 0, self._truth_norm_sum, np.nan)
        return {name: np.where(self.diverged[name], np.nan, err / denom) for name, err in self._error_sum.items()}

    def run(self, cycles: int, progress: bool = False) -> dict[str, np.ndarray]:
        """Run `cycles` more cycles; returns the per-trajectory R-RMSE of each filter."""
        if int(cycles) != cycles or cycles < 1:
            raise ValueError(f"cycles must be a positive integer, got {cycles!r}")
        for _ in tqdm(range(int(cycles)), disable=not progress, desc=f"{self.system.name} N={self.N}", leave=False):
            self.step()
        return self.running_rrmse()
