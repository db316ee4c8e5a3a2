"""Attention softmax on the CPU, forward + backward: torch.softmax against exp/normalise written out, for the
score shapes MNMEF's set transformer makes (batch 64, 8 heads, queries × keys; keys = ensemble members or the
16 PMA seeds). It sets daviz.mnmef.set_transformer.SHORT_AXIS: the key length below which the written-out form
is used.

    python benchmarks/bench_softmax.py [--threads 1] [--repeats 40]
"""
from __future__ import annotations

import argparse
import time

import torch

from daviz.mnmef.set_transformer import SHORT_AXIS, softmax_written_out


def fused(x):
    return torch.softmax(x, dim=-1)


def microseconds(f, x, grad, repeats: int) -> float:
    """Best of three means of `repeats` forward + backward passes."""
    for _ in range(3):
        f(x).backward(grad)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            f(x).backward(grad)
        best = min(best, (time.perf_counter() - t) / repeats)
    return 1e6 * best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=40)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"CPU, {a.threads} thread(s), torch {torch.__version__}; SHORT_AXIS = {SHORT_AXIS}")
    print(f"{'scores (B,H,L,S)':>20} {'written out µs':>15} {'torch.softmax µs':>17} {'faster':>14} {'daviz uses':>12}")
    for keys in (10, 15, 16, 20, 40, 60, 100):
        for queries in sorted({16, keys}):
            x = torch.randn(64, 8, queries, keys, requires_grad=True)
            grad = torch.randn_like(x)
            w, s = microseconds(softmax_written_out, x, grad, a.repeats), microseconds(fused, x, grad, a.repeats)
            uses = "written out" if keys < SHORT_AXIS else "softmax"
            print(f"{str((64, 8, queries, keys)):>20} {w:15.0f} {s:17.0f} {'written out' if w < s else 'softmax':>14} "
                  f"{uses:>12}")


if __name__ == "__main__":
    main()
