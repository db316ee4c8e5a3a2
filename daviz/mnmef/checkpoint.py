"""MNMEF checkpoints: a torch file (loaded with weights_only=True) plus a JSON sidecar of metadata.

Two kinds share the format: training states in runs/ (with optimizer, scheduler and position, for
`--resume`) and shipped weights in pretrained/ (model only). The torch file carries what is needed to
rebuild the model (system, sigma_y, model config); the sidecar carries provenance and evaluation figures.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from ..systems import get_system
from .model import MNMEF, ModelConfig

FORMAT = "daviz-mnmef-1"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the request; the message names the file."""


def sidecar_path(path) -> Path:
    return Path(path).with_suffix(".json")


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


def save(path, payload: dict, meta: dict | None = None) -> None:
    """Write payload (tensors, numbers, strings, dicts, lists) and, if given, the JSON sidecar."""
    path = Path(path)
    _atomic(path, lambda tmp: torch.save({"format": FORMAT, **payload}, tmp))
    if meta is not None:
        _atomic(sidecar_path(path), lambda tmp: tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"))


def load(path, system: str | None = None, map_location="cpu") -> dict:
    """Read a checkpoint safely; raise CheckpointError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"MNMEF checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle, zip and unpickler-policy errors all mean "not a usable checkpoint"
        raise CheckpointError(f"MNMEF checkpoint {path} is corrupt or not a torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "model" not in data:
        raise CheckpointError(f"MNMEF checkpoint {path} is not a {FORMAT} checkpoint")
    if system is not None and data.get("system") != system:
        raise CheckpointError(f"MNMEF checkpoint {path} was trained for system {data.get('system')!r}, not {system!r}")
    return data


def read_meta(path) -> dict:
    """The JSON sidecar next to `path`, or {} when there is none."""
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"MNMEF sidecar {side} is not valid JSON ({exc})") from None


def build_model(data: dict, path="checkpoint") -> MNMEF:
    """Rebuild the model from a loaded checkpoint (strict: every weight must be present and fit)."""
    try:
        model = MNMEF(get_system(data["system"]), float(data["sigma_y"]), ModelConfig(**data["model_config"]))
        model.load_state_dict(data["model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"MNMEF checkpoint {path} does not fit the model ({type(exc).__name__}: {exc})") from None
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
    meta.setdefault("evaluation", {}).update(evaluation)
    _atomic(sidecar_path(path), lambda tmp: tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"))
