"""MNMEFFilter: the learned analysis as an engine EnsembleFilter (numpy float64 in and out).

The forecast is the engine's (numpy float64); the analysis runs the torch model (CUDA when available,
else CPU) under inference_mode. `cycle` applies no multiplicative inflation: MNMEF learns its own.
Observation perturbations come from the engine's `observation_perturbations`, so for a given rng the
noise draw is the one the perturbed-observation EnKF would use.
"""
from __future__ import annotations

import numpy as np
import torch

from ..filters.base import EnsembleFilter, check_ensemble
from ..filters.enkf import observation_perturbations
from .model import MNMEF


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class MNMEFFilter(EnsembleFilter):
    name = "mnmef"
    localizes = False  # localization is learned, not a radius

    def __init__(self, model: MNMEF, device=None, dtype=torch.float32):
        super().__init__(model.system, model.sigma_y)
        self.model = model
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype
        if next(model.parameters()).device != self.device or next(model.parameters()).dtype != dtype:
            # a private copy: shared cached weights stay untouched on their device and dtype
            import copy
            self.model = copy.deepcopy(model).to(self.device, dtype)
        self.model.eval()
        self.last_localization: np.ndarray | None = None

    @property
    def unique_distances(self) -> np.ndarray | None:
        """The periodic distances g_θ is defined on (None where localization is off)."""
        return self.model.unique_distances

    def _tensor(self, a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=self.dtype, device=self.device)

    def analysis(self, E, y, rng):
        check_ensemble(E, y, self.system)
        B, N, _ = E.shape
        D = observation_perturbations(rng, B, N, self.system.obs_dim, self.sigma_y)
        with torch.inference_mode():
            Ea, g = self.model(self._tensor(E), self._tensor(y), self._tensor(D))
        self.last_localization = None if g is None else g.double().cpu().numpy()
        return Ea.double().cpu().numpy()

    def cycle(self, E, y, rng):
        return self.analysis(self.forecast(E, rng), y, rng)
