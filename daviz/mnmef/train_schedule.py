"""Learning-rate schedules of MNMEF training, each with an optional linear warm-up (`TrainConfig.schedule`):
  steps   halve the LR at `lr_milestones` fractions of the epochs (the authors' code: 200/300/400 of 1000);
  cosine  cosine decay from the LR to 0 over the run;
  wsd     warm-up, constant, then cosine decay over the last `decay_fraction` of the run. A run cut short by
          `until_step` or `budget_seconds` keeps its constant-LR state in `out` (the trunk, which the next
          run resumes exactly) and decays a branch from it into `branch_path(out)` (the weights to use).
The LR is a pure function of the step, so a resumed run continues exactly.
"""
from __future__ import annotations

import math
from pathlib import Path

from .train_config import TrainConfig


def branch_path(out) -> Path:
    """Where a wsd run cut short writes its decayed branch (the weights to use)."""
    out = Path(out)
    return out.with_name(out.stem + "_decayed" + out.suffix)


def lr_at(cfg: TrainConfig, step: int, decay_start: int, decay_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): a pure function, so a resume is exact."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule == "steps":
        epoch = step // cfg.batches_per_epoch
        factor = 0.5 ** sum(epoch >= m for m in cfg.milestone_epochs)
    elif cfg.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * min(step, cfg.total_steps) / cfg.total_steps))
    else:  # wsd
        i = step - decay_start
        factor = 1.0 if i < 0 else 0.5 * (1 + math.cos(math.pi * min(i, decay_steps) / max(decay_steps, 1)))
    return cfg.lr * warm * factor


def natural_decay(cfg: TrainConfig) -> tuple[int, int]:
    """(first step, length) of the wsd decay at the end of the full run."""
    length = max(1, round(cfg.decay_fraction * cfg.total_steps))
    return cfg.total_steps - length, length

