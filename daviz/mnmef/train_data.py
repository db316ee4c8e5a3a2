"""MNMEF training data (facts file): truth chains from the "train" random streams, cut into windows.

Every epoch cuts `trajectories` windows of `cycles` steps along the chains, each start shifted by a random offset
in [0, MAX_OFFSET), in a shuffled order (an incomplete last batch is dropped). Observation noise is drawn afresh
for every batch by the training step, as the authors do (`redraw_obs_noise`; off: one fixed draw per chain, as
the first shipped weights were trained). All randomness of epoch e, batch b, rank k derives from (seed, e, b, k).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..seeding import stream
from ..systems import get_system
from .train_config import TrainConfig

MAX_OFFSET = 45


def make_data(cfg: TrainConfig):
    """Truth (C, T, d) and observations (C, T, p), float64, from the disjoint "train" streams (cached, so
    successive fine-tunes in one process build them once: callers must not modify them). With
    `redraw_obs_noise` the observations are noise-free, h(truth): the step adds fresh noise per batch."""
    truth, obs = _data(cfg.system, float(cfg.sigma_y), cfg.trajectories, cfg.cycles, cfg.chains, cfg.seed)
    return (truth, get_system(cfg.system).observe(truth)) if cfg.redraw_obs_noise else (truth, obs)


@functools.lru_cache(maxsize=2)
def _data(system_name, sigma_y, trajectories, cycles, chains, seed):
    system = get_system(system_name)
    chains = min(chains, trajectories)
    per_chain = math.ceil(trajectories / chains)
    T = per_chain * cycles + MAX_OFFSET + 1
    x = system.initial_truth(stream(seed, "train", f"mnmef-truth-{system_name}"), chains)
    truth = np.empty((chains, T, system.dim))
    for t in range(T):
        truth[:, t] = x
        x = system.step(x)
        if system.model_noise_std > 0:  # (the stream is only created when it is drawn from)
            x = system.add_model_noise(x, stream(seed, "train", f"mnmef-model-noise-{t}"))
    noise = stream(seed, "train", f"mnmef-obs-{system_name}-{sigma_y}").standard_normal((chains, T, system.obs_dim))
    return truth, system.observe(truth) + sigma_y * noise


def epoch_windows(cfg: TrainConfig, chains: int, epoch: int) -> np.ndarray:
    """(trajectories, 2) shuffled (chain, start) pairs for this epoch."""
    rng = stream(cfg.seed, "train", f"mnmef-epoch-{epoch}")
    k = np.arange(cfg.trajectories)
    starts = (k // chains) * cfg.cycles + rng.integers(0, MAX_OFFSET, size=cfg.trajectories)
    pairs = np.stack([k % chains, starts], 1)
    return pairs[rng.permutation(cfg.trajectories)]


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, batch, rank]).generate_state(1)[0])

