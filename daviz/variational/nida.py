"""Neural Incremental Data Assimilation (Blanke, Fablet & Lelarge, arXiv 2406.15076), for one window.

The unknown is the window's trajectory u = (u_0, …, u_L) ∈ R^{T×d}, T = L + 1 (u_0 at the window start, where
cycling puts the background; observations at t_1 … t_L). A network, given the current estimate ũ and a
temperature s ∈ [0, 1], outputs a Gaussian prior N(μ_θ(ũ, s), P_θ(ũ, s)); the observations y = H u + ε,
ε ~ N(0, σ_y² I), update it by the MAP estimate, which for a Gaussian prior and linear H is a linear solve:

    u⁺ = μ + P Hᵀ (H P Hᵀ + R)⁻¹ (y − H μ)

(the Kalman form: the solve is in observation space, m × m with m the number of observations in the window).
The increments go from coarse to fine: ũ⁰ = the background trajectory (the forecast of the background through
the window), then s = 1, …, 0 over K increments (s_k = 1 − k/(K−1)), each MAP estimate becoming the next ũ.

Banded covariance: P = C Cᵀ + εI where C couples each (t, i) only to (t + a, j) with |a| ≤ band_time and j
within band_space of i on the ring (periodic systems) or any j (systems without spatial structure, L63); so P is
banded in time and space. The network never sees y or H: one trained model serves any observation operator
(any selection of components per time, drawn at random in training).

Networks (inputs normalized by the climatological mean and std; the temperature is an extra input channel):
- periodic systems (L96): a circular 1-D CNN over space with the T time levels as channels (translation-equivariant);
- otherwise (L63): an MLP on the flattened window.
Both output Δμ (μ = ũ + Δμ) and the band coefficients of C.

Training (nida_train.py) unrolls the K increments and minimizes the reconstruction error; gradients flow through
the linear solves by implicit differentiation (torch's backward of a Cholesky solve is the adjoint solve).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..systems import System, get_system


@dataclass(frozen=True)
class NIDAConfig:
    window: int = 5  # L: observation times per window (T = L + 1 states)
    increments: int = 4  # K: coarse-to-fine MAP steps
    band_time: int = 1  # C couples t with t ± band_time
    band_space: int = 2  # periodic systems: i with i ± band_space (ignored otherwise: all components)
    width: int = 64
    depth: int = 4
    kernel: int = 5  # CNN kernel over space
    eps: float = 1e-3  # P = C Cᵀ + eps I (normalized units)

    def as_dict(self) -> dict:
        return asdict(self)


class _PeriodicCNN(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, width: int, depth: int, kernel: int):
        super().__init__()
        layers, c = [], channels_in
        for _ in range(depth):
            layers += [nn.Conv1d(c, width, kernel, padding=kernel // 2, padding_mode="circular"), nn.GELU()]
            c = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv1d(width, channels_out, 1)

    def forward(self, x):  # (B, C_in, d) -> (B, C_out, d)
        return self.head(self.body(x))


class _MLP(nn.Module):
    def __init__(self, n_in: int, n_out: int, width: int, depth: int):
        super().__init__()
        layers, c = [], n_in
        for _ in range(depth):
            layers += [nn.Linear(c, width), nn.GELU()]
            c = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        return self.head(self.body(x))


class NIDA(nn.Module):
    """Prior network + incremental MAP reconstruction for one system and window length."""

    def __init__(self, system: System | str, sigma_y: float, config: NIDAConfig, clim_mean, clim_std):
        super().__init__()
        self.system = get_system(system) if isinstance(system, str) else system
        self.sigma_y = float(sigma_y)
        self.config = config
        d, T = self.system.dim, config.window + 1
        self.T, self.d = T, d
        self.register_buffer("mean", torch.as_tensor(np.asarray(clim_mean, dtype=np.float32)).reshape(d))
        self.register_buffer("std", torch.as_tensor(np.asarray(clim_std, dtype=np.float32)).reshape(d))
        nt = 2 * config.band_time + 1
        if self.system.periodic:
            offsets = np.arange(-config.band_space, config.band_space + 1)
            neighbours = (np.arange(d)[:, None] + offsets[None, :]) % d  # (d, K)
        else:
            neighbours = np.broadcast_to(np.arange(d), (d, d)).copy()
        self.n_neigh = neighbours.shape[1]
        self.n_coef = nt * self.n_neigh  # coefficients of C per (t, i)
        # flat (row, col) of every band coefficient, and which fall inside the window
        t, i, a, k = np.meshgrid(np.arange(T), np.arange(d), np.arange(nt), np.arange(self.n_neigh), indexing="ij")
        tt = t + a - config.band_time
        valid = (tt >= 0) & (tt < T)
        rows = t * d + i
        cols = np.clip(tt, 0, T - 1) * d + neighbours[i, k]
        self.register_buffer("coef_flat", torch.as_tensor((rows * (T * d) + cols).reshape(-1)), persistent=False)
        self.register_buffer("coef_valid", torch.as_tensor(valid.reshape(-1).astype(np.float32)), persistent=False)
        centre = (a == config.band_time) & (neighbours[i, k] == i)
        out_per_site = T * (1 + self.n_coef)
        if self.system.periodic:
            self.net = _PeriodicCNN(T + 1, out_per_site, config.width, config.depth, config.kernel)
        else:
            self.net = _MLP(T * d + 1, T * d * (1 + self.n_coef), config.width, config.depth)
        # start near μ = ũ and P = 0.3² I: the first MAP steps are then a gentle interpolation
        with torch.no_grad():
            head = self.net.head
            head.weight.mul_(0.1)
            head.bias.zero_()
            bias = torch.zeros(T, d, 1 + self.n_coef)
            bias[..., 1:] = torch.as_tensor(centre.reshape(T, d, self.n_coef).astype(np.float32)) * 0.3
            if self.system.periodic:  # channels (T, 1 + n_coef), same for every site
                head.bias.copy_(bias[:, 0, :].reshape(-1))
            else:
                head.bias.copy_(bias.reshape(-1))

    # ------------------------------------------------------------------ prior
    def normalize(self, u):
        return (u - self.mean) / self.std

    def denormalize(self, z):
        return z * self.std + self.mean

    def prior(self, z: torch.Tensor, s: float | torch.Tensor):
        """(μ (B, T, d), C (B, n, n)) in normalized units, n = T·d."""
        B, T, d = z.shape
        s = torch.as_tensor(s, dtype=z.dtype, device=z.device).reshape(-1, 1).expand(B, 1)
        if self.system.periodic:
            x = torch.cat([z, s[:, :, None].expand(B, 1, d)], dim=1)  # (B, T + 1, d)
            out = self.net(x).reshape(B, T, 1 + self.n_coef, d).permute(0, 1, 3, 2)  # (B, T, d, 1 + n_coef)
        else:
            out = self.net(torch.cat([z.reshape(B, -1), s], dim=1)).reshape(B, T, d, 1 + self.n_coef)
        mu = z + out[..., 0]
        coef = out[..., 1:].reshape(B, -1) * self.coef_valid
        n = T * d
        C = z.new_zeros(B, n * n).index_add_(1, self.coef_flat, coef).reshape(B, n, n)
        return mu, C

    # ------------------------------------------------------------------ MAP
    @staticmethod
    def gather_observations(mask: torch.Tensor):
        """(index (B, m), valid (B, m)) of the observed entries of the flattened (T·d) window, padded to the
        largest count m in the batch (padding: index 0, valid False)."""
        B = mask.shape[0]
        flat = mask.reshape(B, -1) > 0
        counts = flat.sum(1)
        m = int(counts.max()) if B else 0
        order = torch.argsort((~flat).to(torch.int8), dim=1, stable=True)[:, :m]  # observed first, in order
        valid = torch.arange(m, device=mask.device)[None, :] < counts[:, None]
        return torch.where(valid, order, torch.zeros_like(order)), valid

    def map_update(self, mu, C, y_obs, index, valid, r2, want_end_cov: bool = False):
        """u⁺ = μ + P Hᵀ (H P Hᵀ + R)⁻¹ (y − H μ) with P = C Cᵀ + εI, in normalized units.

        y_obs, r2: (B, m) observed values and noise variances at `index`. Returns u⁺ (B, T, d) and, if asked,
        the posterior covariance of the last time level (B, d, d)."""
        B, T, d = mu.shape
        n = T * d
        eps = self.config.eps
        vf = valid.to(mu.dtype)
        Cobs = torch.gather(C, 1, index[..., None].expand(B, index.shape[1], n)) * vf[..., None]  # H C (B, m, n)
        PHt = C @ Cobs.transpose(1, 2)  # (B, n, m) = C Cᵀ Hᵀ
        # P Hᵀ also holds εI's part: ε at (index_r, r) for each valid observation r
        PHt = PHt + torch.zeros_like(PHt).scatter(1, index[:, None, :], (eps * vf)[:, None, :])
        S = Cobs @ Cobs.transpose(1, 2)
        S = S * (vf[:, :, None] * vf[:, None, :])
        S = S + torch.diag_embed(vf * (eps + r2) + (1 - vf))
        mu_flat = mu.reshape(B, n)
        innov = vf * (y_obs - torch.gather(mu_flat, 1, index))
        Ls, info = torch.linalg.cholesky_ex(S)
        sol = torch.cholesky_solve(innov[..., None], Ls)
        u = (mu_flat + (PHt @ sol)[..., 0]).reshape(B, T, d)
        if not want_end_cov:
            return u, None
        end = slice((T - 1) * d, n)
        C_end = C[:, end, :]
        P_end = C_end @ C_end.transpose(1, 2) + eps * torch.eye(d, dtype=mu.dtype, device=mu.device)
        K_end = PHt[:, end, :]
        P_post = P_end - K_end @ torch.cholesky_solve(K_end.transpose(1, 2), Ls)
        return u, 0.5 * (P_post + P_post.transpose(1, 2))

    def temperatures(self, K: int | None = None) -> list[float]:
        K = self.config.increments if K is None else int(K)
        return [0.0] if K == 1 else [1.0 - k / (K - 1) for k in range(K)]

    def reconstruct(self, u0, Y, mask, increments: int | None = None, return_all: bool = False,
                    want_end_cov: bool = False):
        """The incremental reconstruction from the first guess u0 (B, T, d) (physical units) given observations
        Y (B, T, d) where mask (B, T, d) is 1. Returns u (B, T, d) physical [, list of every increment's u]
        [, posterior covariance of the last time level (B, d, d), physical units]."""
        z = self.normalize(u0)
        mask = mask.to(z.dtype).expand_as(z)
        index, valid = self.gather_observations(mask)
        B = z.shape[0]
        y_obs = torch.gather(self.normalize(Y).reshape(B, -1), 1, index)
        r2_flat = ((self.sigma_y / self.std) ** 2).expand(self.T, self.d).reshape(-1)
        r2 = r2_flat[index]
        history = []
        cov = None
        temps = self.temperatures(increments)
        for k, s in enumerate(temps):
            mu, C = self.prior(z, s)
            last = k == len(temps) - 1
            z, cov = self.map_update(mu, C, y_obs, index, valid, r2, want_end_cov and last)
            if return_all:
                history.append(self.denormalize(z))
        u = self.denormalize(z)
        out = [u]
        if return_all:
            out.append(history)
        if want_end_cov:
            out.append(cov * self.std[:, None] * self.std[None, :])
        return out[0] if len(out) == 1 else tuple(out)


def background_trajectory(system: System, xb, L: int):
    """(B, L + 1, d): the background x_b and its forecast through the window (the first guess ũ⁰)."""
    xb = np.asarray(xb, dtype=float)
    states = [xb]
    x = xb
    for _ in range(int(L)):
        x = system.step(x)
        states.append(x)
    return np.stack(states, axis=1)
