"""MNMEF checkpoints: a torch file (loaded with weights_only=True) plus a JSON sidecar of metadata.

Two kinds share the format: training states in runs/ (with optimizer, scheduler and position, for
`--resume`) and shipped weights in pretrained/ (model only). The torch file carries what is needed to
rebuild the model (system, sigma_y, model config); the sidecar carries provenance and evaluation figures.

Every problem with a file (missing, empty, corrupt, not ours, fields of the wrong type, another system or
sigma_y, a sidecar that is not a JSON object) raises CheckpointError with a one-line message: what is
wrong, with which file (its name; the full path is in `.path`), and what to do.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..artifacts import (CheckpointError, FileKind, add_evaluation, atomic_write, code_version, hardware, load_torch,
                         save_torch, shown, sidecar_path, write_meta)
from ..artifacts import read_meta as _read_meta
from ..systems import SYSTEM_NAMES, get_system
from .model import MNMEF, ModelConfig

FORMAT = "daviz-mnmef-1"
_REDO = "delete it and train or export it again"
KIND = FileKind("MNMEF", FORMAT, missing="check the path, or train one with `daviz train`", redo=_REDO,
                called="checkpoint", noun="checkpoint", plural=False)
__all__ = ["FORMAT", "CheckpointError", "atomic_write", "build_model", "check_fits", "code_version", "export_weights",
           "hardware", "load", "read_meta", "record_evaluation", "save", "shown", "sidecar_path", "write_meta"]


def save(path, payload: dict, meta: dict | None = None) -> None:
    """Write payload (tensors, numbers, strings, dicts, lists) and, if given, the JSON sidecar."""
    save_torch(path, {"format": FORMAT, **payload})
    if meta is not None:
        write_meta(path, meta)


def load(path, system: str | None = None, map_location="cpu", sigma_y: float | None = None) -> dict:
    """Read a checkpoint safely (weights_only=True: no code runs); check its fields and, if given, that it
    was trained for `system` and `sigma_y`. Raises CheckpointError naming the file and the problem."""
    data = load_torch(path, KIND, map_location)
    problem = _field_problem(data)
    if problem:
        raise KIND.problem(path, problem)
    check_fits(path, data["system"], data["sigma_y"], system, sigma_y)
    return data


def check_fits(path, trained_system: str, trained_sigma_y: float, system: str | None = None,
               sigma_y: float | None = None) -> None:
    """CheckpointError unless weights trained for (trained_system, trained_sigma_y) serve the request."""
    if system is not None and trained_system != system:
        raise CheckpointError(f"MNMEF checkpoint {shown(path)} was trained for system {trained_system!r}, not "
                              f"{system!r}: use weights trained for {system}", path)
    if sigma_y is not None and not abs(float(trained_sigma_y) - float(sigma_y)) <= 1e-9:
        raise CheckpointError(f"MNMEF checkpoint {shown(path)} was trained for sigma_y={float(trained_sigma_y)}, not "
                              f"{float(sigma_y)}: use weights trained for sigma_y={float(sigma_y)}", path)


def _field_problem(data: dict) -> str | None:
    """What is wrong with the fields needed to rebuild the model, or None."""
    if data.get("system") not in SYSTEM_NAMES:
        return f"was made for an unknown system {data.get('system')!r} (known: {', '.join(SYSTEM_NAMES)})"
    sigma = data.get("sigma_y")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (0 < float(sigma) < float("inf")):
        return f"has no valid sigma_y (got {sigma!r})"
    if not isinstance(data.get("model_config"), dict):
        return "has no model configuration"
    if not isinstance(data.get("model"), dict) or not all(isinstance(v, torch.Tensor) for v in data["model"].values()):
        return "has no model weights"
    N = data.get("N")
    if N is not None and (isinstance(N, bool) or not isinstance(N, int) or N < 2):
        return f"has an invalid ensemble size N={N!r}"
    return None


def read_meta(path, what: str = "MNMEF", redo: str = "export the weights again") -> dict:
    """The JSON sidecar next to `path` (a JSON object), or {} when there is none; a broken one raises
    CheckpointError naming the file, `what` it belongs to and what to do (`redo`)."""
    return _read_meta(path, what, redo)


def build_model(data: dict, path="checkpoint") -> MNMEF:
    """Rebuild the model from a loaded checkpoint (strict: every weight must be present and fit)."""
    try:
        model = MNMEF(get_system(data["system"]), float(data["sigma_y"]), ModelConfig(**data["model_config"]))
        model.load_state_dict(data["model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise KIND.unfit(path, exc) from None
    return model


def export_weights(src, dst) -> dict:
    """Ship a training checkpoint as weights only (no optimizer state): `dst` .pt + .json sidecar."""
    data = load(src)
    meta = read_meta(src)
    payload = {k: data[k] for k in ("system", "sigma_y", "N", "model_config", "model")}
    meta = {**meta, "exported_from": Path(src).name}
    save(dst, payload, meta)
    return meta


def record_evaluation(path, evaluation: dict) -> None:
    """Add evaluation figures (with the command that produced them) to the sidecar of `path`."""
    write_meta(path, add_evaluation(read_meta(path), evaluation))
