"""Named, independent random streams, so adding a filter never changes the truth or the observations.

Every stream is derived from (seed, purpose, name) through numpy's SeedSequence. Purposes
("test", "tune", "train") get disjoint entropy, so test trajectories never coincide with the
trajectories used to tune baselines or to train MNMEF, whatever seeds are passed.
"""
from __future__ import annotations

import zlib

import numpy as np

PURPOSES = ("test", "tune", "train")


def stream(seed: int, purpose: str, name: str) -> np.random.Generator:
    """A Generator for one named stream, e.g. stream(0, "test", "truth")."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}; choose one of {PURPOSES}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    key = [int(seed), PURPOSES.index(purpose), zlib.crc32(name.encode())]
    return np.random.default_rng(np.random.SeedSequence(key))
