"""NIDA weights: a torch file (loaded with weights_only=True) plus a JSON sidecar, as for MNMEF.

Shipped files are `pretrained/nida_{system}_sigma{sigma_y}_L{window}.pt` (+ `.json`). The torch file holds what
rebuilds the model (system, sigma_y, config, climatological normalization, weights); the sidecar holds the
provenance (recipe, budget, seeds, code version, hardware, loss history, evaluation figures with commands).
Every problem with a file raises CheckpointError (daviz.artifacts, a ValueError) with a one-line message
naming the file (never its absolute path) and what to do.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

from .. import artifacts
from ..artifacts import (CheckpointError, FileKind, add_evaluation, load_torch, save_torch, shown, sidecar_path,
                         write_meta)
from ..systems import SYSTEM_NAMES
from .nida import NIDA, NIDAConfig

FORMAT = "daviz-nida-1"
PRETRAINED_DIR = artifacts.PRETRAINED_DIR  # read at call time: a test may point this package elsewhere
_NAME = re.compile(r"^nida_(?P<system>[a-z0-9]+)_sigma(?P<sigma>[0-9.]+)_L(?P<L>\d+)\.pt$")
KIND = FileKind("NIDA", FORMAT, missing="train them with `python -m daviz.variational.nida_train`",
                redo="delete it and train it again with `python -m daviz.variational.nida_train`")
_cache: dict = {}
_lock = threading.Lock()
__all__ = ["FORMAT", "PRETRAINED_DIR", "CheckpointError", "available", "load", "load_pretrained", "read_meta",
           "record_evaluation", "save", "sidecar_path", "weights_name"]


def weights_name(system: str, sigma_y: float, window: int) -> str:
    return f"nida_{system}_sigma{float(sigma_y)}_L{int(window)}.pt"


def save(path, model: NIDA, meta: dict | None = None, extra: dict | None = None) -> None:
    """Weights (+ optimizer etc. in `extra` for training states) and, if given, the sidecar."""
    path = Path(path)
    payload = {"format": FORMAT, "system": model.system.name, "sigma_y": model.sigma_y,
               "config": model.config.as_dict(), "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               **(extra or {})}
    save_torch(path, payload)
    if meta is not None:
        write_meta(path, meta)


def read_meta(path) -> dict:
    """The weights' JSON sidecar ({} when there is none; a broken one: CheckpointError)."""
    return artifacts.read_meta(path, "NIDA", "train the weights again")


def load(path, system: str | None = None, sigma_y: float | None = None) -> tuple[NIDA, dict]:
    """(model in eval mode, frozen, float32 CPU; sidecar) from a weights file; CheckpointError on any problem."""
    path = Path(path)
    data = load_torch(path, KIND)
    if data.get("system") not in SYSTEM_NAMES or not isinstance(data.get("config"), dict) \
            or not isinstance(data.get("model"), dict) or not isinstance(data.get("sigma_y"), (int, float)):
        raise KIND.problem(path, "lack the system, sigma_y, config or weights")
    if system is not None and data["system"] != system:
        raise CheckpointError(f"NIDA weights {shown(path)} were trained for system {data['system']!r}, not {system!r}",
                              path)
    if sigma_y is not None and abs(float(data["sigma_y"]) - float(sigma_y)) > 1e-9:
        raise CheckpointError(f"NIDA weights {shown(path)} were trained for sigma_y={float(data['sigma_y'])}, not "
                              f"{float(sigma_y)}", path)
    try:
        state = data["model"]
        model = NIDA(data["system"], float(data["sigma_y"]), NIDAConfig(**data["config"]),
                     state["mean"].numpy(), state["std"].numpy())
        model.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise KIND.unfit(path, exc) from None
    model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    return model, read_meta(path)


def available(directory=None) -> list[dict]:
    directory = Path(PRETRAINED_DIR if directory is None else directory)
    out = []
    for path in sorted(directory.glob("nida_*.pt")) if directory.is_dir() else []:
        m = _NAME.match(path.name)
        if m:
            try:
                out.append({"system": m["system"], "sigma_y": float(m["sigma"]), "window": int(m["L"]), "file": str(path)})
            except ValueError:
                continue
    return out


def load_pretrained(system: str, sigma_y: float, directory=None) -> tuple[NIDA, dict]:
    """The shipped model for (system, sigma_y) (cached per process, thread-safe), or CheckpointError."""
    entries = [e for e in available(directory) if e["system"] == system and abs(e["sigma_y"] - float(sigma_y)) < 1e-9]
    if not entries:
        raise CheckpointError(f"no NIDA weights for {system} at sigma_y={float(sigma_y)}: train them with "
                              f"`python -m daviz.variational.nida_train --system {system} --sigma-y {float(sigma_y)}`",
                              directory)
    path = entries[0]["file"]
    key = str(Path(path).resolve())
    with _lock:
        if key not in _cache:
            _cache[key] = load(path, system, sigma_y)
        model, meta = _cache[key]
    return model, {**meta, "file": Path(path).name}


def record_evaluation(system: str, sigma_y: float, key: str, entry: dict, directory=None) -> str:
    """Add `entry` (with the command that produced it) under sidecar["evaluation"][key] of the shipped weights."""
    path = next((e["file"] for e in available(directory)
                 if e["system"] == system and abs(e["sigma_y"] - float(sigma_y)) < 1e-9), None)
    if path is None:
        raise CheckpointError(f"no NIDA weights for {system} at sigma_y={float(sigma_y)}", directory)
    write_meta(path, add_evaluation(read_meta(path), {key: entry}))
    return path
