"""MNMEF checkpoints: a torch file (loaded with weights_only=True) plus a JSON sidecar of metadata.

Two kinds share the format: training states in runs/ (with optimizer, scheduler and position, for
`--resume`) and shipped weights in pretrained/ (model only). The torch file carries what is needed to
rebuild the model (system, sigma_y, model config); the sidecar carries provenance and evaluation figures.

Every problem with a file (missing, empty, corrupt, not ours, fields of the wrong type, another system or
sigma_y, a sidecar that is not a JSON object) raises CheckpointError with a one-line message: what is
wrong, with which file (its name; the full path is in `.path`), and what to do.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from ..systems import SYSTEM_NAMES, get_system
from .model import MNMEF, ModelConfig

FORMAT = "daviz-mnmef-1"
_REDO = "delete it and train or export it again"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the request; the message names the file."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = None if path is None else str(path)


def shown(path) -> str:
    """How messages name a file: as given when relative, else by its name only (no long absolute paths)."""
    path = Path(path)
    return path.name if path.is_absolute() else str(path)


def sidecar_path(path) -> Path:
    return Path(path).with_suffix(".json")


def atomic_write(path: Path, write) -> None:
    """write(tmp) then rename over `path`: a crash mid-write never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save(path, payload: dict, meta: dict | None = None) -> None:
    """Write payload (tensors, numbers, strings, dicts, lists) and, if given, the JSON sidecar."""
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **payload}, tmp))
    if meta is not None:
        write_meta(path, meta)


def write_meta(path, meta: dict) -> None:
    """The JSON sidecar next to `path` (atomic)."""
    atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"))


def load(path, system: str | None = None, map_location="cpu", sigma_y: float | None = None) -> dict:
    """Read a checkpoint safely (weights_only=True: no code runs); check its fields and, if given, that it
    was trained for `system` and `sigma_y`. Raises CheckpointError naming the file and the problem."""
    path = Path(path)
    name = shown(path)
    if not path.is_file():
        raise CheckpointError(f"MNMEF checkpoint {name} does not exist: check the path, or train one with `daviz train`",
                              path)
    try:
        empty = path.stat().st_size == 0
    except OSError as exc:
        raise CheckpointError(f"MNMEF checkpoint {name} cannot be read ({exc.strerror}): check its permissions", path) from None
    if empty:
        raise CheckpointError(f"MNMEF checkpoint {name} is empty: {_REDO}", path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle, zip and unpickler-policy errors all mean "not a usable checkpoint"
        raise CheckpointError(f"MNMEF checkpoint {name} is corrupt or not a torch checkpoint ({type(exc).__name__}): "
                              f"{_REDO}", path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"MNMEF checkpoint {name} is not a {FORMAT} checkpoint: {_REDO}", path)
    problem = _field_problem(data)
    if problem:
        raise CheckpointError(f"MNMEF checkpoint {name} {problem}: {_REDO}", path)
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
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    name = shown(side)
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what} sidecar {name} is not valid JSON ({type(exc).__name__} at position "
                              f"{getattr(exc, 'pos', getattr(exc, 'start', '?'))}): restore it or {redo}",
                              side) from None
    except OSError as exc:
        raise CheckpointError(f"{what} sidecar {name} cannot be read ({exc.strerror}): check its permissions",
                              side) from None
    if not isinstance(meta, dict):
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(meta), "null")
        raise CheckpointError(f"{what} sidecar {name} holds a JSON {kind}, not an object: restore it or {redo}", side)
    return meta


def build_model(data: dict, path="checkpoint") -> MNMEF:
    """Rebuild the model from a loaded checkpoint (strict: every weight must be present and fit)."""
    try:
        model = MNMEF(get_system(data["system"]), float(data["sigma_y"]), ModelConfig(**data["model_config"]))
        model.load_state_dict(data["model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"MNMEF checkpoint {shown(path)} does not fit the model ({type(exc).__name__}: "
                              f"{detail[:120]}): {_REDO}", path) from None
    return model


def code_version() -> str:
    """git commit of the working tree (+ '-dirty' with local changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) or "unknown"
    except Exception:
        return "unknown"


def hardware(device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s) (torch {torch.__version__})"


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
    meta = read_meta(path)
    if not isinstance(meta.get("evaluation", {}), dict):
        meta["evaluation"] = {}  # a malformed entry would otherwise break the update
    meta.setdefault("evaluation", {}).update(evaluation)
    atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"))
