"""Warm start: MNMEF at step 0 is exactly the tuned localized perturbed-observation EnKF (issue 20).

The MNMEF analysis (daviz.mnmef.model) contains that EnKF as a special case: gain corrections w = z = 0,
learned additive inflation 0, g_θ = Gaspari–Cohn at the tuned radius, and the tuned multiplicative inflation
after the analysis. So:
  * the last Linear of the gain, inflation and localization heads is zeroed (weights and bias): F = 0;
  * the non-trained buffer `loc_prior` is set so that g = 2·act(prior + 0) equals GC at the unique distances:
        sigmoid: prior_k = ln(G_k / (2 − G_k)),   softmax: prior_k = ln G_k  (shape only: Σg = 2),
    with G_k = max(GC(u_k; r_N), floor): a floor above 0 keeps the sigmoid's gradient alive where GC is 0,
    so training can still open up weights beyond the taper's support;
  * the buffer `fixed_inflation` is set to the tuned α_N (a buffer: with one-cycle truncated backprop the
    inflation would get no gradient, and weight decay would pull a parameter away from it).
The tuned (inflation, radius) come from the shipped EnKF tables (daviz/tuned/{system}_enkf.json).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..filters.localization import gaspari_cohn
from .model import MNMEF

DEFAULT_FLOOR = 1e-3


def tuned_enkf(system: str, sigma_y: float, N: int) -> dict:
    """The tuned localized EnKF's {inflation, radius, source} for (system, σ_y, N)."""
    from ..tuning import tuned_params  # the tables' one reader

    return tuned_params(system, "enkf", int(N), float(sigma_y))


def localization_prior(model: MNMEF, radius: float, floor: float = DEFAULT_FLOOR) -> torch.Tensor:
    """The `loc_prior` that makes g = Gaspari–Cohn at `radius` (floored) when F_loc outputs 0."""
    if not 0 < floor < 1:
        raise ValueError(f"localization floor must be in (0, 1), got {floor!r}")
    G = np.maximum(gaspari_cohn(model.unique_distances, radius), floor)
    prior = np.log(G / (2 - G)) if model.config.loc_activation == "sigmoid" else np.log(G)
    return torch.as_tensor(prior, dtype=model.loc_prior.dtype)


def set_enkf_prior(model: MNMEF, N: int, floor: float = DEFAULT_FLOOR, settings: dict | None = None) -> dict:
    """Set the buffers (localization prior, fixed inflation) to the tuned EnKF's at ensemble size N, leaving
    the trained weights alone (a per-N fine-tune's start). Returns the settings used."""
    s = settings or tuned_enkf(model.system.name, model.sigma_y, N)
    with torch.no_grad():
        model.fixed_inflation.fill_(float(s["inflation"]))
        if model.localization is not None:
            radius = s.get("radius")
            if radius is None or not math.isfinite(float(radius)):
                model.loc_prior.copy_(localization_prior(model, math.inf, floor))
            else:
                model.loc_prior.copy_(localization_prior(model, float(radius), floor))
    return {"N": int(N), "inflation": float(s["inflation"]), "radius": s.get("radius"),
            "source": s.get("source", "given"), "floor": floor}


def zero_heads(model: MNMEF) -> None:
    """Zero the last layer of the gain, inflation and localization heads: their outputs start at 0."""
    heads = [model.gain, model.inflation] + ([model.localization] if model.localization is not None else [])
    with torch.no_grad():
        for head in heads:
            head[-1].weight.zero_()
            head[-1].bias.zero_()


def warm_start(model: MNMEF, N: int, floor: float = DEFAULT_FLOOR, settings: dict | None = None) -> dict:
    """Make `model` the tuned localized EnKF at ensemble size N (set transformer untouched). Returns the
    settings used, for the checkpoint's sidecar."""
    zero_heads(model)
    return set_enkf_prior(model, N, floor, settings)
