"""Classic ensemble filters of the paper's benchmarks (numpy, float64, batched over trajectories)."""
from __future__ import annotations

from ..systems import System, get_system
from ..variational import VARIATIONAL_NAMES  # 4D-Var, NIDA (torch only when built)
from .base import EnsembleFilter, inflate
from .enkf import EnKF
from .ensf import EnSF
from .etkf import ESRF
from .ienkf import IEnKF
from .kalman import KalmanFilter
from .letkf import LETKF

FILTER_CLASSES = {cls.name: cls for cls in (EnKF, ESRF, LETKF, IEnKF, KalmanFilter, EnSF)}
FILTER_NAMES = ("enkf", "esrf", "letkf", "ienkf")  # the paper's baselines


def make_filter(name: str, system: System | str, sigma_y: float, inflation=1.0, radius=None,
                **params) -> EnsembleFilter:
    """A baseline filter by name; `radius` None means no localization (ignored by ESRF and IEnKF).

    `params` are filter-specific settings (EnSF: steps, eps_alpha, eps_beta, damping, kernel). "latent-ensf"
    loads the shipped coupled-VAE weights for (system, sigma_y) (torch needed; CheckpointError if missing);
    its inflation=None means the one recorded with the weights.
    """
    if name in VARIATIONAL_NAMES:  # daviz.variational: inflation and radius do not apply (tuned window, B)
        from ..variational import build_variational

        return build_variational(name, system, sigma_y)[0]
    if name == "latent-ensf":
        from ..latent.pretrained import load_filter  # torch only when asked for

        return load_filter(system, sigma_y, inflation=inflation, **params)[0]
    if name not in FILTER_CLASSES:
        raise ValueError(f"unknown filter {name!r}; choose one of {', '.join(FILTER_CLASSES)}")
    system = get_system(system) if isinstance(system, str) else system
    cls = FILTER_CLASSES[name]
    if cls.localizes and radius is not None and not system.periodic:
        radius = None  # no spatial structure (L63, linear): localization is off
    return cls(system, sigma_y, inflation=inflation, radius=radius if cls.localizes else None, **params)


__all__ = ["EnsembleFilter", "EnKF", "ESRF", "LETKF", "IEnKF", "KalmanFilter", "EnSF", "make_filter",
           "FILTER_NAMES", "FILTER_CLASSES", "inflate"]
