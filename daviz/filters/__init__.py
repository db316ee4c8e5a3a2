"""Classic ensemble filters of the paper's benchmarks (numpy, float64, batched over trajectories)."""
from __future__ import annotations

from ..systems import System, get_system
from .base import EnsembleFilter, inflate
from .enkf import EnKF
from .etkf import ESRF
from .ienkf import IEnKF
from .kalman import KalmanFilter
from .letkf import LETKF

FILTER_CLASSES = {cls.name: cls for cls in (EnKF, ESRF, LETKF, IEnKF, KalmanFilter)}
FILTER_NAMES = ("enkf", "esrf", "letkf", "ienkf")  # the paper's baselines
FILTER_TITLES = {"enkf": "EnKF", "esrf": "ESRF", "letkf": "LETKF", "ienkf": "IEnKF", "kalman": "Kalman", "mnmef": "MNMEF"}


def make_filter(name: str, system: System | str, sigma_y: float, inflation=1.0, radius=None) -> EnsembleFilter:
    """A baseline filter by name; `radius` None means no localization (ignored by ESRF and IEnKF)."""
    if name not in FILTER_CLASSES:
        raise ValueError(f"unknown filter {name!r}; choose one of {', '.join(FILTER_CLASSES)}")
    system = get_system(system) if isinstance(system, str) else system
    cls = FILTER_CLASSES[name]
    if cls.localizes and radius is not None and not system.periodic:
        radius = None  # no spatial structure (L63, linear): localization is off
    return cls(system, sigma_y, inflation=inflation, radius=radius if cls.localizes else None)


__all__ = ["EnsembleFilter", "EnKF", "ESRF", "LETKF", "IEnKF", "KalmanFilter", "make_filter",
           "FILTER_NAMES", "FILTER_CLASSES", "FILTER_TITLES", "inflate"]
