"""What the explorer remembers of a run: a rolling window of the last W cycles, in ring buffers.

Ring buffers make recording one cycle O(d) (a column write) instead of shifting (d, W) arrays, and
let the view ask for exactly the columns recorded since the last frame it sent (`last`). The same
window feeds the diagnostics (rank histograms, spread vs error) and the `.npz` download.
"""
from __future__ import annotations

import io
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


class Ring:
    """The last `window` values of a (*shape)-sized quantity; `last(k)` returns them oldest first."""

    def __init__(self, shape: tuple, window: int, fill=np.nan, dtype=float):
        self.data = np.full((*shape, window), fill, dtype=dtype)
        self.fill = fill
        self.window = window
        self.pos = 0  # next column to write

    def push(self, value) -> None:
        self.data[..., self.pos] = value
        self.pos = (self.pos + 1) % self.window

    def last(self, k: int, row: int | None = None) -> np.ndarray:
        """(*shape, k) copy of the k most recent values, oldest first (k <= window); of one row if given."""
        k = min(int(k), self.window)
        idx = (self.pos - k + np.arange(k)) % self.window
        return self.data[..., idx] if row is None else self.data[row, idx]

    def ordered(self) -> np.ndarray:
        return self.last(self.window)


@dataclass
class CycleSample:
    """One filter's state after one cycle, as the app records it."""

    mean: np.ndarray  # (d,)
    spread: np.ndarray  # (d,)
    running_rrmse: float
    rank: np.ndarray | None = None  # (d,) rank of the truth among the members (0..N), None if unknown
    localization: np.ndarray | None = None  # MNMEF's g_θ over the unique distances
    status: str = ""  # '' while tracking, 'diverged' or 'lost track' (see ExplorerState.run_status)
    window: tuple[int, int] | None = None  # variational methods: (observations so far in the window, L)


class RunRecord:
    """Rolling window of one filter run."""

    def __init__(self, dim: int, window: int, loc_history: int = 50):
        self.mean = Ring((dim,), window)
        self.spread = Ring((dim,), window)
        self.error = Ring((dim,), window)
        self.rank = Ring((dim,), window, fill=-1, dtype=np.int16)
        self.rrmse = Ring((), window)  # running R-RMSE (5.2) since the start of the run
        self.rmse = Ring((), window)  # RMSE of the mean over sites, this cycle
        self.spread_rms = Ring((), window)  # sqrt(mean of ensemble variance over sites), this cycle
        self.error_norm = Ring((), window)  # ||mean - truth||, for the R-RMSE of the window
        self.loc_history: deque = deque(maxlen=loc_history)
        self.status = ""  # as of the newest cycle
        self.window: tuple[int, int] | None = None  # (observations so far, L) for the variational methods


