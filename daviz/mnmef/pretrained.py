"""Shipped MNMEF weights in pretrained/: pick the right file, load it once per process, wrap it as a filter.

Names: `{system}_sigma{sigma_y}_N{N}.pt` (pretrained at N) and `{system}_sigma{sigma_y}_N{N}_ft{N'}.pt`
(its heads fine-tuned for N'), each with a `.json` sidecar. variant="auto" takes the fine-tuned file for
the requested N if shipped, else the pretrained one (trained at N=10 when there is a choice).
Loaded models are cached (thread-safe) and shared read-only between filters; `preload` warms the cache.

Errors are CheckpointError (a ValueError) with a short first line for users: what is missing or wrong,
the file's name (never its absolute path) and what to do. The file's path is in the exception's `.path`.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

import torch

from .. import artifacts
from ..systems import SYSTEM_NAMES, get_system
from . import checkpoint as ckpt
from .filter import MNMEFFilter, default_device

PRETRAINED_DIR = artifacts.PRETRAINED_DIR  # read at call time: a test may point this package elsewhere
_NAME = re.compile(r"^(?P<system>[a-z0-9]+)_sigma(?P<sigma>[0-9.]+)_N(?P<N>\d+)(?:_ft(?P<ft>\d+))?\.pt$")
_cache: dict = {}
_lock = threading.Lock()


def available(directory: Path | str | None = None) -> list[dict]:
    """What is shipped: one dict per weights file (system, sigma_y, N it serves, variant, file)."""
    directory = Path(PRETRAINED_DIR if directory is None else directory)
    out = []
    try:
        paths = sorted(directory.glob("*.pt"))
    except OSError:  # an unreadable folder ships nothing
        return []
    for path in paths:
        m = _NAME.match(path.name)
        try:
            sigma = float(m["sigma"]) if m else None
        except ValueError:  # e.g. "sigma1.0.0": not one of ours
            sigma = None
        if sigma is None:
            continue
        ft = m["ft"]
        out.append({"system": m["system"], "sigma_y": sigma, "N": int(ft or m["N"]),
                    "pretrained_N": int(m["N"]), "variant": "finetuned" if ft else "pretrained", "file": str(path)})
    return out


def choose(system: str, sigma_y: float, N: int, variant: str = "auto", directory=None) -> dict:
    """The shipped entry to use, or CheckpointError saying what is missing and how to make it."""
    if variant not in ("auto", "pretrained", "finetuned"):
        raise ValueError(f"variant must be 'auto', 'pretrained' or 'finetuned', got {variant!r}")
    directory = Path(PRETRAINED_DIR if directory is None else directory)
    shipped = available(directory)
    entries = [e for e in shipped if e["system"] == system and abs(e["sigma_y"] - sigma_y) < 1e-9]
    tuned = [e for e in entries if e["variant"] == "finetuned" and e["N"] == N]
    pre = sorted((e for e in entries if e["variant"] == "pretrained"), key=lambda e: (e["N"] != 10, abs(e["N"] - N)))
    pick = {"finetuned": tuned, "pretrained": pre, "auto": tuned + pre}[variant]
    if not pick:
        title = get_system(system).title if system in SYSTEM_NAMES else repr(system)
        if variant == "finetuned" and pre:
            raise ckpt.CheckpointError(
                f"no fine-tuned MNMEF weights for {title} at sigma_y={float(sigma_y)} and N={N}: run "
                f"`daviz finetune --from <{system} sigma_y={float(sigma_y)} checkpoint> --N {N} --out ...`", directory)
        raise ckpt.CheckpointError(
            f"no MNMEF weights for {title} at sigma_y={float(sigma_y)}: run "
            f"`daviz train --system {system} --sigma-y {float(sigma_y)} --out ...` and export it to the weights folder",
            directory)
    return pick[0]


def load_model(path, device=None, dtype=torch.float32, system: str | None = None, sigma_y: float | None = None):
    """Model from a weights file, cached per (file, device, dtype); parameters frozen (shared read-only).

    With `system` / `sigma_y`, weights trained for anything else are refused (CheckpointError), cached or not.
    """
    device = torch.device(device) if device is not None else default_device()
    key = (str(Path(path).resolve()), str(device), dtype)
    with _lock:
        if key not in _cache:
            data = ckpt.load(path)
            meta = ckpt.read_meta(path)  # a broken sidecar fails here, before the model is cached
            model = ckpt.build_model(data, path).to(device, dtype).eval()
            for q in model.parameters():
                q.requires_grad_(False)
            _cache[key] = (model, meta, data["system"], float(data["sigma_y"]))
        model, meta, trained_system, trained_sigma = _cache[key]
    ckpt.check_fits(path, trained_system, trained_sigma, system, sigma_y)
    return model, meta


def load_filter(system_name: str, sigma_y: float, N: int, variant: str = "auto", device=None):
    """(MNMEFFilter, info) for the shipped weights that fit; info says which file and how it was trained."""
    entry = choose(system_name, float(sigma_y), int(N), variant)
    model, meta = load_model(entry["file"], device, system=system_name, sigma_y=float(sigma_y))
    info = {"file": Path(entry["file"]).name, "variant": entry["variant"], "trained_N": meta.get("N", entry["N"]),
            "pretrained_N": entry["pretrained_N"], "recipe_note": meta.get("recipe_note", ""),
            "evaluation": meta.get("evaluation")}
    return MNMEFFilter(model, device=device), info


def preload(system_names=None, device=None, directory=None) -> dict:
    """Load every shipped weights file (of `system_names`, default all) into the cache, once per process.

    Meant for a background thread at server start, so the first session that asks for MNMEF does not
    wait for torch. Thread-safe (loads go through the cache lock). Returns {"loaded": [file names],
    "failed": {file name: message}}; it never raises for a bad file.
    """
    loaded, failed = [], {}
    for e in available(directory):
        if system_names is not None and e["system"] not in system_names:
            continue
        name = Path(e["file"]).name
        try:
            load_model(e["file"], device, system=e["system"], sigma_y=e["sigma_y"])
        except Exception as exc:  # a bad file is reported, the others still load
            failed[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        else:
            loaded.append(name)
    return {"loaded": loaded, "failed": failed}
