"""Training the coupled VAE of Latent-EnSF on a system's climatology, and the checks reported with it.

Data: free runs of the system started on its attractor from the "train" random streams (seed, "train",
"latent-truth"), every observation interval kept as a sample, with observations y = h(x) + σ_y ε from
("train", "latent-observation"). Held-out data for the reported metrics come from the "test" streams
under their own names ("latent-heldout-truth", "latent-heldout-observation"): trajectories neither used
in training nor by `daviz evaluate` (whose streams are "truth", "observation"). On periodic systems each
batch is shifted around the ring by a random multiple of the observation spacing (the observation pattern
is invariant under those shifts), which multiplies the data by p.

Loss per sample, on normalized states x and observations y (see daviz.latent.vae):
    ‖D(z_x) − x‖² + β KL(q(z|x) ‖ N(0, I))       z_x ~ q(z|x): the state VAE
  + ‖D(μ_y(y)) − x‖²                              the encoded observation decodes to the full state
  + λ · NLL(sg(μ_x(x)); μ_y(y), exp ℓ_y(y))        latent consistency with a calibrated variance
AdamW, cosine learning rate, float32, CPU. `choose_settings` then picks the filter's inflation and γ on
"tune" trajectories (successive-halving-style ranking of daviz.tuning: divergence, lost track, mean).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..experiment import TwinExperiment
from ..seeding import stream
from ..systems import System, get_system
from ..tuning import assess, lost_track_level, ranking
from .filter import LatentEnSF
from .vae import CoupledVAE, NumpyVAE, VAEConfig


LATENT = {"l96": 40, "ks": 64}  # measured: L96 r=32 (β=0.01) reconstructs to R-RMSE 0.17, r=40 (β=1e-3) to 0.09;
# KS r=32 to 0.19, r=64 to 0.10 (3000-6000 steps)


@dataclass(frozen=True)
class TrainSettings:
    latent: int = 0  # r; 0: the system's default (LATENT: L96 40, KS 64)
    hidden: int = 256
    layers: int = 2
    steps: int = 6000
    batch: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    beta: float = 1e-3  # KL weight (a Gaussian decoder of std √(β/2) in normalized units)
    consistency: float = 1.0  # λ
    trajectories: int = 64  # training free runs
    cycles: int = 1000  # samples per free run
    heldout_trajectories: int = 16
    heldout_cycles: int = 250
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def climatology_data(system: System, sigma_y: float, trajectories: int, cycles: int, seed: int, purpose: str,
                     prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(states (n, d), observations (n, p)) of `trajectories` free runs, `cycles` intervals each."""
    x = system.initial_truth(stream(seed, purpose, f"{prefix}-truth"), trajectories)
    obs_rng = stream(seed, purpose, f"{prefix}-observation")
    X = np.empty((cycles, trajectories, system.dim))
    for j in range(cycles):
        x = system.step(x)
        X[j] = x
    X = X.reshape(-1, system.dim)
    Y = system.observe(X) + sigma_y * obs_rng.standard_normal((len(X), system.obs_dim))
    return X, Y


def pattern_shifts(system: System) -> np.ndarray:
    """Circular shifts that leave the observed sites in place (just 0 on non-periodic systems)."""
    if not system.periodic:
        return np.array([0])
    idx = np.sort(system.obs_idx)
    return np.array([s for s in range(system.dim) if np.array_equal(np.sort((idx + s) % system.dim), idx)])


def _loss(model: CoupledVAE, x, y, beta: float, consistency: float):
    mu_x, lv_x = model.encode_state(x)
    z = mu_x + torch.exp(0.5 * lv_x) * torch.randn_like(mu_x)
    rec_x = ((model.decode(z) - x) ** 2).sum(-1)
    kl = 0.5 * (mu_x**2 + lv_x.exp() - 1.0 - lv_x).sum(-1)
    mu_y, lv_y = model.encode_obs(y)
    rec_y = ((model.decode(mu_y) - x) ** 2).sum(-1)
    nll = 0.5 * ((mu_x.detach() - mu_y) ** 2 / lv_y.exp() + lv_y).sum(-1)
    parts = {"rec_x": rec_x.mean(), "kl": kl.mean(), "rec_y": rec_y.mean(), "nll": nll.mean()}
    return parts["rec_x"] + beta * parts["kl"] + parts["rec_y"] + consistency * parts["nll"], parts


