"""MNMEF training recipes as data: TrainConfig (paper §4.3–4.4, App. C.4 Table C.8), its validation, and the
fine-tune rule.

Every field carries its command-line help: `daviz train` / `finetune` generate their flags and recipe keys from
them (daviz.mnmef.commands); shipped recipes are TOML files of these fields (daviz/mnmef/recipes/).
The fine-tune rule of §4.4 (authors' code for the batch) lives once, in `finetune_config`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..systems import SYSTEM_NAMES, get_system
from . import checkpoint as ckpt
from .model import ModelConfig

def table_c8(system: str) -> tuple[float, int]:
    """Table C.8 (pretraining at N=10): the system's learning rate and batch size (kept on the System)."""
    s = get_system(system)  # unknown names: ValueError listing the known ones
    return s.train_lr, s.train_batch



SCHEDULES = ("steps", "cosine", "wsd")
WARM_STARTS = ("none", "prior", "enkf")
MAX_N = 1000  # far above the paper's 100; beyond it a step would not fit in memory anyway


def _opt(default, help: str, **cli):
    """A TrainConfig field with its command-line description: `daviz train` / `finetune` generate their flags
    from these (daviz.mnmef.commands); `cli` may add choices, or flag (another name than the field's)."""
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"help": help, **cli}, **kw)


@dataclass
class TrainConfig:
    system: str = _opt("l96", "dynamical system", choices=SYSTEM_NAMES)
    sigma_y: float = _opt(1.0, "observation noise std")
    N: int = _opt(10, "ensemble size (train default 10)")
    epochs: int = _opt(1000, "epochs (pretrain default 1000, fine-tune 20)")
    trajectories: int = _opt(8192, "training windows per epoch (8192; fine-tune: half)")
    cycles: int = _opt(60, "assimilation cycles per window (60)")
    batch_size: int | None = _opt(None, "Table C.8: l96 512, ks 256, l63 1024")  # None: Table C.8
    lr: float | None = _opt(None, "Table C.8: 1e-3 (ks 5e-4); fine-tune: a tenth")  # None: Table C.8
    # paper App. C (C.13): 1e-2 keeps training stable; authors' code: 0
    weight_decay: float = _opt(1e-2, "AdamW weight decay (default 1e-2, paper App. C; authors' code: 0)")
    lr_milestones: tuple = _opt((0.2, 0.3, 0.4), "fractions of the epochs where the LR halves (0.2 0.3 0.4)")
    schedule: str = _opt("steps", "LR schedule: steps (halve at the milestones; default), cosine, or wsd (warm-up, "
                         "constant, decay over the last --decay-fraction; a run cut short also writes OUT_decayed.pt)",
                         choices=SCHEDULES)
    warmup_steps: int = _opt(0, "linear LR warm-up steps (default 0)")
    decay_fraction: float = _opt(0.2, "wsd: fraction of the steps in the final decay (0.2)")
    max_steps: int | None = _opt(None, "total optimizer steps of the recipe (default: epochs x batches)")
    grad_window: int = _opt(1, "detach the ensemble every this many cycles (1)")
    seed: int = _opt(42, "seed of the training data and initial weights (42)")
    chains: int = _opt(256, "truth chains generated in parallel; windows are cut along them (256)")
    # pretrained checkpoint: train the heads (the set transformer stays frozen unless train_set_transformer)
    finetune_from: str | None = _opt(None, "pretrained checkpoint", flag="from")
    train_set_transformer: bool = _opt(False, "fine-tune: train the pretrained set transformer too (the paper "
                                       "freezes it, §4.4, and finds both about equal, §5.8); default false")
    model: dict = _opt(dict, "ModelConfig fields")
    recipe_note: str = _opt("", "recipe note recorded in the metadata", flag="note")
    warm_start: str = _opt("none", "start from the tuned localized EnKF at N (daviz.mnmef.warm_start): enkf = heads' last "
                           "layers zeroed and N's localization prior and inflation set (step 0 is that EnKF; a fine-tune "
                           "keeps its trained set transformer); prior = only the prior and inflation swapped in; none",
                           choices=WARM_STARTS)
    redraw_obs_noise: bool = _opt(True, "draw fresh observation noise for every batch (authors' code; default); "
                                  "false: one fixed draw per truth chain")

    def __post_init__(self):
        if isinstance(self.warm_start, bool):  # recipes written when it was a switch
            self.warm_start = "enkf" if self.warm_start else "none"
        lr, batch = table_c8(self.system)
        self.lr = lr if self.lr is None else self.lr
        self.batch_size = batch if self.batch_size is None else self.batch_size
        self.lr_milestones = tuple(self.lr_milestones or ())
        self.model = dict(self.model or {})
        validate(self)
        self.batch_size = min(self.batch_size, self.trajectories)

    @property
    def batches_per_epoch(self) -> int:
        return self.trajectories // self.batch_size  # an incomplete last batch is dropped (fixed shapes)

    @property
    def total_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else self.epochs * self.batches_per_epoch

    @property
    def milestone_epochs(self) -> list[int]:
        return sorted({max(1, round(f * self.epochs)) for f in self.lr_milestones})


