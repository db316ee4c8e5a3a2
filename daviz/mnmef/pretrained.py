"""Shipped MNMEF weights in pretrained/: pick the right file, load it once per process, wrap it as a filter.

Names: `{system}_sigma{sigma_y}_N{N}.pt` (pretrained at N) and `{system}_sigma{sigma_y}_N{N}_ft{N'}.pt`
(its heads fine-tuned for N'), each with a `.json` sidecar. variant="auto" takes the fine-tuned file for
the requested N if shipped, else the pretrained one (trained at N=10 when there is a choice).
Loaded models are cached (thread-safe) and shared read-only between filters.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .filter import MNMEFFilter, default_device

# The shipped weights; DAVIZ_PRETRAINED_DIR points the app and `daviz evaluate` at another folder of weights.
PRETRAINED_DIR = Path(os.environ.get("DAVIZ_PRETRAINED_DIR") or Path(__file__).resolve().parents[2] / "pretrained")
_NAME = re.compile(r"^(?P<system>[a-z0-9]+)_sigma(?P<sigma>[0-9.]+)_N(?P<N>\d+)(?:_ft(?P<ft>\d+))?\.pt$")
_cache: dict = {}
_lock = threading.Lock()


def available(directory: Path | str = PRETRAINED_DIR) -> list[dict]:
    """What is shipped: one dict per weights file (system, sigma_y, N it serves, variant, file)."""
    out = []
    for path in sorted(Path(directory).glob("*.pt")):
        m = _NAME.match(path.name)
        if not m:
            continue
        ft = m["ft"]
        out.append({"system": m["system"], "sigma_y": float(m["sigma"]), "N": int(ft or m["N"]),
                    "pretrained_N": int(m["N"]), "variant": "finetuned" if ft else "pretrained", "file": str(path)})
    return out


def choose(system: str, sigma_y: float, N: int, variant: str = "auto", directory=PRETRAINED_DIR) -> dict:
    """The shipped entry to use, or CheckpointError saying what exists."""
    if variant not in ("auto", "pretrained", "finetuned"):
        raise ValueError(f"variant must be 'auto', 'pretrained' or 'finetuned', got {variant!r}")
    entries = [e for e in available(directory) if e["system"] == system and abs(e["sigma_y"] - sigma_y) < 1e-9]
    tuned = [e for e in entries if e["variant"] == "finetuned" and e["N"] == N]
    pre = sorted((e for e in entries if e["variant"] == "pretrained"), key=lambda e: (e["N"] != 10, abs(e["N"] - N)))
    pick = {"finetuned": tuned, "pretrained": pre, "auto": tuned + pre}[variant]
    if not pick:
        shipped = ", ".join(Path(e["file"]).name for e in available(directory)) or "nothing"
        raise ckpt.CheckpointError(f"no shipped {variant if variant != 'auto' else ''} MNMEF weights for system={system} "
                                   f"sigma_y={sigma_y} N={N} in {directory} (shipped: {shipped})".replace("  ", " "))
    return pick[0]


def load_model(path, device=None, dtype=torch.float32, system: str | None = None):
    """Model from a weights file, cached per (file, device, dtype); parameters frozen (shared read-only)."""
    device = torch.device(device) if device is not None else default_device()
    key = (str(Path(path).resolve()), str(device), dtype)
    with _lock:
        if key not in _cache:
            data = ckpt.load(path, system=system)
            model = ckpt.build_model(data, path).to(device, dtype).eval()
            for q in model.parameters():
                q.requires_grad_(False)
            _cache[key] = (model, ckpt.read_meta(path))
        return _cache[key]


def load_filter(system_name: str, sigma_y: float, N: int, variant: str = "auto", device=None):
    """(MNMEFFilter, info) for the shipped weights that fit; info says which file and how it was trained."""
    entry = choose(system_name, float(sigma_y), int(N), variant)
    model, meta = load_model(entry["file"], device, system=system_name)
    info = {"file": Path(entry["file"]).name, "variant": entry["variant"], "trained_N": meta.get("N", entry["N"]),
            "pretrained_N": entry["pretrained_N"], "recipe_note": meta.get("recipe_note", ""),
            "evaluation": meta.get("evaluation")}
    return MNMEFFilter(model, device=device), info