def train_vae(system: System | str, sigma_y: float, settings: TrainSettings = TrainSettings(), log=print,
              data=None) -> tuple[CoupledVAE, dict]:
    """Train on the "train" streams (or on `data` = (X, Y) in physical units); returns (model, record)."""
    system = get_system(system) if isinstance(system, str) else system
    started = time.perf_counter()
    X, Y = data if data is not None else climatology_data(system, sigma_y, settings.trajectories, settings.cycles,
                                                          settings.seed, "train", "latent")
    mean, std = float(X.mean()), float(X.std())  # one number each: the shipped systems are periodic
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    latent = settings.latent or LATENT.get(system.name, 32)
    cfg = VAEConfig(dim=system.dim, obs_dim=system.obs_dim, latent=latent, hidden=settings.hidden,
                    layers=settings.layers)
    model = CoupledVAE(cfg, system.obs_idx, mean, std)
    Xn = torch.as_tensor((X - mean) / std, dtype=torch.float32)
    Yn = torch.as_tensor((Y - mean) / std, dtype=torch.float32)
    shifts = torch.as_tensor(pattern_shifts(system))
    obs_idx = torch.as_tensor(system.obs_idx)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / settings.steps)))
    noise = sigma_y / std
    history = []
    for k in range(settings.steps):
        rows = torch.randint(len(Xn), (settings.batch,), generator=gen)
        x = Xn[rows]
        if len(shifts) > 1:  # a random pattern-preserving shift per sample: fresh observation noise with it
            s = shifts[torch.randint(len(shifts), (settings.batch,), generator=gen)]
            cols = (torch.arange(system.dim)[None, :] - s[:, None]) % system.dim
            x = torch.gather(x, 1, cols)
            y = x[:, obs_idx] + noise * torch.randn(x.shape[0], len(obs_idx), generator=gen)
        else:
            y = Yn[rows]
        loss, parts = _loss(model, x, y, settings.beta, settings.consistency)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (k + 1) % max(1, settings.steps // 10) == 0 or k == 0:
            row = {"step": k + 1, "loss": round(loss.item(), 4), **{n: round(v.item(), 4) for n, v in parts.items()},
                   "seconds": round(time.perf_counter() - started, 1)}
            history.append(row)
            log(f"step {row['step']}: " + ", ".join(f"{n} {v}" for n, v in row.items() if n != "step"), flush=True)
    model.eval()
    return model, {"history": history, "train_seconds": round(time.perf_counter() - started, 1),
                   "samples": int(len(X)), "pattern_shifts": int(len(shifts)), "normalization": [mean, std]}


def heldout_metrics(vae: NumpyVAE, system: System, sigma_y: float, trajectories: int, cycles: int,
                    seed: int = 0) -> dict:
    """Reconstruction error and latent consistency on held-out "test"-stream free runs.

    reconstruction_rmse: RMS of D(μ_x(x)) − x per component (physical units); reconstruction_rrmse:
    Σ‖D(μ_x(x)) − x‖ / Σ‖x‖ (the R-RMSE of the round trip). latent_consistency_rmse: RMS of
    μ_y(y) − μ_x(x) per latent component, next to latent_std (the spread of μ_x over the data); its
    calibration: mean of (μ_y − μ_x)² / exp(ℓ_y) (1 when the observation encoder's variance is right).
    decoded_observation_rrmse: Σ‖D(μ_y(y)) − x‖ / Σ‖x‖, what the observation alone says about the state.
    climatology_std: the state's standard deviation, for scale.
    """
    X, Y = climatology_data(system, sigma_y, trajectories, cycles, seed, "test", "latent-heldout")
    mu_x, _ = vae.encode_state(X)
    mu_y, lv_y = vae.encode_obs(Y)
    Xr = vae.decode(mu_x)
    Xy = vae.decode(mu_y)
    norm = np.linalg.norm(X, axis=1).sum()
    return {
        "samples": int(len(X)), "trajectories": trajectories, "cycles": cycles, "streams": "test/latent-heldout-*",
        "climatology_std": round(float(X.std()), 4),
        "reconstruction_rmse": round(float(np.sqrt(np.mean((Xr - X) ** 2))), 4),
        "reconstruction_rrmse": round(float(np.linalg.norm(Xr - X, axis=1).sum() / norm), 4),
        "latent_std": round(float(mu_x.std(axis=0).mean()), 4),
        "latent_consistency_rmse": round(float(np.sqrt(np.mean((mu_y - mu_x) ** 2))), 4),
        "latent_consistency_calibration": round(float(np.mean((mu_y - mu_x) ** 2 / np.exp(lv_y))), 4),
        "decoded_observation_rrmse": round(float(np.linalg.norm(Xy - X, axis=1).sum() / norm), 4),
    }


def choose_settings(vae: NumpyVAE, system: System, sigma_y: float, inflations=(1.05, 1.15, 1.3, 1.5, 1.7),
                    gammas=(0.5, 1.0, 2.0), N: int = 20, trajectories: int = 4, cycles: int = 300,
                    seed: int = 0, log=print) -> dict:
    """Inflation and γ of the filter by a grid search on "tune" trajectories (all points in one batch,
    the same truths for each); ranked like daviz.tuning (diverged, lost track, then mean R-RMSE)."""
    started = time.perf_counter()
    points = [(a, g) for a in inflations for g in gammas]
    infl = np.repeat([p[0] for p in points], trajectories)
    gam = np.repeat([p[1] for p in points], trajectories)
    f = LatentEnSF(system, sigma_y, vae, inflation=infl, gamma=gam)
    exp = TwinExperiment(system, sigma_y, N, {"latent-ensf": f}, trajectories=trajectories, seed=seed,
                         purpose="tune", replicas=len(points))
    values = exp.run(cycles)["latent-ensf"].reshape(len(points), trajectories)
    a = assess(values, lost_track_level(system.name))
    best = int(ranking(a)[0])
    out = {"inflation": points[best][0], "gamma": points[best][1], "rrmse": round(float(a["mean"][best]), 4),
           "diverged": int(a["diverged"][best]), "lost": int(a["lost"][best]), "N": N, "trajectories": trajectories,
           "cycles": cycles, "streams": f"tune, seed {seed}", "grid": {"inflation": list(inflations),
                                                                     "gamma": list(gammas)},
           "grid_rrmse": [[p[0], p[1], round(float(m), 4)] for p, m in zip(points, a["mean"])],
           "seconds": round(time.perf_counter() - started, 1)}
    log(f"filter settings: inflation {out['inflation']}, gamma {out['gamma']}: R-RMSE {out['rrmse']} "
        f"on {trajectories} x {cycles} tune trajectories at N={N} [{out['seconds']} s]", flush=True)
    return out