class Recorder:
    """Truth, observations and every run over the last `window` cycles; thread-safe."""

    def __init__(self, system, labels, window: int, ensemble_size: int):
        """`system`: the System recorded (its dim and obs_idx); `labels`: the runs, in display order."""
        self.system = system
        self.N = int(ensemble_size)
        dim = system.dim
        self.dim, self.window = dim, window
        self.obs_idx = np.asarray(system.obs_idx)
        self.observed = np.zeros(dim, dtype=bool)
        self.observed[self.obs_idx] = True
        self.lock = threading.Lock()
        self.cycles = Ring((), window)
        self.truth = Ring((dim,), window)
        self.obs = Ring((dim,), window)
        self.truth_norm = Ring((), window)
        self.runs = {label: RunRecord(dim, window) for label in labels}
        self.last_cycle = -1  # no cycle recorded yet

    def append(self, cycle: int, truth: np.ndarray, obs: np.ndarray | None, samples: dict[str, CycleSample]) -> None:
        """Record one cycle: truth (d,), observations (p,) at obs_idx (None before the first one)."""
        full_obs = np.full(self.dim, np.nan)
        if obs is not None:
            full_obs[self.obs_idx] = obs
        with self.lock:
            self.cycles.push(cycle)
            self.truth.push(truth)
            self.obs.push(full_obs)
            self.truth_norm.push(np.linalg.norm(truth))
            for label, s in samples.items():
                r = self.runs[label]
                err = s.mean - truth
                r.mean.push(s.mean)
                r.spread.push(s.spread)
                r.error.push(np.abs(err))
                r.rank.push(-1 if s.rank is None else s.rank)
                r.rrmse.push(s.running_rrmse)
                r.rmse.push(np.sqrt(np.mean(err ** 2)))
                r.spread_rms.push(np.sqrt(np.mean(s.spread ** 2)))
                r.error_norm.push(np.linalg.norm(err))
                r.status = s.status
                r.window = s.window
                if s.localization is not None:
                    r.loc_history.append(np.asarray(s.localization, dtype=float))
            self.last_cycle = int(cycle)

    def record(self, exp) -> None:
        """Append the current cycle of a TwinExperiment (its first trajectory) for every run recorded."""
        truth = exp.truth[0]
        rr = exp.running_rrmse()
        samples = {}
        for label in self.runs:
            if exp.diverged[label][0]:
                nan = np.full(exp.system.dim, np.nan)
                samples[label] = CycleSample(nan, nan, float("nan"), status="diverged")
                continue
            state, filt = exp.states[label], exp.filters[label]
            members = np.asarray(state[0]) if isinstance(state, np.ndarray) else None
            rank = None if members is None else (members < truth).sum(axis=0)
            loc = getattr(filt, "last_localization", None)
            if loc is not None:
                loc = np.asarray(loc, dtype=float).reshape(-1, np.shape(loc)[-1])[0]
            phase = getattr(filt, "window_phase", None)  # 4D-Var, NIDA: assimilation windows
            samples[label] = CycleSample(np.asarray(exp.mean(label)[0], dtype=float),
                                         np.asarray(exp.spread(label)[0], dtype=float),
                                         float(rr[label][0]), rank, loc,
                                         status="lost track" if exp.lost_track(label)[0] else "",
                                         window=None if phase is None else tuple(int(v) for v in phase(state)))
        self.append(exp.cycle, truth, None if exp.observation is None else exp.observation[0], samples)

    def summary(self) -> list[tuple[str, float, float, str]]:
        """(label, running R-RMSE, R-RMSE over the window, status) per run, as of the newest cycle."""
        with self.lock:
            return [(label, float(r.rrmse.last(1)[0]), self.window_rrmse(label), r.status)
                    for label, r in self.runs.items()]

    def new_columns(self, since_cycle: int) -> int:
        """How many recorded columns are newer than `since_cycle` (capped at the window)."""
        return int(min(max(self.last_cycle - since_cycle, 0), self.window))

    # ------------------------------------------------------------------ diagnostics
    def window_rrmse(self, label: str) -> float:
        """R-RMSE (5.2) over the cycles in the window only (NaN until one is recorded or if diverged)."""
        err, norm = self.runs[label].error_norm.ordered(), self.truth_norm.ordered()
        ok = np.isfinite(norm)
        if not ok.any() or not np.isfinite(err[ok]).all():
            return float("nan")
        return float(err[ok].sum() / norm[ok].sum())

    def rank_histogram(self, label: str, observed: bool) -> np.ndarray:
        """Counts of the truth's rank among the N members (N+1 bins) over the window, at observed
        (or unobserved) sites. A flat histogram means a calibrated ensemble; U-shaped, too little
        spread; dome-shaped, too much."""
        N = self.N
        ranks = self.runs[label].rank.ordered()[self.observed == observed]
        ranks = ranks[(ranks >= 0) & (ranks <= N)]
        return np.bincount(ranks.ravel(), minlength=N + 1)[: N + 1]

    def localization_summary(self, label: str):
        """(mean, std) of g_θ over the recent cycles, or None if none recorded."""
        hist = self.runs[label].loc_history
        if not hist:
            return None
        H = np.array(hist)
        return H.mean(axis=0), H.std(axis=0)

    # ------------------------------------------------------------------ download
    def to_npz(self, settings: dict) -> bytes:
        """The window as a compressed `.npz` (arrays are (W, d), cycles oldest first)."""
        with self.lock:
            valid = np.isfinite(self.cycles.ordered())
            arrays = {"cycle": self.cycles.ordered()[valid].astype(int),
                      "truth": self.truth.ordered()[:, valid].T,
                      "observations": self.obs.ordered()[:, valid][self.obs_idx].T,
                      "observed_sites": self.obs_idx}
            for label, r in self.runs.items():
                key = label.replace(" ", "_").replace("(", "").replace(")", "")
                arrays[f"{key}__mean"] = r.mean.ordered()[:, valid].T
                arrays[f"{key}__spread"] = r.spread.ordered()[:, valid].T
                arrays[f"{key}__running_rrmse"] = r.rrmse.ordered()[valid]
        buf = io.BytesIO()
        np.savez_compressed(buf, settings=np.array(_json(settings)), **arrays)
        return buf.getvalue()


def _json(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True, default=str)