def flag_of(name: str) -> str:
    """The command-line flag of TrainConfig field `name`: --kebab-case, or the field's metadata 'flag'."""
    return "--" + TrainConfig.__dataclass_fields__[name].metadata.get("flag", name.replace("_", "-"))


def int_at_least(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def finite(name, value, positive=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or (v <= 0 if positive else v < 0):
        raise ValueError(f"{name} must be a finite {'positive' if positive else 'non-negative'} number, got {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Every input checked before any work, each failure one line naming the value and what is accepted."""
    finite("sigma_y", cfg.sigma_y, positive=True)
    int_at_least("N (ensemble size)", cfg.N, 2)
    if cfg.N > MAX_N:
        raise ValueError(f"N (ensemble size) must be at most {MAX_N}, got {cfg.N}")
    for name in ("epochs", "trajectories", "cycles", "batch_size", "chains"):
        int_at_least(name.replace("_", " "), getattr(cfg, name), 1)
    int_at_least("grad window", cfg.grad_window, 0)
    int_at_least("warm-up steps", cfg.warmup_steps, 0)
    int_at_least("seed", cfg.seed, 0)
    if cfg.max_steps is not None:
        int_at_least("max steps", cfg.max_steps, 1)
    finite("learning rate", cfg.lr, positive=True)
    finite("weight decay", cfg.weight_decay)
    if not 0 < float(cfg.decay_fraction) < 1:
        raise ValueError(f"decay fraction must be in (0, 1), got {cfg.decay_fraction!r}")
    if cfg.warm_start not in WARM_STARTS:
        raise ValueError(f"warm start must be one of {WARM_STARTS}, got {cfg.warm_start!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    for f in cfg.lr_milestones:
        if not (isinstance(f, (int, float)) and 0 < f <= 1):
            raise ValueError(f"LR milestones are fractions of the epochs in (0, 1], got {cfg.lr_milestones!r}")
    try:
        ModelConfig(**cfg.model)
    except TypeError as exc:
        raise ValueError(f"bad model config {cfg.model!r}: {exc}") from None


def load_pretrained(path, system: str | None = None) -> tuple[dict, dict]:
    """(checkpoint, sidecar) of a pretrained model, with clear errors for unusable files."""
    data = ckpt.load(path, system=system)
    if data.get("system") not in SYSTEM_NAMES:
        raise ckpt.CheckpointError(f"MNMEF checkpoint {path} was trained for system {data.get('system')!r}, "
                                   f"which daviz does not know (known: {', '.join(SYSTEM_NAMES)})")
    for key in ("sigma_y", "model_config"):
        if key not in data:
            raise ckpt.CheckpointError(f"MNMEF checkpoint {path} lacks {key!r}")
    if not isinstance(data["model_config"], dict):
        raise ckpt.CheckpointError(f"MNMEF checkpoint {path}: model_config is not a mapping")
    meta = ckpt.read_meta(path)
    if not isinstance(meta, dict):
        raise ckpt.CheckpointError(f"MNMEF sidecar {ckpt.sidecar_path(path)} is not a JSON object")
    return data, meta


def pretraining_recipe(meta: dict) -> dict:
    """The recipe of the pretraining that weights descend from. A fine-tune's sidecar nests the sidecar of
    the weights it started from (pretrained_meta), so a chained fine-tune (N = 40 -> 100) walks back to it."""
    while meta.get("stage") == "finetune" and isinstance(meta.get("pretrained_meta"), dict):
        meta = meta["pretrained_meta"]
    return meta.get("recipe", {})


def finetune_config(pretrained: str | Path, N: int, **overrides) -> TrainConfig:
    """Fine-tuning recipe of §4.4 / App. C.4 from a pretrained checkpoint: half the trajectories, LR/10,
    20 epochs; batch halved for N ≥ 40 and quartered for N ≥ 100 (authors' code, memory). All of it is
    taken from the *pretraining* recipe, also when `pretrained` is itself a fine-tune: applied to a
    fine-tune's own recipe the rule would divide LR and batch again at every link of a chain."""
    data, meta = load_pretrained(pretrained)
    base = pretraining_recipe(meta)
    if not isinstance(base, dict):
        raise ckpt.CheckpointError(f"MNMEF sidecar {ckpt.sidecar_path(pretrained)}: 'recipe' is not a mapping")
    system = data["system"]
    lr, batch = table_c8(system)
    lr = base.get("lr", lr) / 10
    batch = base.get("batch_size", batch)
    batch = batch // 4 if N >= 100 else batch // 2 if N >= 40 else batch
    kw = dict(system=system, sigma_y=float(data["sigma_y"]), N=N, epochs=20,
              trajectories=max(1, base.get("trajectories", 8192) // 2), cycles=base.get("cycles", 60),
              batch_size=max(1, batch), lr=lr, seed=base.get("seed", 42), finetune_from=str(pretrained),
              lr_milestones=(), model=data["model_config"])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**kw)

