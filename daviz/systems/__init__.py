"""Dynamical systems of the paper (§5, App. C.3) plus a linear-Gaussian one with an exact filter."""
from __future__ import annotations

from .base import System, periodic_index_distances
from .kuramoto_sivashinsky import KuramotoSivashinsky, make_kuramoto_sivashinsky
from .linear_gaussian import LinearGaussian, make_linear_gaussian
from .lorenz63 import Lorenz63, make_lorenz63
from .lorenz96 import Lorenz96, make_lorenz96

_FACTORIES = {
    "l63": make_lorenz63,
    "l96": make_lorenz96,
    "ks": make_kuramoto_sivashinsky,
    "linear": make_linear_gaussian,
}
SYSTEM_NAMES = tuple(_FACTORIES)
_cache: dict[str, System] = {}


def get_system(name: str) -> System:
    """The system registered as `name` (one of SYSTEM_NAMES); instances are shared."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown system {name!r}; choose one of {', '.join(SYSTEM_NAMES)}")
    if name not in _cache:
        _cache[name] = _FACTORIES[name]()
    return _cache[name]


__all__ = [
    "System", "Lorenz63", "Lorenz96", "KuramotoSivashinsky", "LinearGaussian",
    "get_system", "SYSTEM_NAMES", "periodic_index_distances",
]
