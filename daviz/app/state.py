"""All state and logic of the explorer in one `param.Parameterized`; no panel, no bokeh here.

`ExplorerState` owns one `TwinExperiment` (B = 1 trajectory) and rolling buffers of what the plots
show over the last `window` cycles. The view (explorer.py) only reads the buffers and calls the
public methods: `play`, `pause`, `step`, `reset`, `advance` (called off the event loop) and
`apply_preset`. Everything a user can set is a parameter; parameters that change the experiment
restart it (system, N, σ_y, seed, filters); localization and inflation swap the affected filters in
place so the truth and the ensembles carry on.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import param

from ..experiment import TwinExperiment
from ..filters import make_filter
from ..filters.localization import gaspari_cohn
from ..systems import get_system
from ..tuning import tuned_params
from .presets import PRESETS, NO_PRESET

SYSTEMS = {"Lorenz '63": "l63", "Lorenz '96": "l96", "Kuramoto–Sivashinsky": "ks"}


@dataclass(frozen=True)
class RunSpec:
    """One filter run shown in the app: a base filter plus optional fixed overrides."""

    label: str
    base: str  # enkf | esrf | letkf | ienkf | mnmef
    radius_off: bool = False  # this variant never localizes
    no_inflation: bool = False  # this variant never inflates (inflation = 1)
    help: str = ""


RUNS = {spec.label: spec for spec in (
    RunSpec("EnKF", "enkf", help="stochastic EnKF with perturbed observations"),
    RunSpec("ESRF", "esrf", help="square-root (ETKF) filter, global analysis"),
    RunSpec("LETKF", "letkf", help="local ETKF"),
    RunSpec("IEnKF", "ienkf", help="iterative EnKF (Gauss–Newton), global analysis"),
    RunSpec("MNMEF", "mnmef", help="the learned filter (set transformer)"),
    RunSpec("LETKF (no localization)", "letkf", radius_off=True, help="LETKF with localization switched off"),
    RunSpec("LETKF (no inflation)", "letkf", no_inflation=True, help="LETKF with inflation 1"),
)}
RUN_LABELS = tuple(RUNS)

# Fixed colour limits per system (about the 0.5 / 99.5 percentiles of the attractor), so frames
# stay comparable over time and between filters; |error| and spread share one scale.
FIELD_LIMITS = {"l63": (-20.0, 45.0), "l96": (-7.0, 12.0), "ks": (-2.5, 3.5)}
ERROR_LIMITS = {"l63": (0.0, 6.0), "l96": (0.0, 3.0), "ks": (0.0, 1.0)}
RADIUS_BOUNDS = {"l63": (0.5, 10.0), "l96": (0.5, 20.0), "ks": (0.5, 40.0)}


# ----------------------------------------------------------------------------------------------
# MNMEF weights: `daviz.mnmef.pretrained` loads each weights file once per process (thread-safe
# cache) and wraps the shared, frozen model in a new filter object per call, so each session gets its
# own filter (own `last_localization`) around read-only weights. Failures are not cached: weights
# shipped while the server runs are picked up by the next restart.
_MNMEF_LOCK = threading.Lock()


def load_mnmef(system_name: str, sigma_y: float, N: int):
    """(filter, info) for a fresh per-session MNMEF filter, or (None, reason) when unavailable."""
    with _MNMEF_LOCK:
        try:
            from ..mnmef.pretrained import load_filter  # noqa: PLC0415 (optional, heavy: torch)
        except ImportError as exc:
            return None, f"MNMEF code is not installed ({exc})"
        try:
            import torch  # noqa: PLC0415

            if torch.get_num_threads() > 1:
                torch.set_num_threads(1)  # tiny matrices: threads only add overhead and steal cores
            return load_filter(system_name, float(sigma_y), int(N), variant="auto")
        except Exception as exc:  # CheckpointError and anything else: report, never crash
            return None, f"{type(exc).__name__}: {exc}"


def describe_mnmef(info) -> str:
    """One line saying which weights MNMEF uses."""
    if not isinstance(info, dict):
        return str(info)
    text = str(info.get("file", "?"))
    variant, trained, pre = info.get("variant"), info.get("trained_N"), info.get("pretrained_N")
    if variant == "finetuned":
        text += f" (pretrained at N={pre}, heads fine-tuned for N={trained})"
    elif variant:
        text += f" ({variant}, trained at N={trained if trained is not None else pre})"
    return text


# ----------------------------------------------------------------------------------------------
@dataclass
class RunBuffers:
    """Rolling (d, W) windows of one filter run; columns are cycles, oldest first."""

    mean: np.ndarray
    error: np.ndarray
    spread: np.ndarray
    rrmse: np.ndarray  # (W,)
    loc_history: deque = field(default_factory=lambda: deque(maxlen=50))


def _shift_in(buf: np.ndarray, cols: np.ndarray) -> None:
    """Drop the k oldest columns of buf (…, W) and append cols (…, k) at the end, in place."""
    k = cols.shape[-1]
    W = buf.shape[-1]
    if k >= W:
        buf[...] = cols[..., -W:]
        return
    buf[..., :-k] = buf[..., k:]
    buf[..., -k:] = cols


class ExplorerState(param.Parameterized):
    """Everything the explorer shows and every action it offers."""

    system = param.Selector(default="l96", objects=SYSTEMS, label="System")
    N = param.Integer(default=20, bounds=(5, 100), label="Ensemble size N")
    sigma_y = param.Number(default=1.0, softbounds=(0.1, 3.0), step=0.1, label="Observation noise σ_y")
    localization = param.Selector(default="tuned", objects=["tuned", "Gaspari–Cohn", "off"],
                                  label="Localization (EnKF, LETKF)")
    radius = param.Number(default=3.0, bounds=(0.5, 20.0), step=0.5, label="Gaspari–Cohn radius")
    inflation_mode = param.Selector(default="tuned", objects=["tuned", "manual"], label="Inflation (baselines)")
    inflation = param.Number(default=1.05, bounds=(1.0, 1.5), step=0.01, label="Multiplicative inflation")
    filters = param.ListSelector(default=["EnKF", "ESRF", "LETKF", "IEnKF", "MNMEF"], objects=list(RUN_LABELS),
                                 label="Filters")
    seed = param.Integer(default=0, label="Seed")
    speed = param.Integer(default=10, bounds=(1, 60), label="Speed (cycles/s)")
    component = param.Integer(default=0, bounds=(0, 127), label="Component shown over time")
    preset = param.Selector(default=NO_PRESET, objects=[NO_PRESET, *PRESETS], label="Preset")

    playing = param.Boolean(default=False, doc="Whether the periodic tick advances the experiment.")
    cycle = param.Integer(default=0, constant=True, doc="Cycles assimilated since the last restart.")
    message = param.String(default="", doc="Last error or warning for the user ('' when all is well).")
    mnmef_status = param.String(default="", doc="Which weights MNMEF uses, or why it is unavailable.")
    tuned_source = param.String(default="", doc="Where the tuned inflation/radius come from.")
    restarts = param.Integer(default=0, doc="Incremented by every restart; views rebuild on change.")

    window = param.Integer(default=250, bounds=(10, 2000), constant=True, doc="Rolling window in cycles.")
    max_seconds_per_advance = param.Number(default=0.25, doc="Cap on compute time of one advance().")

    def __init__(self, **params):
        super().__init__(**params)
        self._lock = threading.RLock()
        self._updating = False  # guards against watcher recursion while we set params ourselves
        self.experiment: TwinExperiment | None = None
        self.runs: list[RunSpec] = []
        self.tuned: dict[str, dict] = {}
        self.cycles_per_second = 0.0
        self._rate_hist: deque = deque(maxlen=20)
        self._owed = 0.0
        self._last_clock: float | None = None
        self.closed = False
        self.buffers: dict[str, RunBuffers] = {}
        self.built_for: tuple = ()  # (system, run labels) the buffers describe
        self._fit_component()
        if self.preset != NO_PRESET:
            self.apply_preset(self.preset)
        else:
            self._apply_tuned_defaults()
            self.restart()

    # ------------------------------------------------------------------ configuration helpers
    @property
    def sys(self):
        return get_system(self.system)

    def _fit_component(self) -> None:
        """Bound the component slider to the current system's dimension (back to 0 if it was beyond)."""
        self.param.component.bounds = (0, self.sys.dim - 1)
        if self.component > self.sys.dim - 1:
            self.component = 0

    @contextmanager
    def _quietly(self):
        """Set parameters without their watchers reacting (we restart or refilter once ourselves)."""
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
        """'' when the settings are usable, else a message for the user."""
        try:
            sigma = float(self.sigma_y)
        except (TypeError, ValueError):
            return f"σ_y must be a number, got {self.sigma_y!r}"
        if not np.isfinite(sigma) or sigma <= 0 or sigma > 10:
            return f"σ_y must be a number in (0, 10], got {self.sigma_y!r}"
        if self.seed is None or self.seed < 0 or self.seed > 2**32 - 1:
            return f"seed must be an integer in 0 … 2³²−1, got {self.seed!r}"
        if not self.filters:
            return "select at least one filter"
        return ""

    def _tuned_for(self, base: str) -> dict:
        try:
            return tuned_params(self.system, base, int(self.N), float(self.sigma_y))
        except Exception as exc:  # a broken table must not take the app down
            return {"inflation": 1.05, "radius": 3.0 if self.has_space else None,
                    "source": f"fallback ({type(exc).__name__})"}

    def _apply_tuned_defaults(self) -> None:
        """Slider values and modes back to the tuned LETKF values for the current system/N/σ_y."""
        if self._validate().startswith("σ_y"):
            return
        ref = self._tuned_for("letkf")
        lo, hi = RADIUS_BOUNDS[self.system]
        self.param.radius.bounds = (lo, hi)
        radius = ref.get("radius")
        with self._quietly():
            self.param.update(
                localization="tuned" if self.has_space else "off",
                radius=float(np.clip(radius if radius is not None else 3.0, lo, hi)),
                inflation_mode="tuned",
                inflation=float(np.clip(ref.get("inflation", 1.0), 1.0, 1.5)),
            )
        self.tuned_source = str(ref.get("source", ""))

    def filter_params(self, spec: RunSpec) -> dict:
        """inflation and radius a baseline run uses under the current settings."""
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
        return {"inflation": float(inflation), "radius": None if radius is None else float(radius)}

    def gc_radius(self) -> float:
        """The radius the Gaspari–Cohn reference curve is drawn at (what LETKF uses, else the slider)."""
        if self.localization == "tuned":
            r = self._tuned_for("letkf").get("radius")
            if r is not None:
                return float(r)
        return float(self.radius)

    def _make(self, spec: RunSpec):
        if spec.base == "mnmef":
            filt, info = load_mnmef(self.system, self.sigma_y, self.N)
            if filt is None:
                self.mnmef_status = f"MNMEF unavailable: {info}"
            else:
                self.mnmef_status = f"MNMEF weights: {describe_mnmef(info)}"
            return filt
        return self._make_baseline(spec)

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
        self.restart()

    @param.depends("seed", "filters", watch=True)
    def _on_restart_change(self):
        if not self._updating:
            self.restart()

    @param.depends("radius", watch=True)
    def _on_radius(self):
        if self._updating:
            return
        if self.localization != "Gaspari–Cohn" and self.has_space:
            with self._quietly():
                self.localization = "Gaspari–Cohn"  # moving the slider means: use this radius
        self.refilter()

    @param.depends("inflation", watch=True)
    def _on_inflation(self):
        if self._updating:
            return
        if self.inflation_mode != "manual":
            with self._quietly():
                self.inflation_mode = "manual"
        self.refilter()

    @param.depends("localization", "inflation_mode", watch=True)
    def _on_modes(self):
        if not self._updating:
            self.refilter()

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
        with self._quietly():
            self.param.update(preset=name, **{k: v for k, v in settings.items()
                                              if k not in ("localization", "radius", "inflation_mode", "inflation")})
            self._fit_component()
        self._apply_tuned_defaults()
        extra = {k: settings[k] for k in ("localization", "radius", "inflation_mode", "inflation") if k in settings}
        if extra:
            with self._quietly():
                self.param.update(**extra)
        self.restart()

    def play(self) -> None:
        if self.experiment is None:
            self.restart()
        if self.experiment is not None:
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
        self.restart()

    def close(self) -> None:
        """Drop the experiment and buffers (the session ended)."""
        with self._lock:
            self.playing = False
            self.closed = True
            self.experiment = None
            self.buffers = {}

    # ------------------------------------------------------------------ the engine
    def restart(self) -> None:
        """Build a fresh experiment from the current settings; on bad settings show a message."""
        with self._lock:
            problem = self._validate()
            if problem:
                self.message = problem
                self.playing = False
                self.experiment = None  # the plots keep the last frames; Play retries
                return
            sys_ = self.sys
            self.mnmef_status = ""
            filters, runs, warnings = {}, [], []
            try:
                for label in self.filters:
                    spec = RUNS[label]
                    f = self._make(spec)
                    if f is None:
                        warnings.append(self.mnmef_status)
                        continue
                    filters[label] = f
                    runs.append(spec)
                if not filters:
                    raise ValueError("no filter could be built: " + "; ".join(warnings))
                exp = TwinExperiment(sys_, float(self.sigma_y), int(self.N), filters, trajectories=1,
                                     seed=int(self.seed), purpose="test")
            except Exception as exc:  # invalid values → a message, the session goes on
                self.message = f"could not start: {exc}"
                self.playing = False
                self.experiment = None
                return
            if "MNMEF" not in self.filters:
                self.mnmef_status = ""
            self.experiment = exp
            self.runs = runs
            self.built_for = (self.system, tuple(spec.label for spec in runs))
            self.built_system = sys_
            self.message = "; ".join(warnings)
            W, d = self.window, sys_.dim
            blank = lambda: np.full((d, W), np.nan)  # noqa: E731
            self.cycles = np.arange(-W + 1, 1, dtype=float)
            self.truth_buf, self.obs_buf = blank(), blank()
            self.buffers = {spec.label: RunBuffers(blank(), blank(), blank(), np.full(W, np.nan)) for spec in runs}
            self._record(np.array([exp.truth[0]]), None,
                         {s.label: (exp.mean(s.label)[0][None], exp.spread(s.label)[0][None], np.array([np.nan]))
                          for s in runs}, {}, [0])
            with param.edit_constant(self):
                self.cycle = 0
            self.cycles_per_second = 0.0
            self._rate_hist.clear()
            self._owed = 0.0
            self._last_clock = None
            self.restarts += 1

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
        """How many cycles the tick should run now to keep `speed` cycles/s (0 when paused)."""
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

    def advance(self, n: int = 1) -> int:
        """Run up to n cycles (bounded by max_seconds_per_advance) and record them; thread-safe.

        Returns the number of cycles done. Never raises: an engine error pauses and shows a message.
        """
        if n <= 0:
            return 0
        with self._lock:
            exp = self.experiment
            if exp is None or self.closed:
                return 0
            start = time.perf_counter()
            truths, obs, per_run, locs, cycles = [], [], {s.label: ([], [], []) for s in self.runs}, {}, []
            done = 0
            try:
                while done < n:
                    exp.step()
                    done += 1
                    truths.append(exp.truth[0].copy())
                    obs.append(exp.observation[0].copy())
                    cycles.append(exp.cycle)
                    rr = exp.running_rrmse()
                    for s in self.runs:
                        dead = bool(exp.diverged[s.label][0])
                        m, sp, r = per_run[s.label]
                        if dead:
                            m.append(np.full(exp.system.dim, np.nan))
                            sp.append(np.full(exp.system.dim, np.nan))
                        else:
                            m.append(np.asarray(exp.mean(s.label)[0], dtype=float))
                            sp.append(np.asarray(exp.spread(s.label)[0], dtype=float))
                        r.append(float(rr[s.label][0]))
                        loc = getattr(exp.filters[s.label], "last_localization", None)
                        if loc is not None and not dead:
                            locs.setdefault(s.label, []).append(np.asarray(loc, dtype=float).reshape(-1, np.shape(loc)[-1])[0])
                    if time.perf_counter() - start > self.max_seconds_per_advance:
                        break
            except Exception as exc:  # engine bug: keep the session alive
                self.playing = False
                self.message = f"step failed: {type(exc).__name__}: {exc}"
            if done:
                self._record(np.array(truths), np.array(obs),
                             {k: (np.array(v[0]), np.array(v[1]), np.array(v[2])) for k, v in per_run.items()},
                             locs, cycles)
                with param.edit_constant(self):
                    self.cycle = exp.cycle
                now = time.monotonic()
                self._rate_hist.append((now, exp.cycle))
                t0, c0 = self._rate_hist[0]
                if now - t0 > 0.2:
                    self.cycles_per_second = (exp.cycle - c0) / (now - t0)
            return done

    def _record(self, truths, obs, per_run, locs, cycles) -> None:
        """Append k cycles to the rolling buffers (truths (k, d), obs (k, p) or None)."""
        k = len(truths)
        _shift_in(self.cycles, np.asarray(cycles, dtype=float))
        _shift_in(self.truth_buf, truths.T)
        sys_ = self.built_system
        full = np.full((sys_.dim, k), np.nan)
        if obs is not None:
            full[sys_.obs_idx, :] = obs.T
        _shift_in(self.obs_buf, full)
        for label, (means, spreads, rr) in per_run.items():
            b = self.buffers[label]
            _shift_in(b.mean, means.T)
            _shift_in(b.spread, spreads.T)
            _shift_in(b.error, np.abs(means - truths).T)
            _shift_in(b.rrmse, rr)
            for v in locs.get(label, []):
                b.loc_history.append(v)

    # ------------------------------------------------------------------ read-outs for the view
    def current_rrmse(self) -> dict[str, float]:
        """label → running R-RMSE now (nan where diverged or before the first cycle)."""
        if self.experiment is None or self.experiment.cycle == 0:
            return {s.label: float("nan") for s in self.runs}
        rr = self.experiment.running_rrmse()
        return {s.label: float(rr[s.label][0]) for s in self.runs}

    def diverged(self) -> dict[str, bool]:
        if self.experiment is None:
            return {}
        return {s.label: bool(self.experiment.diverged[s.label][0]) for s in self.runs}

    def learned_localization(self, label: str):
        """(distances, mean, std) of g_θ over recent cycles for an MNMEF run, or None."""
        b = self.buffers.get(label) if hasattr(self, "buffers") else None
        if b is None or not b.loc_history or self.experiment is None:
            return None
        filt = self.experiment.filters[label]
        dist = getattr(filt, "unique_distances", None)
        H = np.array(b.loc_history)
        if dist is None:
            dist = np.arange(H.shape[1])
        dist = np.asarray(dist, dtype=float).reshape(-1)
        return dist, H.mean(axis=0), H.std(axis=0)

    def gaspari_cohn_curve(self, distances: np.ndarray) -> np.ndarray:
        return gaspari_cohn(distances, self.gc_radius())

    def status_line(self) -> str:
        """'cycle 123 · 18.0 cycles/s · EnKF 0.31 · MNMEF diverged' (plain text)."""
        parts = [f"cycle {self.cycle}", f"{self.cycles_per_second:.1f} cycles/s"]
        rr, dead = self.current_rrmse(), self.diverged()
        for s in self.runs:
            parts.append(f"{s.label} diverged" if dead.get(s.label) else f"{s.label} R-RMSE {rr[s.label]:.3f}")
        return " · ".join(parts)
