"""Shipped coupled-VAE weights for Latent-EnSF: pretrained/latent_{system}_sigma{σ_y}_every{k}.pt + .json.

`k` is the observation spacing the VAE's observation encoder was trained for (L96 every 4th site, KS every
8th). The torch file holds what rebuilds the model (format tag, system, sigma_y, obs_idx, config, weights)
and is read with torch.load(weights_only=True): no code runs. The JSON sidecar holds provenance (command,
code version, training record), the held-out metrics and the filter settings (inflation, γ) chosen on
"tune" trajectories: their one home, since they belong to these weights (`tuned_settings`).

Every problem (missing, empty, corrupt, not ours, fields of the wrong type, weights for another system,
σ_y or observation pattern, a sidecar that is not a JSON object) raises CheckpointError (a ValueError)
with a one-line message naming the file (never its absolute path) and what to do. Loaded weights are
cached per file (thread-safe) and shared read-only: the filter runs on a numpy copy.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from .. import artifacts
from ..artifacts import CheckpointError, FileKind, load_torch, save_torch, shown, write_meta
from ..systems import SYSTEM_NAMES, System, get_system
from .filter import LatentEnSF
from .vae import CoupledVAE, NumpyVAE, VAEConfig

FORMAT = "daviz-latent-vae-1"
PRETRAINED_DIR = artifacts.PRETRAINED_DIR  # read at call time: a test may point this package elsewhere
KIND = FileKind("Latent-EnSF", FORMAT, missing="train them with `daviz train-latent`",
                redo="delete it and train it again with `daviz train-latent`")
TRAINABLE = ("l96", "ks")  # the systems `daviz train-latent` serves
_cache: dict = {}
_lock = threading.Lock()


def obs_every(system: System) -> int:
    """The spacing of a regular observation pattern (obs_idx = 0, k, 2k, ...), or 0 for another pattern."""
    idx = np.asarray(system.obs_idx)
    k = int(idx[1] - idx[0]) if len(idx) > 1 else system.dim
    return k if idx[0] == 0 and np.array_equal(idx, np.arange(0, system.dim, k)) else 0


def weights_name(system: System, sigma_y: float) -> str:
    return f"latent_{system.name}_sigma{float(sigma_y)}_every{obs_every(system)}.pt"


def weights_path(system: System | str, sigma_y: float, directory=None) -> Path:
    system = get_system(system) if isinstance(system, str) else system
    return Path(PRETRAINED_DIR if directory is None else directory) / weights_name(system, sigma_y)


def save(path, model: CoupledVAE, system: System, sigma_y: float, meta: dict) -> None:
    """Weights (atomic write) and the JSON sidecar."""
    path = Path(path)
    payload = {"format": FORMAT, "system": system.name, "sigma_y": float(sigma_y),
               "obs_idx": [int(i) for i in system.obs_idx], "config": model.config.to_dict(),
               "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    save_torch(path, payload)
    write_meta(path, meta)


def _field_problem(data: dict) -> str | None:
    if data.get("system") not in SYSTEM_NAMES:
        return f"was made for an unknown system {data.get('system')!r}"
    sigma = data.get("sigma_y")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < float(sigma) < float("inf"):
        return f"has no valid sigma_y (got {sigma!r})"
    idx = data.get("obs_idx")
    if not isinstance(idx, list) or not idx or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
        return "has no valid observation indices"
    cfg = data.get("config")
    if not isinstance(cfg, dict) or set(cfg) != {"dim", "obs_dim", "latent", "hidden", "layers"}:
        return "has no valid model configuration"
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in cfg.values()):
        return "has a model configuration that is not made of integers"
    if cfg["dim"] != get_system(data["system"]).dim or cfg["obs_dim"] != len(idx) \
            or not (1 <= cfg["latent"] <= 1024 and 1 <= cfg["hidden"] <= 4096 and 1 <= cfg["layers"] <= 8):
        return f"has a model configuration that does not fit {data['system']!r} ({cfg})"
    if not isinstance(data.get("model"), dict) or not all(isinstance(v, torch.Tensor) for v in data["model"].values()):
        return "has no model weights"
    return None


def read_meta(path) -> dict:
    """The weights' JSON sidecar ({} when there is none; a broken one: CheckpointError)."""
    return artifacts.read_meta(path, "Latent-EnSF", "train the VAE again")


