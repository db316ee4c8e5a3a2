"""Training data and the CPU training loop of Neural Incremental DA (see nida.py).

Windows come from the "train" random streams (daviz.seeding), never from tuning or test trajectories:
`pool` truths put on the attractor by the system's burn-in, advanced window after window (consecutive
windows of a trajectory are contiguous). For each window:
- background: x_b = u†_0 + a · C_λ^{1/2} ξ, ξ ~ N(0, I), C_λ the shrunk climatological covariance
  (background.py) and a log-uniform in [a_min, a_max] per window, so the network meets backgrounds from
  almost perfect to poor (cycling puts its own analyses there); the first guess ũ⁰ is x_b forecast through
  the window (what the cycling filter gives it);
- observations: y = u† + σ_y ε at the observed entries of a mask drawn from the system's *training family*
  of observation patterns (`seen_pattern`); other patterns (`unseen_patterns`) are kept for evaluation.
Loss (normalized units): mean squared error of the final reconstruction over the window, plus that of its
last time level (the cycling analysis), plus half the mean over the earlier increments.

Command: python -m daviz.variational.nida_train --system l96 --sigma-y 1.0 --steps 1500 --out pretrained/...
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..artifacts import code_version, hardware
from ..seeding import stream
from ..systems import get_system
from . import nida_io
from .background import climatological_covariance, shrink, sqrt_and_inverse
from .nida import NIDA, NIDAConfig, background_trajectory


# ------------------------------------------------------------------ observation patterns
def seen_pattern(system, L: int, rng: np.random.Generator) -> np.ndarray:
    """One (L + 1, d) mask from the training family (row 0, the window start, is never observed).

    L96 (periodic): every k-th component, k ∈ {2, 4, 8}, random offset, the same at every time (the system's own
    pattern, every 4th from 0, is in the family). L63: a fixed non-empty subset of {x, y, z} other than {y}
    (so y alone stays unseen), at every time (the system's own pattern, x, is in the family).
    """
    d = system.dim
    mask = np.zeros((L + 1, d))
    if system.periodic:
        k = int(rng.choice([2, 4, 8]))
        mask[1:, int(rng.integers(k))::k] = 1.0
    else:
        subsets = [s for s in range(1, 2 ** d) if s != 2]  # bit i: component i observed; 2 = {y} only
        s = int(rng.choice(subsets))
        mask[1:, [i for i in range(d) if s >> i & 1]] = 1.0
    return mask


def own_pattern(system, L: int) -> np.ndarray:
    mask = np.zeros((L + 1, system.dim))
    mask[1:, system.obs_idx] = 1.0
    return mask


def unseen_patterns(system, L: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Patterns outside the training family, for evaluation. L96: every 5th component; an irregular random 25 %
    of the (time, component) entries (drawn from `rng`). L63: y only; x at every other time only."""
    d = system.dim
    out = {}
    if system.periodic:
        m = np.zeros((L + 1, d))
        m[1:, ::5] = 1.0
        out["every 5th"] = m
        rng = rng or np.random.default_rng(0)
        m = np.zeros((L + 1, d))
        m[1:] = rng.random((L, d)) < 0.25
        out["random 25%"] = m
    else:
        m = np.zeros((L + 1, d))
        m[1:, 1] = 1.0
        out["y only"] = m
        m = np.zeros((L + 1, d))
        m[2::2, 0] = 1.0
        out["x every other time"] = m
    return out


# ------------------------------------------------------------------ windows
class WindowSampler:
    """Truth windows with backgrounds and observations, from one purpose's random streams."""

    def __init__(self, system, sigma_y: float, L: int, pool: int, seed: int = 0, purpose: str = "train",
                 a_range=(0.02, 0.8), pattern: str | np.ndarray = "seen"):
        self.system = get_system(system) if isinstance(system, str) else system
        self.sigma_y, self.L, self.pool = float(sigma_y), int(L), int(pool)
        self.a_range = tuple(float(a) for a in a_range)
        self.pattern = pattern
        self.rng = stream(seed, purpose, "nida-windows")
        self.x = self.system.initial_truth(stream(seed, purpose, "nida-truth"), self.pool)
        self.U_clim, _ = sqrt_and_inverse(shrink(climatological_covariance(self.system)["cov"]))

    def draw(self) -> dict[str, np.ndarray]:
        """One window per pool trajectory: truth, first guess, background, observations, mask (B, T, d)."""
        sys_, L, B, rng = self.system, self.L, self.pool, self.rng
        truth = background_trajectory(sys_, self.x, L)
        self.x = truth[:, -1]
        lo, hi = np.log(self.a_range[0]), np.log(self.a_range[1])
        a = np.exp(rng.uniform(lo, hi, size=(B, 1)))
        xb = truth[:, 0] + a * (rng.standard_normal((B, sys_.dim)) @ self.U_clim.T)
        first_guess = background_trajectory(sys_, xb, L)
        if isinstance(self.pattern, np.ndarray):
            mask = np.broadcast_to(self.pattern, truth.shape).copy()
        elif self.pattern == "own":
            mask = np.broadcast_to(own_pattern(sys_, L), truth.shape).copy()
        else:
            mask = np.stack([seen_pattern(sys_, L, rng) for _ in range(B)])
        Y = (truth + self.sigma_y * rng.standard_normal(truth.shape)) * mask
        return {"truth": truth, "first_guess": first_guess, "xb": xb, "Y": Y, "mask": mask, "a": a[:, 0]}


def _t(a, dtype=torch.float32):
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)


