"""Differentiable batched filtering rollout in torch and the training loss (paper eq. 4.38–4.40).

The forecast is `system.step`, the very code the numpy baselines run. Loss per trajectory:
mean over j = 0..J of ‖mean_n v_j⁽ⁿ⁾ − v_j†‖² / ‖v_j†‖²; like the authors' code it includes j = 0, whose
term carries no gradient (the initial ensemble does not depend on θ) and only rescales the loss.
The ensemble is detached every `grad_window` cycles (Remark 16; the authors' code uses 1).

Randomness: every draw of a rollout (initial ensemble, observation perturbations, model noise) comes from
`noise.normal` under keys derived from one per-rollout key, all drawn up front (a few kernels, not a few per
cycle). One cycle (forecast, analysis, error) is `RolloutLoss.cycle`, the unit torch.compile fuses.
"""
from __future__ import annotations

import torch
from torch import nn

from . import noise
from .model import MNMEF

INIT, OBS, MODEL = 0, 1, 2  # noise streams under one rollout key
DATA_OBS = 3  # the batch's observation noise, drawn by the training step (redraw_obs_noise) under the same key


def relative_sq_error(mean, truth):
    return ((mean - truth) ** 2).sum(-1) / (truth**2).sum(-1)


def centred_perturbations(z, sigma_y: float):
    """Observation perturbations from standard normals z (..., N, p): centred over members and rescaled by
    √(N/(N−1)), the torch twin of the engine's `observation_perturbations`."""
    N = z.shape[-2]
    return sigma_y * (N / (N - 1)) ** 0.5 * (z - z.mean(-2, keepdim=True))


def draw(system, sigma_y: float, key, B: int, N: int, J: int, dtype=torch.float32):
    """All random numbers of one rollout: initial-ensemble normals (B, N, d), observation perturbations
    (J, B, N, p) and model-noise normals (J, B, N, d) or None."""
    k0, k1, k2 = (noise.derive(key, s) for s in (INIT, OBS, MODEL))
    z0 = noise.normal(k0, (B, N, system.dim), dtype)
    r = centred_perturbations(noise.normal(k1, (J, B, N, system.obs_dim), dtype), sigma_y)
    q = noise.normal(k2, (J, B, N, system.dim), dtype) if system.model_noise_std > 0 else None
    return z0, r, q


class RolloutLoss(nn.Module):
    """forward(truth (B, J+1, d), obs (B, J+1, p), key) -> per-trajectory losses (B,).

    One module whose forward is a whole rollout, so DistributedDataParallel sees one forward per step.
    `compile_cycle()` swaps the per-cycle function for its torch.compile'd version (same numbers up to
    float rounding; fewer, fused kernels).
    """

    def __init__(self, model: MNMEF, N: int, grad_window: int = 1):
        super().__init__()
        self.model, self.N, self.grad_window = model, int(N), int(grad_window)
        self.cycle = self._cycle

    def _cycle(self, E, y, truth, r, q):
        system = self.model.system
        Ef = system.step(E)
        if q is not None:
            Ef = Ef + system.model_noise_std * q
        Ea, _ = self.model(Ef, y, r)
        return Ea, relative_sq_error(Ea.mean(1), truth)

    def compile_cycle(self, **options):
        import warnings
        # dynamo traces array_api_compat's cached type lookups (pure functions of a type): its warning is noise
        warnings.filterwarnings("ignore", message=".*functools.lru_cache.*", category=UserWarning)
        self.cycle = torch.compile(self._cycle, fullgraph=False, dynamic=False, **options)
        return self

    def forward(self, truth, obs, key, backward_scale: float | None = None):
        """Per-trajectory losses (B,). With `backward_scale`, the gradient of backward_scale x (sum of the
        per-cycle errors) is accumulated into the parameters' .grad window by window, as the rollout goes:
        each window's graph is freed at once, so memory holds one window's activations instead of all J
        (at Table C.8's batch, tens of GB less on a GPU); the losses returned are then detached."""
        system = self.model.system
        B, J1, d = truth.shape
        if not isinstance(key, torch.Tensor):
            key = noise.key_tensor(key, truth.device)
        z0, r, q = draw(system, self.model.sigma_y, key, B, self.N, J1 - 1, truth.dtype)
        E = truth[:, :1, :] + system.init_ensemble_std * z0
        errors = [relative_sq_error(E.mean(1), truth[:, 0])]
        window = []
        for j in range(1, J1):
            if self.grad_window and (j - 1) % self.grad_window == 0:
                E = E.detach()
                if window:
                    (torch.stack(window).sum() * backward_scale).backward()
                    window = []
            E, err = self.cycle(E, obs[:, j], truth[:, j], r[j - 1], None if q is None else q[j - 1])
            if backward_scale is None:
                errors.append(err)
            else:
                errors.append(err.detach())
                window.append(err)
        if window:
            (torch.stack(window).sum() * backward_scale).backward()
        return torch.stack(errors, 1).mean(1)


def rollout_loss(model: MNMEF, truth, obs, N: int, key=0, grad_window: int = 1):
    """Per-trajectory losses (B,) for truth (B, J+1, d) and obs (B, J+1, p) (obs[:, 0] unused)."""
    return RolloutLoss(model, N, grad_window)(truth, obs, key)


def masked_mean(losses):
    """Mean over trajectories that stayed finite (diverged ones would poison the gradient)."""
    ok = torch.isfinite(losses)
    return torch.where(ok, losses, torch.zeros_like(losses)).sum() / ok.sum().clamp(min=1)