def load(path, system: System | None = None, sigma_y: float | None = None) -> tuple[NumpyVAE, dict]:
    """(NumpyVAE, sidecar) from a weights file, cached per file; with `system` / `sigma_y`, weights made for
    another system, σ_y or observation pattern are refused (CheckpointError), cached or not."""
    path = Path(path)
    name = shown(path)
    key = str(path.resolve())
    with _lock:
        if key not in _cache:
            data = load_torch(path, KIND)
            problem = _field_problem(data)
            if problem:
                raise KIND.problem(path, problem)
            meta = read_meta(path)
            try:
                model = CoupledVAE(VAEConfig(**data["config"]), data["obs_idx"])
                model.load_state_dict(data["model"])
            except (TypeError, RuntimeError, ValueError) as exc:
                raise KIND.unfit(path, exc) from None
            _cache[key] = (NumpyVAE(model.eval()), meta, data["system"], float(data["sigma_y"]), data["obs_idx"])
        vae, meta, trained_system, trained_sigma, trained_idx = _cache[key]
    if system is not None:
        if trained_system != system.name:
            raise CheckpointError(f"Latent-EnSF weights {name} were trained for {trained_system!r}, not "
                                  f"{system.name!r}", path)
        if list(trained_idx) != [int(i) for i in system.obs_idx]:
            raise CheckpointError(f"Latent-EnSF weights {name} were trained for another observation pattern than "
                                  f"{system.title}'s ({len(trained_idx)} sites, not {system.obs_dim})", path)
    if sigma_y is not None and abs(trained_sigma - float(sigma_y)) > 1e-9:
        raise CheckpointError(f"Latent-EnSF weights {name} were trained for sigma_y={trained_sigma}, not "
                              f"{float(sigma_y)}", path)
    return vae, meta


def chosen_settings(meta: dict) -> dict:
    """The filter settings (inflation, gamma) `daviz train-latent` chose for these weights on "tune" trajectories,
    as far as the sidecar `meta` records them (its "filter" entry)."""
    record = meta.get("filter") if isinstance(meta.get("filter"), dict) else {}
    return {k: record[k] for k in ("inflation", "gamma") if k in record}


def tuned_settings(system: System | str, sigma_y: float, directory=None) -> dict:
    """`chosen_settings` of the shipped weights for (system, σ_y), read from their sidecar alone (no torch
    load); {} when nothing is shipped or recorded."""
    return chosen_settings(read_meta(weights_path(system, sigma_y, directory)))


def load_filter(system: System | str, sigma_y: float, inflation=None, directory=None, **params):
    """(LatentEnSF, info) with the shipped weights for (system, its observation pattern, σ_y).

    inflation None: the value in the sidecar's "filter" settings (else 1.0); `gamma` and EnSF settings in
    `params` override the sidecar's. CheckpointError when no weights are shipped for this setting.
    """
    system = get_system(system) if isinstance(system, str) else system
    path = weights_path(system, sigma_y, directory)
    if not path.is_file():
        if system.name not in TRAINABLE:
            made_for = " and ".join(get_system(name).title for name in TRAINABLE)
            raise CheckpointError(f"no Latent-EnSF for {system.title}: its coupled VAE is made for {made_for} only",
                                  path)
        raise CheckpointError(f"no Latent-EnSF weights for {system.title} at sigma_y={float(sigma_y)}: run "
                              f"`daviz train-latent --system {system.name} --sigma-y {float(sigma_y)}`", path)
    vae, meta = load(path, system, sigma_y)
    chosen = chosen_settings(meta)
    settings = {k: v for k, v in chosen.items() if k != "inflation"}
    settings.update(params)
    infl = chosen.get("inflation", 1.0) if inflation is None else inflation
    f = LatentEnSF(system, sigma_y, vae, inflation=infl, **settings)
    info = {"file": path.name, "latent": int(vae.latent), "heldout": meta.get("heldout"),
            "settings_from": "sidecar (tuned)" if chosen else "defaults"}
    return f, info


def available(directory=None) -> list[str]:
    """File names of the shipped Latent-EnSF weights."""
    try:
        return sorted(p.name for p in Path(PRETRAINED_DIR if directory is None else directory).glob("latent_*.pt"))
    except OSError:
        return []
