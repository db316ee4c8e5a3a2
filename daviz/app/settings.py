"""The explorer's settings: what the user chose, within which bounds, and what each change means.

`ExplorerSettings` is a `param.Parameterized` and nothing more (no experiment, panel or bokeh): its
parameters carry their bounds (param refuses what lies outside; the widgets follow the parameters),
`problem()` names what makes a combination unusable, and the tuned inflation/radius fill the sliders
whenever system, N or σ_y change. A change that needs a new experiment (system, N, σ_y, seed,
filters, preset) triggers `restart_needed`; one that only needs other filter settings (localization,
inflation) triggers `refilter_needed`. The state (state.py) acts on both.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import param

from ..systems import get_system
from .. import methods
from .presets import NO_PRESET, PRESETS
from .runs import RUN_LABELS, RunSpec

SYSTEMS = {"Lorenz '63": "l63", "Lorenz '96": "l96", "Kuramoto–Sivashinsky": "ks"}
N_BOUNDS = (5, 100)
SIGMA_BOUNDS = (0.05, 10.0)
SEED_BOUNDS = (0, 2**32 - 1)
# What a typed value must be, in the words the page uses when it refuses one.
ACCEPTED = {"sigma_y": f"a number from {SIGMA_BOUNDS[0]} to {SIGMA_BOUNDS[1]}",
            "seed": "a whole number from 0 to 2³²−1"}
FILTER_MODES = ("localization", "radius", "inflation_mode", "inflation")  # tuned defaults, unless set explicitly


class ExplorerSettings(param.Parameterized):
    """Every choice the user can make, and the tuned values shown for them."""

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

    message = param.String(default="", doc="Last error or warning for the user ('' when all is well).")
    tuned_source = param.String(default="", doc="Where the tuned inflation/radius come from.")
    restart_needed = param.Event(doc="A change that needs a new experiment.")
    refilter_needed = param.Event(doc="A change that needs only new filter settings (the ensembles carry on).")

    def __init__(self, **params):
        super().__init__(**params)
        self._updating = False  # our own watchers ignore the parameters we set ourselves
        self._tuned_cache: dict = {}
        self.fit_component()

    @staticmethod
    def accepts(name: str, value) -> bool:
        """Whether param takes `value` for `name` (its type and bounds), without changing any settings."""
        try:
            ExplorerSettings(**{name: value})
        except (ValueError, TypeError):
            return False
        return True

    @property
    def sys(self):
        return get_system(self.system)

    @property
    def has_space(self) -> bool:
        """Whether the system has spatial structure (Hovmöller images, localization)."""
        return bool(self.sys.periodic)

    @property
    def busy(self) -> bool:
        """True while several parameters are being set at once (views should wait)."""
        return self._updating

    @contextmanager
    def quietly(self):
        """Set parameters (widgets follow) without our own watchers restarting or refiltering.

        One flag rather than param's `discard_events`: discarding would also keep the widgets linked
        to these parameters from showing the new values."""
        self._updating = True
        try:
            yield
        finally:
            self._updating = False

    def fit_component(self) -> None:
        """Bound the site slider to the current system's dimension (back to 0 if it was beyond)."""
        self.param.component.bounds = (0, self.sys.dim - 1)
        if self.component > self.sys.dim - 1:
            self.component = 0

    # ------------------------------------------------------------------ validation
    def _sigma_problem(self) -> str:
        lo, hi = SIGMA_BOUNDS
        try:
            sigma = float(self.sigma_y)
        except (TypeError, ValueError):
            return f"σ_y must be a number between {lo} and {hi}, got {self.sigma_y!r}"
        if not np.isfinite(sigma) or not lo <= sigma <= hi:
            return f"σ_y must be a number between {lo} and {hi}, got {self.sigma_y!r}"
        return ""

    def problem(self) -> str:
        """'' when the settings are usable, else a message for the user saying what is accepted."""
        if self._sigma_problem():
            return self._sigma_problem()
        if self.seed is None or not SEED_BOUNDS[0] <= self.seed <= SEED_BOUNDS[1]:
            return f"seed must be an integer from 0 to 2³²−1, got {self.seed!r}"
        if not self.filters:
            return "select at least one filter"
        return ""

    # ------------------------------------------------------------------ tuned values
    def tuned_for(self, base: str) -> dict:
        """Tuned inflation/radius (and settings) of `base` for the current system, N and σ_y."""
        key = (base, self.system, float(self.sigma_y), int(self.N))
        if key not in self._tuned_cache:  # strict=False: a broken table gives the fallback, not a dead app
            self._tuned_cache[key] = methods.tuned_settings(*key, strict=False)
        return self._tuned_cache[key]

    def forget_tuned(self) -> None:
        """Read the tables afresh next time (they may have been re-tuned since)."""
        self._tuned_cache.clear()

    def apply_tuned_defaults(self) -> None:
        """Slider values and modes back to the tuned LETKF values for the current system/N/σ_y."""
        if self._sigma_problem():
            return
        ref = self.tuned_for("letkf")
        lo, hi = self.sys.radius_bounds
        self.param.radius.bounds = (lo, hi)
        radius = ref.get("radius")
        with self.quietly():
            self.param.update(
                localization="tuned" if self.has_space else "off",
                radius=float(np.clip(radius if radius is not None else self.sys.fallback_radius or lo, lo, hi)),
                inflation_mode="tuned",
                inflation=float(np.clip(ref.get("inflation", 1.0), 1.0, 1.5)),
            )
        self.tuned_source = str(ref.get("source", ""))

    def overrides(self, spec: RunSpec) -> dict:
        """What the user (or the run's own variant) fixes for a run; the tuned tables give the rest."""
        fixed = {}
        if self.inflation_mode == "manual":
            fixed["inflation"] = float(self.inflation)
        if self.localization == "Gaspari–Cohn":
            fixed["radius"] = float(self.radius)
        elif self.localization == "off":
            fixed["radius"] = None
        if spec.radius_off or not self.has_space:
            fixed["radius"] = None
        if spec.no_inflation:
            fixed["inflation"] = 1.0
        return fixed

    def gc_radius(self) -> float:
        """The radius the Gaspari–Cohn reference curve is drawn at (what LETKF uses, else the slider)."""
        if self.localization == "tuned":
            r = self.tuned_for("letkf").get("radius")
            if r is not None:
                return float(r)
        return float(self.radius)

    def settings(self) -> dict:
        """The current settings (for the download and the status)."""
        return {name: getattr(self, name) for name in ("system", "N", "sigma_y", "seed", "filters", "localization",
                                                         "radius", "inflation_mode", "inflation", "speed")}

    # ------------------------------------------------------------------ presets
    def apply_preset(self, name: str) -> None:
        """Set every parameter the preset names in one batch, then restart once."""
        if name not in PRESETS:
            self.message = f"unknown preset {name!r}"
            return
        settings = dict(PRESETS[name]["settings"])
        with self.quietly():
            self.param.update(preset=name, **{k: v for k, v in settings.items() if k not in FILTER_MODES})
            self.fit_component()
        self.apply_tuned_defaults()
        extra = {k: settings[k] for k in FILTER_MODES if k in settings}
        if extra:
            with self.quietly():
                self.param.update(**extra)
        self.param.trigger("restart_needed")

    # ------------------------------------------------------------------ what a change means
    @param.depends("system", "N", "sigma_y", watch=True)
    def _on_setup_change(self):
        if self._updating:
            return
        self.fit_component()
        self.apply_tuned_defaults()
        self.param.trigger("restart_needed")

    @param.depends("seed", "filters", watch=True)
    def _on_restart_change(self):
        if not self._updating:
            self.param.trigger("restart_needed")

    @param.depends("radius", watch=True)
    def _on_radius(self):
        if self._updating:
            return
        if self.localization != "Gaspari–Cohn" and self.has_space:
            with self.quietly():
                self.localization = "Gaspari–Cohn"  # moving the slider means: use this radius
        self.param.trigger("refilter_needed")

    @param.depends("inflation", watch=True)
    def _on_inflation(self):
        if self._updating:
            return
        if self.inflation_mode != "manual":
            with self.quietly():
                self.inflation_mode = "manual"
        self.param.trigger("refilter_needed")

    @param.depends("localization", "inflation_mode", watch=True)
    def _on_modes(self):
        if not self._updating:
            self.param.trigger("refilter_needed")

    @param.depends("preset", watch=True)
    def _on_preset(self):
        if not self._updating and self.preset != NO_PRESET:
            self.apply_preset(self.preset)
