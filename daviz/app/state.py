"""The explorer's headless state: its settings plus one running experiment; no panel, no bokeh here.

`ExplorerState` is the settings (settings.py) with a `TwinExperiment` (B = 1 trajectory) and a
`Recorder` of the last `window` cycles. Views read the recorder and call the public actions: `play`,
`pause`, `step`, `reset`, `advance` (off the event loop) and `apply_preset`. Changes that need a new
experiment restart it; localization and inflation swap the filters in place, so the truth and the
ensembles carry on. Filters come from build.py, pacing from pacing.py.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import param

from ..experiment import TwinExperiment
from ..filters.localization import gaspari_cohn
from . import mnmef_weights
from .build import build_filters
from .mnmef_weights import MnmefPhase, MnmefState
from .pacing import Pacer
from .presets import NO_PRESET
from .recorder import Recorder
from .runs import RunSpec
from .settings import FILTER_MODES, ExplorerSettings


class ExplorerState(ExplorerSettings):
    """Everything the explorer shows and every action it offers."""

    playing = param.Boolean(default=False, doc="Whether the session loop advances the experiment.")
    cycle = param.Integer(default=0, constant=True, doc="Cycles assimilated since the last restart.")
    mnmef = param.ClassSelector(class_=MnmefState, default=MnmefState.OFF, doc="What the page knows about MNMEF.")
    restarts = param.Integer(default=0, doc="Incremented by every restart; views rebuild on change.")

    window = param.Integer(default=250, bounds=(10, 2000), constant=True, doc="Rolling window in cycles.")
    max_seconds_per_advance = param.Number(default=0.1, doc=(
        "Cap on compute time of one advance(): one turn on the server's shared engine (engine.py), short so "
        "that under overload the turns go round all sessions often."))

    def __init__(self, autostart: bool = True, runner=None, **params):
        """`autostart=False` leaves the first restart to the caller (after reading the URL, say).

        `runner(fn)`, when given, runs restarts and filter swaps later, off the caller's thread (the
        served app passes one so that building an experiment never blocks the event loop); without
        it they run at once, as in the tests and the command line.
        """
        super().__init__(**params)
        self.runner = runner
        self.restarting = False  # a restart has been asked for and has not finished yet
        self._play_when_ready = False
        self._lock = threading.RLock()  # the experiment: one advance/restart/refilter at a time
        self._abort = False  # set by restart/close: a running advance stops after its current cycle
        self.experiment: TwinExperiment | None = None
        self.recorder: Recorder | None = None
        self.runs: list[RunSpec] = []
        self.pacer = Pacer()
        self.closed = False
        if not autostart:
            return
        if self.preset != NO_PRESET:
            self.apply_preset(self.preset)
        else:
            self.apply_tuned_defaults()
            # Modes and slider values the caller gave explicitly win over the tuned defaults.
            chosen = {k: params[k] for k in FILTER_MODES if k in params}
            if chosen:
                with self.quietly():
                    self.param.update(**chosen)
            self.restart()

    @property
    def cycles_per_second(self) -> float:
        return self.pacer.cycles_per_second

    @property
    def behind(self) -> bool:
        """Whether it plays clearly slower than the speed asked (measured over the last seconds)."""
        return self.playing and self.pacer.behind(self.speed)

    @property
    def mnmef_status(self) -> str:
        """MNMEF's state in words ('' when it is not selected)."""
        return self.mnmef.text

    def mnmef_arrived(self) -> bool:
        """Whether MNMEF's weights were loading at the last restart and are in now (restart to add it)."""
        return self.mnmef.phase is MnmefPhase.LOADING and mnmef_weights.ready(self.system, float(self.sigma_y),
                                                                               int(self.N))

    # ------------------------------------------------------------------ what a change of settings does
    @param.depends("restart_needed", watch=True)
    def request_restart(self) -> None:
        """Restart with the current settings, now or through the runner."""
        self.restarting = True
        self._request(self.restart)

    @param.depends("refilter_needed", watch=True)
    def _request_refilter(self) -> None:
        self._request(self.refilter)

    def _request(self, fn) -> None:
        """Run fn now, or through the runner (later, off the event loop) when there is one."""
        if self.runner is None:
            fn()
        else:
            self.runner(fn)

    # ------------------------------------------------------------------ actions
    def play(self) -> None:
        if self.experiment is None or self.restarting:
            self._play_when_ready = True  # start playing once the (re)start has built an experiment
            if not self.restarting:
                self.request_restart()
            return
        self.pacer.resume()
        self.playing = True

    def pause(self) -> None:
        self.playing = False

    def step(self, n: int = 1) -> int:
        """Pause and advance exactly n cycles (the Step button); returns cycles done."""
        self.pause()
        return self.advance(n)

    def reset(self) -> None:
        """Restart with the current settings (same seed: the same truth again)."""
        self.request_restart()

    def close(self) -> None:
        """Drop the experiment and the recorder (the session ended)."""
        self._abort = True
        with self._lock:
            self.playing = False
            self.closed = True
            self._drop_experiment()

    def _drop_experiment(self) -> None:
        self.experiment = None
        self.recorder = None
        self.runs = []

    # ------------------------------------------------------------------ the engine
    def restart(self) -> None:
        """Build a fresh experiment from the current settings; on bad settings show a message."""
        self._abort = True  # a running advance stops after its current cycle
        with self._lock:
            self._abort = False
            try:
                self._restart()
            finally:
                self.restarting = False
                self.restarts += 1  # views rebuild (or show why there is nothing to show)
            if self._play_when_ready:
                self._play_when_ready = False
                if self.experiment is not None:
                    self.pacer.resume()
                    self.playing = True

    def _restart(self) -> None:
        """The body of restart(), holding the lock."""
        if self.closed:
            return
        self.forget_tuned()
        problem = self.problem()
        if problem:
            self._cannot_run(problem)  # Play retries
            return
        try:
            lineup = build_filters(self.filters, self)
            self.mnmef = lineup.mnmef
            if not lineup.filters:
                raise ValueError("no filter could be built: " + "; ".join(lineup.left_out.values()))
            exp = TwinExperiment(self.sys, float(self.sigma_y), int(self.N), lineup.filters, trajectories=1,
                                 seed=int(self.seed), purpose="test")
        except Exception as exc:  # invalid values → a message, the session goes on
            self._cannot_run(f"could not start: {exc}")
            return
        self.experiment = exp
        self.runs = lineup.runs
        self.message = "; ".join(lineup.notes())
        self.recorder = Recorder(self.sys, [s.label for s in lineup.runs], self.window, int(self.N))  # one swap
        self.recorder.record(exp)
        with param.edit_constant(self):
            self.cycle = 0
        self.pacer.reset()

    def _cannot_run(self, message: str) -> None:
        self.message = message
        self.playing = False
        self._drop_experiment()

    def refilter(self) -> None:
        """Rebuild the baseline filters with the current inflation/localization, keeping ensembles."""
        with self._lock:
            exp = self.experiment
            if exp is None:
                return
            try:
                lineup = build_filters([s.label for s in self.runs if s.base != "mnmef"], self)
                if lineup.left_out:
                    raise ValueError("; ".join(lineup.left_out.values()))
                exp.filters.update(lineup.filters)
                self.message = ""
            except Exception as exc:
                self.message = f"could not apply: {exc}"

    def cycles_due(self, now: float | None = None) -> int:
        """How many cycles the loop should run now to keep `speed` cycles/s (0 when paused)."""
        if not self.playing or self.experiment is None:
            self.pacer.resume()
            return 0
        return self.pacer.due(self.speed, now)

    def advance(self, n: int = 1, while_playing: bool = False) -> int:
        """Run up to n cycles (bounded by max_seconds_per_advance) and record them; thread-safe.

        With `while_playing`, stops as soon as the user pauses (the session loop's calls), so a Pause
        or a restart waits for one cycle at most. Never raises: an engine error pauses with a message.
        """
        if n <= 0:
            return 0
        with self._lock:
            exp = self.experiment
            if exp is None or self.closed:
                return 0
            start = time.perf_counter()
            done = 0
            try:
                while done < n and not self._abort and not (while_playing and not self.playing):
                    exp.step()
                    done += 1
                    self.recorder.record(exp)
                    if time.perf_counter() - start > self.max_seconds_per_advance:
                        break
            except Exception as exc:  # engine bug: keep the session alive
                self.playing = False
                self.message = f"step failed: {type(exc).__name__}: {exc}"
            if done:
                with param.edit_constant(self):
                    self.cycle = exp.cycle
                self.pacer.done(exp.cycle)
            return done

    # ------------------------------------------------------------------ read-outs for the views
    def current_rrmse(self) -> dict[str, float]:
        """label → running R-RMSE now (nan where diverged or before the first cycle)."""
        if self.experiment is None or self.experiment.cycle == 0:
            return {s.label: float("nan") for s in self.runs}
        rr = self.experiment.running_rrmse()
        return {s.label: float(rr[s.label][0]) for s in self.runs}

    def window_rrmse(self) -> dict[str, float]:
        """label → R-RMSE over the recorder's window only (what the filter does lately)."""
        if self.recorder is None:
            return {}
        return {s.label: self.recorder.window_rrmse(s.label) for s in self.runs}

    def diverged(self) -> dict[str, bool]:
        if self.experiment is None:
            return {}
        return {s.label: bool(self.experiment.diverged[s.label][0]) for s in self.runs}

    def run_status(self, label: str) -> str:
        """'' while a run tracks the truth, 'diverged' (its ensemble turned non-finite) or 'lost track'
        (finite, but its R-RMSE over the last 100 cycles is above the system's climatological level,
        i.e. worse than always guessing the climatological mean; `TwinExperiment.lost_track`)."""
        rec = self.recorder
        return rec.runs[label].status if rec is not None and label in rec.runs else ""

    def localization_distances(self, label: str, n: int) -> np.ndarray:
        """The distances an MNMEF run's g_θ values refer to."""
        filt = self.experiment.filters.get(label) if self.experiment is not None else None
        dist = getattr(filt, "unique_distances", None)
        if dist is None:
            return np.arange(n, dtype=float)
        return np.asarray(dist, dtype=float).reshape(-1)[:n]

    def gaspari_cohn_curve(self, distances: np.ndarray) -> np.ndarray:
        return gaspari_cohn(distances, self.gc_radius())

    def status_line(self) -> str:
        """'cycle 123 · 18.0 cycles/s · EnKF 0.31 · MNMEF diverged' (plain text)."""
        parts = [f"cycle {self.cycle}", f"{self.cycles_per_second:.1f} cycles/s" if self.playing else "paused"]
        for label, rr, _, status in (self.recorder.summary() if self.recorder is not None else []):
            parts.append(f"{label} {status}" if status else f"{label} R-RMSE {rr:.3f}")
        return " · ".join(parts)
