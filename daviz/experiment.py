"""The twin experiment: a hidden truth, noisy observations of it, and filters stepping in lock-step.

Random streams are separate and named (seeding.stream): truth, observation noise, initial ensemble
and one stream per filter. Adding or removing a filter therefore never changes the truth, the
observations or the other filters' noise. All filters start from the same initial ensemble.

`replicas` repeats the same truth/observations/initial ensemble k times along the batch (copy-major:
batch index = copy * trajectories + trajectory): a tuning sweep puts one grid point in each copy.

Two failure marks per filter and trajectory:
- diverged: the ensemble became non-finite (sticky; the trajectory is frozen and excluded from R-RMSE).
- lost track: the error stays finite but is no better than knowing nothing. Precisely, the R-RMSE over
  the last K = LOST_TRACK_WINDOW analysis cycles, Σ‖v̄_j − v†_j‖ / Σ‖v†_j‖ over those cycles, is above the
  system's climatological level: the R-RMSE of always predicting the climatological mean μ,
  E‖v − μ‖ / E‖v‖ over the invariant measure (`climatology`; L63 ≈ 0.50, L96 ≈ 0.84, KS ≈ 1.0).
  Nothing is flagged before K cycles have run.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .filters.base import EnsembleFilter
from .seeding import stream
from .systems import System, get_system

LOST_TRACK_WINDOW = 100  # K: cycles the error must stay above climatology to count as "lost track"

_climatology: dict[tuple, dict] = {}
_climatology_lock = threading.Lock()


CLIMATOLOGY_TABLE = Path(__file__).parent / "systems" / "climatology.json"


def climatology(system: System | str, trajectories: int = 16, cycles: int = 2000, use_table: bool = True) -> dict:
    """The system's climatological mean μ (d,) and level R_clim = Σ_j ‖v_j − μ‖ / Σ_j ‖v_j‖: the R-RMSE (5.2)
    of the estimator that ignores every observation and always answers μ.

    Estimated from a fixed free run: `trajectories` truths put on the attractor by the system's own burn-in
    (the "tune" stream "climatology", seed 0), then `cycles` observation intervals each. Where the system
    is translation-invariant (periodic: L96, KS) all components share one mean. Measured: L63 0.50,
    L96 0.84, KS 1.00. The default recipe's values for L63, L96 and KS are read from the shipped table
    systems/climatology.json (written by `write_climatology_table`, checked against a fresh run by the
    tests): computing them takes seconds per system, which froze the app's first sessions. Other systems
    and recipes are computed once per process (cached, thread-safe). Same recipe as `daviz.tuning`.
    """
    system = get_system(system) if isinstance(system, str) else system
    key = (system.name, int(trajectories), int(cycles))
    with _climatology_lock:
        if key not in _climatology and use_table and (trajectories, cycles) == (16, 2000):
            shipped = _climatology_table().get(system.name)
            if shipped is not None and len(shipped["mean"]) == system.dim:
                _climatology[key] = {"mean": np.asarray(shipped["mean"], dtype=float), "rrmse": float(shipped["rrmse"])}
        if key not in _climatology:
            _climatology[key] = _free_run_climatology(system, int(trajectories), int(cycles))
        return _climatology[key]


def _free_run_climatology(system: System, trajectories: int, cycles: int) -> dict:
    x = system.initial_truth(stream(0, "tune", "climatology"), trajectories)
    states = np.empty((cycles,) + x.shape)
    for j in range(len(states)):
        x = system.step(x)
        states[j] = x
    mean = states.mean(axis=(0, 1))
    if system.periodic:
        mean = np.full_like(mean, mean.mean())
    with np.errstate(all="ignore"):
        level = float(np.linalg.norm(states - mean, axis=-1).sum() / np.linalg.norm(states, axis=-1).sum())
    # No finite level (no bounded attractor): then nothing is ever flagged as lost track.
    return {"mean": mean, "rrmse": level if np.isfinite(level) else float("inf")}


def _climatology_table() -> dict:
    try:
        return json.loads(CLIMATOLOGY_TABLE.read_text())
    except (OSError, ValueError):
        return {}


def write_climatology_table(systems=("l63", "l96", "ks")) -> dict:
    """Recompute the default-recipe climatologies and write systems/climatology.json (run after a system changes:
    `python -c "from daviz.experiment import write_climatology_table; write_climatology_table()"`)."""
    table = {}
    for name in systems:
        c = _free_run_climatology(get_system(name), 16, 2000)
        table[name] = {"rrmse": c["rrmse"], "mean": c["mean"].tolist(), "recipe": "16 truths x 2000 cycles, tune stream"}
    CLIMATOLOGY_TABLE.write_text(json.dumps(table, indent=1) + "\n")
    with _climatology_lock:
        _climatology.clear()
    return table


_initial_truths: dict[tuple, tuple] = {}
_initial_truths_lock = threading.Lock()


def _initial_truth(system: System, rng: np.random.Generator, key: tuple) -> np.ndarray:
    """system.initial_truth(rng, n), remembered for a few recent (system, seed, purpose, n): the burn-in
    is seconds of Python-level stepping, and the explorer's Reset replays the same truth. The stream is
    left exactly where the burn-in leaves it, so a remembered truth continues identically."""
    key = (id(system), system.name, *key)
    with _initial_truths_lock:
        hit = _initial_truths.get(key)
    if hit is not None:
        truth, state = hit
        rng.bit_generator.state = state
        return truth.copy()
    truth = system.initial_truth(rng, key[-1])
    with _initial_truths_lock:
        if len(_initial_truths) >= 16:
            _initial_truths.pop(next(iter(_initial_truths)))
        _initial_truths[key] = (truth.copy(), rng.bit_generator.state)
    return truth


def available_memory() -> float:
    """Bytes this process may plan to use: DAVIZ_MAX_MEMORY_GB if set, else the memory the OS reports
    available (MemAvailable), else physical memory."""
    env = os.environ.get("DAVIZ_MAX_MEMORY_GB")
    if env:
        try:
            value = float(env) * 2**30
        except ValueError:
            raise ValueError(f"DAVIZ_MAX_MEMORY_GB must be a number of GiB, got {env!r}") from None
        if np.isfinite(value) and value > 0:
            return value
        raise ValueError(f"DAVIZ_MAX_MEMORY_GB must be a positive number of GiB, got {env!r}")
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def memory_estimate(system: System | str, N: int, batch: int, filter_kinds=()) -> float:
    """Rough peak bytes of a twin experiment: each filter's ensemble plus the largest per-step temporaries.

    Counts float64 ensembles, RK4 stages, LETKF's per-grid-point local problems, IEnKF's N×N transforms and
    MNMEF's N×N attention; on L96 it is 1.1-1.6 times the peak tracemalloc measured for each baseline
    filter (N=100-200, 16 trajectories). Meant to refuse runs that cannot fit, not to budget tightly.
    """
    system = get_system(system) if isinstance(system, str) else system
    d, p, B, N = system.dim, system.obs_dim, float(batch), float(N)
    ensemble = 8 * B * N * d
    temporaries = [12 * ensemble]  # forecast stages, anomalies, copies
    for kind in filter_kinds:  # "enkf", "letkf", "mnmef", ... (a filter's `name` attribute)
        if kind == "letkf" and system.periodic:
            temporaries.append(4 * 8 * B * d * N * p)
        elif kind == "ienkf":
            temporaries.append(6 * 8 * B * N * N)
        elif kind == "mnmef":  # float32: 8-head N×N attention, 64-wide activations, gains
            temporaries.append(3 * 4 * 8 * B * N * N + 4 * 64 * 32 * B * N + 4 * 4 * B * N * d * p)
        elif kind == "kalman":
            temporaries.append(6 * 8 * B * d * d)
    return len(filter_kinds) * ensemble + max(temporaries)


def check_memory(system: System | str, N: int, batch: int, filter_kinds=()) -> float:
    """Raise ValueError (saying what it needs and the limit) if the run would not fit in memory."""
    need, limit = memory_estimate(system, N, batch, filter_kinds), available_memory()
    if need > limit:
        raise ValueError(f"N={N} with {batch} trajectories needs about {need / 2**30:.3g} GiB, more than the "
                         f"{limit / 2**30:.3g} GiB available (limit: DAVIZ_MAX_MEMORY_GB, else the free memory); "
                         "use a smaller N or fewer trajectories")
    return need


class TwinExperiment:
    def __init__(self, system: System | str, sigma_y: float, N: int, filters: Mapping[str, EnsembleFilter],
                 trajectories: int = 1, seed: int = 0, purpose: str = "test", replicas: int = 1,
                 lost_track_window: int = LOST_TRACK_WINDOW):
        self.system = get_system(system) if isinstance(system, str) else system
        if not np.isfinite(sigma_y) or sigma_y <= 0:
            raise ValueError(f"sigma_y must be a positive number, got {sigma_y!r}")
        if int(N) != N or N < 2:
            raise ValueError(f"ensemble size N must be an integer >= 2, got N={N!r}")
        if int(trajectories) != trajectories or trajectories < 1 or replicas < 1:
            raise ValueError(f"need trajectories >= 1 and replicas >= 1, got {trajectories!r}, {replicas!r}")
        if int(lost_track_window) != lost_track_window or lost_track_window < 1:
            raise ValueError(f"lost_track_window must be a positive integer, got {lost_track_window!r}")
        # Refuse before allocating: a huge N would otherwise die in the first allocation or mid-run.
        check_memory(self.system, int(N), int(trajectories) * int(replicas),
                     [getattr(f, "name", "") for f in filters.values()])
        self.sigma_y, self.N = float(sigma_y), int(N)
        self.trajectories, self.replicas = int(trajectories), int(replicas)
        self.seed, self.purpose = seed, purpose
        self._truth_rng = stream(seed, purpose, "truth")
        self._obs_rng = stream(seed, purpose, "observation")
        init_rng = stream(seed, purpose, "initial-ensemble")

        sys_, n = self.system, self.trajectories
        self._truth = _initial_truth(sys_, self._truth_rng, (seed, purpose, n))  # (n, d); tiled on access
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
        # Ring buffers of the last K errors and truth norms, for the lost-track window.
        self.lost_track_window = int(lost_track_window)
        self._recent_error = {name: np.zeros((self.lost_track_window, B)) for name in self.filters}
        self._recent_truth_norm = np.zeros((self.lost_track_window, B))
        self._worst_window = {name: np.full(B, -np.inf) for name in self.filters}  # max window R-RMSE so far

    def _tile(self, a: np.ndarray) -> np.ndarray:
        return np.tile(a, (self.replicas,) + (1,) * (a.ndim - 1)) if self.replicas > 1 else a

    @property
    def truth(self) -> np.ndarray:
        """(B, d) current truth."""
        return self._tile(self._truth)

    def mean(self, name: str) -> np.ndarray:
        return self.filters[name].mean(self.states[name])

    def spread(self, name: str) -> np.ndarray:
        return self.filters[name].spread(self.states[name])

    def step(self) -> None:
        """Advance the truth, draw the observation, and run one cycle of every filter."""
        sys_ = self.system
        truth = sys_.add_model_noise(sys_.step(self._truth), self._truth_rng)
        self._truth = truth
        y = self._tile(sys_.observe(truth) + self.sigma_y * self._obs_rng.standard_normal((len(truth), sys_.obs_dim)))
        self.observation = y
        truth_b = self.truth
        slot = self.cycle % self.lost_track_window
        self.cycle += 1
        truth_norm = np.linalg.norm(truth_b, axis=-1)
        self._truth_norm_sum += truth_norm
        self._recent_truth_norm[slot] = truth_norm
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
                error = np.where(dead, 0.0, np.linalg.norm(f.mean(state) - truth_b, axis=-1))
                self._error_sum[name] += error
                self._recent_error[name][slot] = error
                if self.cycle >= self.lost_track_window:
                    np.maximum(self._worst_window[name], self.window_rrmse(name), out=self._worst_window[name])
            self.states[name] = state
            self.seconds[name] += time.perf_counter() - start

    def running_rrmse(self) -> dict[str, np.ndarray]:
        """R-RMSE (5.2) over the cycles so far, per filter and trajectory (NaN where diverged)."""
        denom = np.where(self._truth_norm_sum > 0, self._truth_norm_sum, np.nan)
        return {name: np.where(self.diverged[name], np.nan, err / denom) for name, err in self._error_sum.items()}

    def window_rrmse(self, name: str) -> np.ndarray:
        """(B,) R-RMSE over the last min(K, cycle) cycles (NaN where diverged or before the first cycle)."""
        with np.errstate(all="ignore"):
            value = self._recent_error[name].sum(0) / self._recent_truth_norm.sum(0)
        return np.where(self.diverged[name] | (self.cycle == 0), np.nan, value)

    @property
    def climatology_level(self) -> float:
        """The R-RMSE of predicting the climatological mean: above it for K cycles = lost track."""
        return climatology(self.system)["rrmse"]

    def lost_track(self, name: str, ever: bool = False) -> np.ndarray:
        """(B,) bool: the R-RMSE over the last K cycles is above the climatological level (finite error,
        not diverged; False before K cycles). ever=True: at any K-cycle window so far."""
        if self.cycle < self.lost_track_window:
            return np.zeros(len(self.diverged[name]), dtype=bool)
        value = self._worst_window[name] if ever else self.window_rrmse(name)
        return ~self.diverged[name] & (np.nan_to_num(value, nan=-np.inf) > self.climatology_level)

    def run(self, cycles: int, progress: bool = False) -> dict[str, np.ndarray]:
        """Run `cycles` more cycles; returns the per-trajectory R-RMSE of each filter."""
        if int(cycles) != cycles or cycles < 1:
            raise ValueError(f"cycles must be a positive integer, got {cycles!r}")
        for _ in tqdm(range(int(cycles)), disable=not progress, desc=f"{self.system.name} N={self.N}", leave=False):
            self.step()
        return self.running_rrmse()
