"""The explorer's settings and engine in one `param.Parameterized`; no panel, no bokeh here.

`ExplorerState` owns one `TwinExperiment` (B = 1 trajectory) and a `Recorder` of the last `window`
cycles. The view (explorer.py) reads the recorder and calls the public methods: `play`, `pause`,
`step`, `reset`, `advance` (off the event loop) and `apply_preset`. Parameters that change the
experiment restart it (system, N, σ_y, seed, filters); localization and inflation swap the affected
filters in place so the truth and the ensembles carry on.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager

import numpy as np
import param

from ..experiment import TwinExperiment
from ..filters import make_filter
from ..filters.localization import gaspari_cohn
from ..systems import get_system
from ..tuning import tuned_params
from . import mnmef_weights
from .presets import NO_PRESET, PRESETS
from .recorder import CycleSample, Recorder
from .runs import RUN_LABELS, RUNS, RunSpec

SYSTEMS = {"Lorenz '63": "l63", "Lorenz '96": "l96", "Kuramoto–Sivashinsky": "ks"}
N_BOUNDS = (5, 100)
SIGMA_BOUNDS = (0.05, 10.0)
SEED_BOUNDS = (0, 2**32 - 1)
__all__ = ["ExplorerState", "RUNS", "RUN_LABELS", "RunSpec", "SYSTEMS", "N_BOUNDS", "SIGMA_BOUNDS"]


class ExplorerState(param.Parameterized):
    """Everything the explorer shows and every action it offers."""

    system = param.Selector(default="l96", objects=SYSTEMS, label="System")
    N = param.Integer(default=20, bounds=N_BOUNDS, label="Ensemble size N")
    sigma_y = param.Number(default=1.0, bounds=SIGMA_BOUNDS, step=0.1, label="Observation noise σ_y")
    localization = param.Selector(default="tuned", objects=["tuned", "Gaspari–Cohn", "off"],
                                  label="Localization (EnKF, LETKF)")
    radius = param.Number(default=3.0, bounds=(0.5, 20.0), step=0.5, label="Gaspari–Cohn radius")
    inflation_mode = param.Selector(default="tuned", objects=["tuned", "manual"], label="Inflation (baselines)")
    inflation = param.Number(default=1.05, bounds=(1.0, 1.5), step=0.01, label="Multiplicative inflation")
    filters = param.ListSelector(default=["EnKF", "ESRF", "LETKF", "IEnKF", "MNMEF"], objects=list(RUN_LABELS),
                                 label="Filters")
    seed = param.Integer(default=0, bounds=SEED_BOUNDS, label="Seed")
    speed = param.Integer(default=10, bounds=(1, 60), label="Speed (cycles/s)")
    component = param.Integer(default=0, bounds=(0, 127), label="Site shown over time")
    preset = param.Selector(default=NO_PRESET, objects=[NO_PRESET, *PRESETS], label="Preset")

    playing = param.Boolean(default=False, doc="Whether the session loop advances the experiment.")
    cycle = param.Integer(default=0, constant=True, doc="Cycles assimilated since the last restart.")
    message = param.String(default="", doc="Last error or warning for the user ('' when all is well).")
    mnmef_status = param.String(default="", doc="Which weights MNMEF uses, or why it is unavailable.")
    tuned_source = param.String(default="", doc="Where the tuned inflation/radius come from.")
    restarts = param.Integer(default=0, doc="Incremented by every restart; views rebuild on change.")

    window = param.Integer(default=250, bounds=(10, 2000), constant=True, doc="Rolling window in cycles.")
    max_seconds_per_advance = param.Number(default=0.25, doc="Cap on compute time of one advance().")

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
        self._updating = False  # our own watchers ignore the parameters we set ourselves
        self._tuned_cache: dict = {}
        self.experiment: TwinExperiment | None = None
        self.recorder: Recorder | None = None
        self.runs: list[RunSpec] = []
        self.cycles_per_second = 0.0
        self._rate_hist: deque = deque(maxlen=20)
        self._owed = 0.0
        self._last_clock: float | None = None
        self.closed = False
        self._fit_component()
        if not autostart:
            return
        if self.preset != NO_PRESET:
            self.apply_preset(self.preset)
        else:
            self._apply_tuned_defaults()
            # Modes and slider values the caller gave explicitly win over the tuned defaults.
            chosen = {k: params[k] for k in ("localization", "radius", "inflation_mode", "inflation") if k in params}
            if chosen:
                with self._quietly():
                    self.param.update(**chosen)
            self.restart()

    # ------------------------------------------------------------------ configuration helpers
    @property
    def sys(self):
        return get_system(self.system)

    def _fit_component(self) -> None:
        """Bound the site slider to the current system's dimension (back to 0 if it was beyond)."""
        self.param.component.bounds = (0, self.sys.dim - 1)
        if self.component > self.sys.dim - 1:
            self.component = 0

    @contextmanager
    def _quietly(self):
        """Set parameters (widgets follow) without our own watchers restarting or refiltering."""
        self._updating = True
        try:
            yield
        finally:
            self._updating = False

    @property
    def busy(self) -> bool:
        """True while the state is changing several parameters at once (views should wait)."""
        return self._updating

    @property
    def has_space(self) -> bool:
        """Whether the system has spatial structure (Hovmöller images, localization)."""
        return bool(self.sys.periodic)

    def _validate(self) -> str:
        """'' when the settings are usable, else a message for the user saying what is accepted."""
        lo, hi = SIGMA_BOUNDS
        try:
            sigma = float(self.sigma_y)
        except (TypeError, ValueError):
            return f"σ_y must be a number between {lo} and {hi}, got {self.sigma_y!r}"
        if not np.isfinite(sigma) or not lo <= sigma <= hi:
            return f"σ_y must be a number between {lo} and {hi}, got {self.sigma_y!r}"
        if self.seed is None or not SEED_BOUNDS[0] <= self.seed <= SEED_BOUNDS[1]:
            return f"seed must be an integer from 0 to 2³²−1, got {self.seed!r}"
        if not self.filters:
            return "select at least one filter"
        return ""

    def _tuned_for(self, base: str) -> dict:
        """Tuned inflation/radius for the current system, N and σ_y (read once per restart)."""
        key = (self.system, base, int(self.N), float(self.sigma_y))
        if key not in self._tuned_cache:
            try:
                self._tuned_cache[key] = tuned_params(*key)
            except Exception as exc:  # a broken table must not take the app down
                self._tuned_cache[key] = {"inflation": self.sys.fallback_inflation,
                                          "radius": self.sys.fallback_radius if self.has_space else None,
                                          "source": f"fallback ({type(exc).__name__})"}
        return self._tuned_cache[key]

    def _apply_tuned_defaults(self) -> None:
        """Slider values and modes back to the tuned LETKF values for the current system/N/σ_y."""
        if self._validate().startswith("σ_y"):
            return
        ref = self._tuned_for("letkf")
        lo, hi = self.sys.radius_bounds
        self.param.radius.bounds = (lo, hi)
        radius = ref.get("radius")
        with self._quietly():
            self.param.update(
                localization="tuned" if self.has_space else "off",
                radius=float(np.clip(radius if radius is not None else self.sys.fallback_radius or lo, lo, hi)),
                inflation_mode="tuned",
                inflation=float(np.clip(ref.get("inflation", 1.0), 1.0, 1.5)),
            )
        self.tuned_source = str(ref.get("source", ""))

    def filter_params(self, spec: RunSpec) -> dict:
        """inflation, radius and tuned filter settings (EnSF's kernel, Latent-EnSF's gamma) a baseline run
        uses under the current settings."""
        tuned = self._tuned_for(spec.base)
        inflation = tuned.get("inflation", 1.0) if self.inflation_mode == "tuned" else self.inflation
        if self.localization == "tuned":
            radius = tuned.get("radius")
        elif self.localization == "Gaspari–Cohn":
            radius = self.radius
        else:
            radius = None
        if spec.radius_off or not self.has_space:
            radius = None
        if spec.no_inflation:
            inflation = 1.0
        return {"inflation": float(inflation), "radius": None if radius is None else float(radius),
                **tuned.get("params", {})}

    def gc_radius(self) -> float:
        """The radius the Gaspari–Cohn reference curve is drawn at (what LETKF uses, else the slider)."""
        if self.localization == "tuned":
            r = self._tuned_for("letkf").get("radius")
            if r is not None:
                return float(r)
        return float(self.radius)

    def _make_baseline(self, spec: RunSpec):
        base = spec.base
        if base == "letkf" and not self.has_space:
            base = "esrf"  # without spatial structure LETKF is the global ETKF (= our ESRF)
        return make_filter(base, self.system, self.sigma_y, **self.filter_params(spec))

    # ------------------------------------------------------------------ watchers
    @param.depends("system", "N", "sigma_y", watch=True)
    def _on_setup_change(self):
        if self._updating:
            return
        self._fit_component()
        self._apply_tuned_defaults()
        self.request_restart()

    @param.depends("seed", "filters", watch=True)
    def _on_restart_change(self):
        if not self._updating:
            self.request_restart()

    @param.depends("radius", watch=True)
    def _on_radius(self):
        if self._updating:
            return
        if self.localization != "Gaspari–Cohn" and self.has_space:
            with self._quietly():
                self.localization = "Gaspari–Cohn"  # moving the slider means: use this radius
        self._request(self.refilter)

    @param.depends("inflation", watch=True)
    def _on_inflation(self):
        if self._updating:
            return
        if self.inflation_mode != "manual":
            with self._quietly():
                self.inflation_mode = "manual"
        self._request(self.refilter)

    @param.depends("localization", "inflation_mode", watch=True)
    def _on_modes(self):
        if not self._updating:
            self._request(self.refilter)

    @param.depends("preset", watch=True)
    def _on_preset(self):
        if not self._updating and self.preset != NO_PRESET:
            self.apply_preset(self.preset)

    # ------------------------------------------------------------------ actions
    def apply_preset(self, name: str) -> None:
        """Set every parameter the preset names in one batch, then restart once."""
        if name not in PRESETS:
            self.message = f"unknown preset {name!r}"
            return
        settings = dict(PRESETS[name]["settings"])
        modes = ("localization", "radius", "inflation_mode", "inflation")
        with self._quietly():
            self.param.update(preset=name, **{k: v for k, v in settings.items() if k not in modes})
            self._fit_component()
        self._apply_tuned_defaults()
        extra = {k: settings[k] for k in modes if k in settings}
        if extra:
            with self._quietly():
                self.param.update(**extra)
        self.request_restart()

    def _request(self, fn) -> None:
        """Run fn now, or through the runner (later, off the event loop) when there is one."""
        if self.runner is None:
            fn()
        else:
            self.runner(fn)

    def request_restart(self) -> None:
        """Restart with the current settings, now or through the runner."""
        self.restarting = True
        self._request(self.restart)

    def play(self) -> None:
        if self.experiment is None or self.restarting:
            self._play_when_ready = True  # start playing once the (re)start has built an experiment
            if not self.restarting:
                self.request_restart()
            return
        self._last_clock = None
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
            self.experiment = None
            self.recorder = None
            self.runs = []

    # ------------------------------------------------------------------ the engine
    def _build_filters(self) -> tuple[dict, list[RunSpec], list[str]]:
        """Filters for the selected runs; MNMEF is left out (with a reason) when its weights are not ready."""
        filters, runs, warnings = {}, [], []
        self.mnmef_status = ""
        for label in self.filters:
            spec = RUNS[label]
            if spec.base == "mnmef":
                filt, info = mnmef_weights.get_filter(self.system, float(self.sigma_y), int(self.N))
                self.mnmef_status = mnmef_weights.describe(info, filt is not None)
                if filt is None:
                    warnings.append(self.mnmef_status)
                    continue
            elif spec.base == "latent-ensf":
                try:  # its coupled VAE is shipped for some (system, σ_y) only: the other runs go on without it
                    filt = self._make_baseline(spec)
                except (ValueError, ImportError) as exc:  # CheckpointError is a ValueError; torch may be absent
                    warnings.append(f"Latent-EnSF left out: {exc}")
                    continue
            else:
                filt = self._make_baseline(spec)
            filters[label] = filt
            runs.append(spec)
        return filters, runs, warnings

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
                    self._last_clock = None
                    self.playing = True

    def _restart(self) -> None:
        """The body of restart(), holding the lock."""
        if self.closed:
            return
        self._tuned_cache.clear()  # tables may have been re-tuned since
        problem = self._validate()
        if problem:
            self.message = problem
            self.playing = False
            self.experiment = None  # Play retries
            self.recorder = None
            self.runs = []
            return
        sys_ = self.sys
        try:
            filters, runs, warnings = self._build_filters()
            if not filters:
                raise ValueError("no filter could be built: " + "; ".join(warnings))
            exp = TwinExperiment(sys_, float(self.sigma_y), int(self.N), filters, trajectories=1,
                                 seed=int(self.seed), purpose="test")
        except Exception as exc:  # invalid values → a message, the session goes on
            self.message = f"could not start: {exc}"
            self.playing = False
            self.experiment = None
            self.recorder = None
            self.runs = []
            return
        self.experiment = exp
        self.runs = runs
        loading = mnmef_weights.describe(mnmef_weights.LOADING, False)
        self.message = "; ".join(w for w in warnings if w != loading)
        self.recorder = Recorder(sys_, [s.label for s in runs], self.window, int(self.N))  # views read it: one swap
        self._record_cycle(exp)
        with param.edit_constant(self):
            self.cycle = 0
        self.cycles_per_second = 0.0
        self._rate_hist.clear()
        self._owed = 0.0
        self._last_clock = None

    def refilter(self) -> None:
        """Rebuild the baseline filters with the current inflation/localization, keeping ensembles."""
        with self._lock:
            exp = self.experiment
            if exp is None:
                return
            try:
                for spec in self.runs:
                    if spec.base != "mnmef":
                        exp.filters[spec.label] = self._make_baseline(spec)
                self.message = ""
            except Exception as exc:
                self.message = f"could not apply: {exc}"

    def cycles_due(self, now: float | None = None) -> int:
        """How many cycles the loop should run now to keep `speed` cycles/s (0 when paused)."""
        if not self.playing or self.experiment is None:
            self._last_clock = None
            return 0
        now = time.monotonic() if now is None else now
        if self._last_clock is None:
            self._last_clock = now
            self._rate_hist.clear()
            self._owed = 1.0
        else:
            self._owed += self.speed * (now - self._last_clock)
            self._last_clock = now
        self._owed = min(self._owed, max(1.0, self.speed * 0.5))  # do not pile up a backlog
        n = int(self._owed)
        self._owed -= n
        return n

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
                    self._record_cycle(exp)
                    if time.perf_counter() - start > self.max_seconds_per_advance:
                        break
            except Exception as exc:  # engine bug: keep the session alive
                self.playing = False
                self.message = f"step failed: {type(exc).__name__}: {exc}"
            if done:
                with param.edit_constant(self):
                    self.cycle = exp.cycle
                now = time.monotonic()
                self._rate_hist.append((now, exp.cycle))
                t0, c0 = self._rate_hist[0]
                if now - t0 > 0.2:
                    self.cycles_per_second = (exp.cycle - c0) / (now - t0)
            return done

    def _record_cycle(self, exp: TwinExperiment) -> None:
        """Append the experiment's current cycle to the recorder."""
        rr = exp.running_rrmse()
        truth = exp.truth[0]
        samples = {}
        for s in self.runs:
            state = exp.states[s.label]
            if exp.diverged[s.label][0]:
                nan = np.full(exp.system.dim, np.nan)
                samples[s.label] = CycleSample(nan, nan, float("nan"), status="diverged")
                continue
            members = np.asarray(state[0]) if isinstance(state, np.ndarray) else None
            rank = None if members is None else (members < truth).sum(axis=0)
            loc = getattr(exp.filters[s.label], "last_localization", None)
            if loc is not None:
                loc = np.asarray(loc, dtype=float).reshape(-1, np.shape(loc)[-1])[0]
            phase = getattr(exp.filters[s.label], "window_phase", None)  # 4D-Var, NIDA: assimilation windows
            samples[s.label] = CycleSample(np.asarray(exp.mean(s.label)[0], dtype=float),
                                           np.asarray(exp.spread(s.label)[0], dtype=float),
                                           float(rr[s.label][0]), rank, loc,
                                           status="lost track" if exp.lost_track(s.label)[0] else "",
                                           window=None if phase is None else tuple(int(v) for v in phase(state)))
        self.recorder.append(exp.cycle, truth, None if exp.observation is None else exp.observation[0], samples)

    # ------------------------------------------------------------------ read-outs for the view
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

    def settings(self) -> dict:
        """The current settings (for the download and the status)."""
        return {name: getattr(self, name) for name in ("system", "N", "sigma_y", "seed", "filters", "localization",
                                                         "radius", "inflation_mode", "inflation", "speed")}

    def status_line(self) -> str:
        """'cycle 123 · 18.0 cycles/s · EnKF 0.31 · MNMEF diverged' (plain text)."""
        parts = [f"cycle {self.cycle}", f"{self.cycles_per_second:.1f} cycles/s" if self.playing else "paused"]
        for label, rr, _, status in (self.recorder.summary() if self.recorder is not None else []):
            parts.append(f"{label} {status}" if status else f"{label} R-RMSE {rr:.3f}")
        return " · ".join(parts)
