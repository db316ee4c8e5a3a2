"""Classic ensemble filters of the paper's benchmarks (numpy, float64, batched over trajectories).

Only the baselines live here; daviz.methods builds every method by name, these included.
"""
from __future__ import annotations

from ..systems import System, get_system
from .base import EnsembleFilter, inflate
from .enkf import EnKF
from .ensf import EnSF
from .etkf import ESRF
from .ienkf import IEnKF
from .kalman import KalmanFilter
from .letkf import LETKF

FILTER_CLASSES = {cls.name: cls for cls in (EnKF, ESRF, LETKF, IEnKF, KalmanFilter, EnSF)}
FILTER_NAMES = ("enkf", "esrf", "letkf", "ienkf")  # the paper's baselines


def filter_localizes(name: str, system: System) -> bool:
    """Whether the baseline `name` uses a localization radius on `system` (only where it has spatial structure)."""
    return name in FILTER_CLASSES and FILTER_CLASSES[name].localizes and bool(system.periodic)


def make_filter(name: str, system: System | str, sigma_y: float, inflation=1.0, radius=None,
                **params) -> EnsembleFilter:
    """A baseline filter by name; `radius` None means no localization (ignored by ESRF and IEnKF).

    `params` are filter-specific settings (EnSF: steps, eps_alpha, eps_beta, damping, kernel). Inflation and
    radius may be arrays, one value per batch element (tuning runs a grid in one batch).
    """
    if name not in FILTER_CLASSES:
        raise ValueError(f"unknown filter {name!r}; choose one of {', '.join(FILTER_CLASSES)}")
    system = get_system(system) if isinstance(system, str) else system
    if not filter_localizes(name, system):
        radius = None  # ESRF, IEnKF, ...; or no spatial structure (L63, linear): localization is off
    return FILTER_CLASSES[name](system, sigma_y, inflation=inflation, radius=radius, **params)


__all__ = ["EnsembleFilter", "EnKF", "ESRF", "LETKF", "IEnKF", "KalmanFilter", "EnSF", "make_filter",
           "filter_localizes", "FILTER_NAMES", "FILTER_CLASSES", "inflate"]