def window_loss(model: NIDA, batch: dict, increments: int | None = None) -> tuple[torch.Tensor, dict]:
    u, history = model.reconstruct(_t(batch["first_guess"]), _t(batch["Y"]), _t(batch["mask"]), increments,
                                   return_all=True)
    z_true = model.normalize(_t(batch["truth"]))
    mse = lambda u_: ((model.normalize(u_) - z_true) ** 2).mean()
    final = mse(u)
    end = ((model.normalize(u)[:, -1] - z_true[:, -1]) ** 2).mean()
    inter = torch.stack([mse(h) for h in history[:-1]]).mean() if len(history) > 1 else final * 0
    loss = final + end + 0.5 * inter
    return loss, {"final": float(final), "end": float(end)}


def build_model(system, sigma_y: float, config: NIDAConfig, seed: int) -> NIDA:
    torch.manual_seed(seed)
    clim = climatological_covariance(system)
    std = np.sqrt(np.diag(clim["cov"]))
    return NIDA(system, sigma_y, config, clim["mean"], std)


DEFAULT_A_RANGE = {"l63": (0.01, 0.4), "l96": (0.05, 1.0)}  # around cycling's analysis errors (~0.09 and ~0.5)


def train(system: str, sigma_y: float, config: NIDAConfig, steps: int, batch: int, lr: float, seed: int,
          out: str | Path, log_every: int = 50, validate_every: int = 250, progress=print, a_range=None, command: str = "") -> dict:
    """Train from scratch (AdamW, cosine LR with 5 % warm-up, gradient clipping at 1); returns the sidecar."""
    torch.set_num_threads(1)
    sys_ = get_system(system)
    model = build_model(sys_, sigma_y, config, seed)
    a_range = tuple(a_range or DEFAULT_A_RANGE.get(system, (0.02, 0.8)))
    sampler = WindowSampler(sys_, sigma_y, config.window, batch, seed=seed, purpose="train", a_range=a_range)
    val = WindowSampler(sys_, sigma_y, config.window, 256, seed=seed, purpose="tune", a_range=a_range).draw()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, k / max(1, steps)))))
    history, val_history, skipped = [], [], 0
    start = time.perf_counter()
    for step in range(1, steps + 1):
        model.train()
        loss, parts = window_loss(model, sampler.draw())
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            skipped += 1
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append(round(float(loss), 6))
        if step % log_every == 0:
            progress(f"step {step}/{steps} loss {np.mean(history[-log_every:]):.4f} "
                     f"({time.perf_counter() - start:.0f} s)")
        if step % validate_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                v, vparts = window_loss(model, val)
            val_history.append({"step": step, "loss": round(float(v), 6), **{k: round(x, 6) for k, x in vparts.items()}})
            progress(f"  validation (tune stream, 256 windows): {val_history[-1]}")
    seconds = time.perf_counter() - start
    meta = {
        "system": system, "sigma_y": float(sigma_y), "window": config.window, "config": config.as_dict(),
        "command": command, "budget": f"{steps} AdamW steps x {batch} windows on one CPU thread, {seconds:.0f} s",
        "recipe": {"steps": steps, "batch": batch, "lr": lr, "optimizer": "AdamW(weight_decay=1e-4)",
                   "schedule": "5% linear warm-up then cosine to 0", "grad_clip": 1.0, "seed": seed,
                   "background_a_range": list(sampler.a_range), "training_patterns": seen_pattern.__doc__.split("\n\n")[1]
                   .strip().replace("\n    ", " "), "loss": "MSE(final) + MSE(final, last time) + 0.5 mean MSE(earlier increments), "
                   "normalized units", "windows_seen": steps * batch},
        "skipped_steps": skipped, "training_seconds": round(seconds, 1), "hardware": hardware("cpu"),
        "code_version": code_version(), "parameters": sum(p.numel() for p in model.parameters()),
        "loss_history_every_10": history[::10], "validation": val_history,
        "seeds": {"seed": seed, "streams": "daviz.seeding purpose 'train' (windows), 'tune' (validation)"},
        "saved_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    nida_io.save(out, model, meta)
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m daviz.variational.nida_train", description=__doc__.split("\n\n")[0])
    p.add_argument("--system", choices=("l63", "l96", "ks", "linear"), default="l96")
    p.add_argument("--sigma-y", type=float, default=1.0)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--increments", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--band-time", type=int, default=1)
    p.add_argument("--band-space", type=int, default=2)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--a-range", help="background error range 'LO,HI' in climatological std units "
                                     f"(default per system: {DEFAULT_A_RANGE})")
    p.add_argument("--out", help="weights file (default pretrained/nida_{system}_sigma{sigma_y}_L{window}.pt)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.window < 1 or args.increments < 1 or not args.sigma_y > 0:
        print("nida_train: error: steps, batch, window, increments and sigma-y must be positive", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else nida_io.PRETRAINED_DIR / nida_io.weights_name(args.system, args.sigma_y,
                                                                                          args.window)
    config = NIDAConfig(window=args.window, increments=args.increments, width=args.width, depth=args.depth,
                        band_time=args.band_time, band_space=args.band_space)
    a_range = tuple(float(v) for v in args.a_range.split(",")) if args.a_range else None
    meta = train(args.system, args.sigma_y, config, args.steps, args.batch, args.lr, args.seed, out,
                 progress=lambda s: print(s, flush=True), a_range=a_range,
                 command="python -m daviz.variational.nida_train " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"wrote {out} ({meta['training_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
