"""Every method by name: the one registry from the names `daviz evaluate --filters` takes to how each is built.

`build(name, system, sigma_y, N, ...)` makes the filter and says which settings it runs with;
`tuned_settings` answers "which tuned settings does this method use at (system, σ_y, N)"; `get(name)` gives
the method's flags. The CLI, the explorer and the benchmarks build filters only through here. Where the
settings come from, per family (the package that implements it):

- baseline (enkf, esrf, letkf, ienkf, kalman, ensf; daviz.filters): inflation, radius and EnSF's settings
  from the tuned tables (daviz.tuning.tables: nearest σ_y and N), else the system's fallback;
- latent (latent-ensf; daviz.latent): the inflation and γ recorded with the coupled VAE's weights;
- mnmef (mnmef, mnmef-pretrained, mnmef-finetuned; daviz.mnmef): learned, the shipped weights for (system,
  σ_y, N): fine-tuned for N where shipped, else pretrained ("mnmef"), or only one of them;
- variational (4dvar, nida, nida-4dvar; daviz.variational): 4D-Var's tuned window and B scaling, NIDA's
  shipped weights.

Nothing here imports torch: a method that needs it imports it when it is built.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .filters import FILTER_CLASSES, FILTER_NAMES, EnsembleFilter, filter_localizes, make_filter
from .systems import System, get_system
from .tuning.tables import tuned_params, untuned
from .variational import VARIATIONAL_NAMES

NO_LOCALIZATION = math.inf  # a radius that switches localization off (so does any radius <= 0)
_MNMEF_VARIANTS = {"mnmef": "auto", "mnmef-pretrained": "pretrained", "mnmef-finetuned": "finetuned"}


@dataclass(frozen=True)
class Method:
    """One method name: how it is built and what it needs.

    settings(method, system, sigma_y, N) -> its tuned settings (see `tuned_settings`);
    make(method, system, sigma_y, N, inflation, radius, tuned, params) -> (filter, report), `tuned` those
    settings, inflation and radius None where not overridden (see `build`).
    """

    name: str
    title: str
    family: str  # "baseline", "latent", "mnmef" or "variational": the package that implements it
    kind: str  # the built filter's `name` (what memory estimates count)
    settings: Callable
    make: Callable
    localizes: bool = False  # takes a localization radius (on systems with spatial structure)
    needs_weights: bool = False  # loads shipped weights (torch); they exist for some (system, σ_y, N) only
    optional: bool = False  # `daviz evaluate` skips it, with a message, when it cannot be built
    windowed: bool = False  # assimilates windows of observations: also scored at the window ends
    tunable: bool = False  # `daviz tune` searches its settings


# How each family finds its settings and builds its filter (torch imported only by the ones that need it).
def _table_settings(spec: Method, system: System, sigma_y: float, N: int) -> dict:
    return {"params": {}, **tuned_params(system.name, spec.name, N, sigma_y)}


def _build_baseline(spec, system, sigma_y, N, inflation, radius, tuned, params):
    infl = tuned["inflation"] if inflation is None else inflation
    rad = tuned["radius"] if radius is None else (None if radius <= 0 or math.isinf(radius) else radius)
    f = make_filter(spec.name, system, sigma_y, inflation=infl, radius=rad, **{**tuned.get("params", {}), **params})
    told = inflation is not None or radius is not None
    return f, {**f.params, "source": "command line" if told else tuned["source"]}


def _latent_settings(spec: Method, system: System, sigma_y: float, N: int) -> dict:
    from .latent import pretrained  # torch

    chosen = pretrained.tuned_settings(system, sigma_y)
    source = f"tuned with its VAE ({pretrained.weights_path(system, sigma_y).with_suffix('.json').name})"
    return {"inflation": chosen.get("inflation", 1.0), "radius": None,
            "params": {k: v for k, v in chosen.items() if k != "inflation"},
            "source": source if chosen else "default (not tuned)"}


def _build_latent(spec, system, sigma_y, N, inflation, radius, tuned, params):
    from .latent.pretrained import load_filter  # torch

    f, info = load_filter(system, sigma_y, inflation=tuned["inflation"] if inflation is None else inflation,
                          **{**tuned.get("params", {}), **params})
    told = inflation is not None
    return f, {**f.params, "vae": info, "source": "command line" if told else tuned["source"]}


def _mnmef_settings(spec: Method, system: System, sigma_y: float, N: int) -> dict:
    return {"inflation": None, "radius": None, "params": {}, "source": "learned (shipped weights)"}


def _build_mnmef(spec, system, sigma_y, N, inflation, radius, tuned, params):
    from .mnmef.pretrained import load_filter  # torch

    f, info = load_filter(system.name, sigma_y, N, variant=_MNMEF_VARIANTS[spec.name])
    return f, {"weights": info}


def _variational_settings(spec: Method, system: System, sigma_y: float, N: int) -> dict:
    from .variational.tuned import fourdvar_params

    params = fourdvar_params(system.name, sigma_y)
    return {"inflation": None, "radius": None, "source": params.pop("source"), "params": params}


def _build_variational(spec, system, sigma_y, N, inflation, radius, tuned, params):
    from .variational import build_variational  # its tuned window and B: variational.tuned

    return build_variational(spec.name, system, sigma_y)


_BASELINE_TITLES = {"enkf": "EnKF", "esrf": "ESRF", "letkf": "LETKF", "ienkf": "IEnKF", "kalman": "Kalman filter",
                    "ensf": "EnSF"}
METHODS: dict[str, Method] = {m.name: m for m in (
    *(Method(name, _BASELINE_TITLES[name], "baseline", name, _table_settings, _build_baseline,
             localizes=cls.localizes, tunable=name in FILTER_NAMES or hasattr(cls, "tune_grid"))
      for name, cls in FILTER_CLASSES.items()),
    Method("latent-ensf", "Latent-EnSF", "latent", "latent-ensf", _latent_settings, _build_latent,
           needs_weights=True, optional=True),
    *(Method(name, title, "mnmef", "mnmef", _mnmef_settings, _build_mnmef, needs_weights=True, optional=True)
      for name, title in zip(_MNMEF_VARIANTS, ("MNMEF", "MNMEF (pretrained)", "MNMEF (fine-tuned)"))),
    # NIDA's missing weights stop `daviz evaluate` (not optional), as they always have
    *(Method(name, title, "variational", name, _variational_settings, _build_variational,
             needs_weights=name != "4dvar", windowed=True)
      for name, title in zip(VARIATIONAL_NAMES, ("4D-Var", "Neural Incremental DA", "NIDA + 4D-Var"))),
)}


def get(name: str) -> Method:
    """The method registered as `name`, or ValueError naming the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown filter {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def tunable_names() -> tuple[str, ...]:
    """The methods `daviz tune` searches settings for."""
    return tuple(name for name, m in METHODS.items() if m.tunable)


def tuned_settings(name: str, system: System | str, sigma_y: float, N: int, strict: bool = True) -> dict:
    """{inflation, radius, params, source}: the settings `build` gives `name` at (system, σ_y, N) unless told
    otherwise. inflation/radius None: the method has none (or does not localize on this system); params: its
    other settings (EnSF's kernel, Latent-EnSF's γ, 4D-Var's window and B scaling).

    strict=False: where they cannot be read (a broken table or sidecar, no torch), the untuned fallback with
    source "fallback (<error>)" instead of the error (the explorer carries on; the CLI stops).
    """
    spec = get(name)
    system = get_system(system) if isinstance(system, str) else system
    try:
        return spec.settings(spec, system, float(sigma_y), int(N))
    except Exception as exc:
        if strict:
            raise
        return {**untuned(system, filter_localizes(name, system), f"fallback ({type(exc).__name__})"), "params": {}}


def build(name: str, system: System | str, sigma_y: float, N: int, inflation: float | None = None,
          radius: float | None = None, tuned: dict | None = None, **params) -> tuple[EnsembleFilter, dict]:
    """(filter, report) for method `name` at (system, σ_y, N); the report holds the filter's settings and
    where they come from ("source": a tuned entry, a default, or "command line" when overridden).

    inflation, radius: None takes the tuned value; a radius <= 0 or infinite (NO_LOCALIZATION) switches
    localization off. `params` override the tuned settings (EnSF's kernel, IEnKF's tol, Latent-EnSF's γ).
    `tuned`: the settings to start from, default `tuned_settings(name, ...)` (the explorer passes the ones
    it holds). MNMEF, 4D-Var and NIDA take none of these. Missing weights raise CheckpointError (a
    ValueError), a missing torch ImportError.
    """
    spec = get(name)
    system = get_system(system) if isinstance(system, str) else system
    sigma_y, N = float(sigma_y), int(N)
    tuned = spec.settings(spec, system, sigma_y, N) if tuned is None else tuned
    return spec.make(spec, system, sigma_y, N, inflation, radius, tuned, params)
