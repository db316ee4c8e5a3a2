"""`daviz train-latent`: train the coupled VAE of Latent-EnSF for one (system, observation pattern, σ_y).

Writes pretrained/latent_{system}_sigma{σ_y}_every{k}.pt (weights, safe to load) and its .json sidecar
(command, code version, hardware, settings, training record, held-out reconstruction error and latent
consistency, the filter settings chosen on "tune" trajectories). The sidecar is where `daviz evaluate` and
the explorer read the chosen inflation and γ (daviz.latent.pretrained.tuned_settings).
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import fields
from pathlib import Path

from ..systems import get_system
from .pretrained import TRAINABLE
from .train import TrainSettings


def register(subparsers) -> None:
    p = subparsers.add_parser("train-latent", help="train the coupled VAE of Latent-EnSF (CPU, minutes)")
    p.add_argument("--system", required=True, choices=TRAINABLE)
    p.add_argument("--sigma-y", type=float, required=True)
    defaults = TrainSettings()
    for f in fields(TrainSettings):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                       help=f"(default {getattr(defaults, f.name)})")
    p.add_argument("--tune-N", type=int, default=20, help="ensemble size of the filter-settings search (20)")
    p.add_argument("--tune-trajectories", type=int, default=4)
    p.add_argument("--tune-cycles", type=int, default=300)
    p.add_argument("--no-tune", action="store_true", help="skip the inflation / gamma search")
    p.add_argument("--tune-only", action="store_true",
                   help="keep the trained weights in --out (default: the shipped file), redo only the search")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    p.add_argument("--out", help="weights file (default: the shipped name in pretrained/)")
    p.set_defaults(run=cmd_train_latent)


def cmd_train_latent(a) -> int:
    import torch

    from ..artifacts import code_version, hardware
    from . import pretrained
    from .train import choose_settings, heldout_metrics, train_vae
    from .vae import NumpyVAE

    if not (0 < a.sigma_y < float("inf")):
        raise ValueError(f"--sigma-y must be a positive number, got {a.sigma_y}")
    if a.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {a.threads}")
    torch.set_num_threads(a.threads)
    system = get_system(a.system)
    out = Path(a.out) if a.out else pretrained.weights_path(system, a.sigma_y)
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: folder {out.parent} does not exist")
    if a.tune_only:
        return _tune_only(a, system, out)
    settings = TrainSettings(**{f.name: getattr(a, f.name) for f in fields(TrainSettings)
                                if getattr(a, f.name, None) is not None})
    if settings.steps < 1 or settings.batch < 1 or settings.latent < 0 or settings.trajectories < 1:
        raise ValueError("steps, batch and trajectories must be positive (latent: positive, or 0 for the default)")
    print(f"training the coupled VAE for {system.title}, sigma_y={a.sigma_y}, observing every "
          f"{pretrained.obs_every(system)}th site: {settings}", flush=True)
    model, record = train_vae(system, a.sigma_y, settings)
    vae = NumpyVAE(model)
    held = heldout_metrics(vae, system, a.sigma_y, settings.heldout_trajectories, settings.heldout_cycles,
                           settings.seed)
    print("held-out: " + ", ".join(f"{k} {v}" for k, v in held.items()), flush=True)
    chosen = None
    if not a.no_tune:
        chosen = choose_settings(vae, system, a.sigma_y, N=a.tune_N, trajectories=a.tune_trajectories,
                                 cycles=a.tune_cycles, seed=settings.seed)
    meta = {"kind": "latent-ensf coupled VAE", "system": system.name, "sigma_y": a.sigma_y,
            "obs_every": pretrained.obs_every(system), "obs_idx": [int(i) for i in system.obs_idx],
            "command": _command(), "code_version": code_version(), "hardware": hardware("cpu"),
            "settings": settings.to_dict(), "training": record, "heldout": held, "filter": chosen}
    pretrained.save(out, model, system, a.sigma_y, meta)
    print(f"wrote {out} and {out.with_suffix('.json').name}", flush=True)
    return 0


def _command() -> str | None:
    return "daviz " + " ".join(shlex.quote(v) for v in sys.argv[1:]) if sys.argv[1:2] == ["train-latent"] else None


def _tune_only(a, system, out: Path) -> int:
    """Redo the inflation / gamma search on existing weights; update their sidecar."""
    from ..artifacts import write_meta
    from . import pretrained
    from .train import choose_settings

    vae, meta = pretrained.load(out, system, a.sigma_y)
    seed = (meta.get("settings") or {}).get("seed", 0)
    chosen = choose_settings(vae, system, a.sigma_y, N=a.tune_N, trajectories=a.tune_trajectories,
                             cycles=a.tune_cycles, seed=seed)
    write_meta(out, {**meta, "filter": {**chosen, "command": _command()}})
    pretrained._cache.clear()
    print(f"updated {out.with_suffix('.json').name}", flush=True)
    return 0
