"""Counter-based Gaussian noise for the training rollout: a pure function of (key, element index).

Why not torch.Generator: a captured CUDA graph replays the same kernels, so a generator's state would
have to be graph-registered and re-seeded per step; and CPU and CUDA generators give different numbers.
Here every number is an integer hash of (key, index), computed with torch integer ops on whatever device
the key lives on: the same draws on CPU and CUDA, eager or captured, and a resumed run draws exactly what
an uninterrupted one would. The key is a 0-d int64 tensor, so a captured graph reads a new key per step
from device memory (the host writes it with `fill_`, no synchronisation).

Hash: two rounds of a 32-bit xorshift-multiply mixer in int64 arithmetic. Values stay below 2**32 and the
multipliers below 2**31, so no product overflows int64 (signed overflow is undefined in the kernels).
Normals by Box–Muller from two 24-bit uniforms (|z| ≤ 5.9; the test checks the moments and tails).
"""
from __future__ import annotations

import math

import torch

M32 = 0xFFFFFFFF
_C1, _C2, _C3 = 0x7FEB352D, 0x2C1B3C6D, 0x297A2D39  # odd multipliers < 2**31
_GOLD = 0x61C88647  # 2**32 / golden ratio, mod 2**31: spreads consecutive counters


def _mix(h: torch.Tensor, c: int) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = (h * c) & M32
    h = h ^ (h >> 15)
    h = (h * _C3) & M32
    return h ^ (h >> 16)


def derive(key, *values: int):
    """A new 32-bit key from `key` (int or 0-d int64 tensor) and small non-negative ints (stream ids)."""
    for v in values:
        if isinstance(key, torch.Tensor):
            key = _mix((key + (v + 1) * _GOLD) & M32, _C1)
        else:
            key = int(_mix(torch.tensor((int(key) + (v + 1) * _GOLD) & M32, dtype=torch.int64), _C1))
    return key


def uniform_bits(key: torch.Tensor, n: int, lane: int = 0) -> torch.Tensor:
    """(n,) int64 in [0, 2**32): hash of (key, 2*i + lane)."""
    i = torch.arange(n, dtype=torch.int64, device=key.device) * 2 + lane
    h = _mix((i ^ key) & M32, _C1)
    return _mix((h + ((key * _GOLD) & M32)) & M32, _C2)


def normal(key: torch.Tensor, shape, dtype=torch.float32) -> torch.Tensor:
    """Standard normals of `shape`, a pure function of `key` (0-d int64 tensor) and the element index."""
    n = math.prod(shape)
    if n >= 2**31:
        raise ValueError(f"too many draws for one key ({n})")
    scale = 2.0**-24
    u1 = ((uniform_bits(key, n, 0) >> 8).to(torch.float32) + 0.5) * scale  # (0, 1): log is finite
    u2 = ((uniform_bits(key, n, 1) >> 8).to(torch.float32) + 0.5) * scale
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.to(dtype).reshape(shape)


def key_tensor(value: int, device="cpu") -> torch.Tensor:
    if not 0 <= int(value) <= M32:
        raise ValueError(f"noise key must be a 32-bit non-negative integer, got {value}")
    return torch.tensor(int(value), dtype=torch.int64, device=device)
