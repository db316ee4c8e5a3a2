"""Differentiable batched filtering rollout in torch and the training loss (paper eq. 4.38–4.40).

The forecast is `system.step`, the very code the numpy baselines run. Loss per trajectory:
mean over j = 0..J of ‖mean_n v_j⁽ⁿ⁾ − v_j†‖² / ‖v_j†‖²; like the authors' code it includes j = 0, whose
term carries no gradient (the initial ensemble does not depend on θ) and only rescales the loss.
The ensemble is detached every `grad_window` cycles (Remark 16; the authors' code uses 1).
"""
from __future__ import annotations

import torch
from torch import nn

from .model import MNMEF, obs_perturbations


def relative_sq_error(mean, truth):
    return ((mean - truth) ** 2).sum(-1) / (truth**2).sum(-1)


def rollout_loss(model: MNMEF, truth, obs, N: int, generator=None, grad_window: int = 1):
    """Per-trajectory losses (B,) for truth (B, J+1, d) and obs (B, J+1, p) (obs[:, 0] unused)."""
    system = model.system
    B, J1, d = truth.shape
    kw = dict(dtype=truth.dtype, device=truth.device)
    E = truth[:, :1, :] + system.init_ensemble_std * torch.randn((B, N, d), generator=generator, **kw)
    errors = [relative_sq_error(E.mean(1), truth[:, 0])]
    for j in range(1, J1):
        if grad_window and (j - 1) % grad_window == 0:
            E = E.detach()
        Ef = system.step(E)
        if system.model_noise_std > 0:
            Ef = Ef + system.model_noise_std * torch.randn(Ef.shape, generator=generator, **kw)
        r = obs_perturbations((B, N, system.obs_dim), model.sigma_y, generator, **kw)
        E, _ = model(Ef, obs[:, j], r)
        errors.append(relative_sq_error(E.mean(1), truth[:, j]))
    return torch.stack(errors, 1).mean(1)


def masked_mean(losses):
    """Mean over trajectories that stayed finite (diverged ones would poison the gradient)."""
    ok = torch.isfinite(losses)
    return torch.where(ok, losses, torch.zeros_like(losses)).sum() / ok.sum().clamp(min=1)


class Rollout(nn.Module):
    """One module whose forward is a whole rollout, so DistributedDataParallel sees one forward per step."""

    def __init__(self, model: MNMEF, N: int, grad_window: int = 1):
        super().__init__()
        self.model, self.N, self.grad_window = model, N, grad_window

    def forward(self, truth, obs, seed: int):
        gen = torch.Generator(device=truth.device).manual_seed(int(seed))
        return rollout_loss(self.model, truth, obs, self.N, gen, self.grad_window)
