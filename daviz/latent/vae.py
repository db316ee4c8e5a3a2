"""The coupled VAE of Latent-EnSF: two encoders into one latent space, one decoder.

* state encoder q(z | x) = N(μ_x(x), diag exp(ℓ_x(x))): full state (d) → latent (r)
* observation encoder q(z | y) = N(μ_y(y), diag exp(ℓ_y(y))): the sparse noisy observation (p) → the same
  latent space
* decoder D(z): latent → full state

States are normalized by the climatological mean and standard deviation (one number each on the
periodic systems), observations by the same numbers. Training (daviz.latent.train) couples the two
encoders in the paper's way, through the shared decoder (both latents must decode to the full state),
and adds a latent-consistency term: μ_y(y) must predict μ_x(x) under its own variance exp(ℓ_y), so the
observation encoder's variance is a calibrated error bar for the encoded observation, which Latent-EnSF
uses as the latent observation noise.

The networks are plain MLPs (LeakyReLU 0.2, as the authors' VAE). `NumpyVAE` is the same computation in
numpy float64, so the filter itself runs without torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class VAEConfig:
    dim: int  # d, the state dimension
    obs_dim: int  # p, observed components
    latent: int = 32  # r
    hidden: int = 256
    layers: int = 2  # hidden layers per network

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(n_in: int, n_out: int, hidden: int, layers: int) -> nn.Sequential:
    mods, width = [], n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
        width = hidden
    mods.append(nn.Linear(width, n_out))
    return nn.Sequential(*mods)


class CoupledVAE(nn.Module):
    """Encoders and decoder on normalized data; `normalize` / `denormalize` use the stored climatology."""

    def __init__(self, config: VAEConfig, obs_idx, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.config = config
        r = config.latent
        self.state_encoder = mlp(config.dim, 2 * r, config.hidden, config.layers)
        self.obs_encoder = mlp(config.obs_dim, 2 * r, config.hidden, config.layers)
        self.decoder = mlp(r, config.dim, config.hidden, config.layers)
        self.register_buffer("obs_idx", torch.as_tensor(np.asarray(obs_idx), dtype=torch.long))
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def encode_state(self, x):
        """(μ, log variance) of q(z | x) for normalized x."""
        out = self.state_encoder(x)
        return out[..., :self.config.latent], out[..., self.config.latent:]

    def encode_obs(self, y):
        """(μ, log variance) of q(z | y) for normalized y."""
        out = self.obs_encoder(y)
        return out[..., :self.config.latent], out[..., self.config.latent:]

    def decode(self, z):
        return self.decoder(z)


def _layers(seq: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(m.weight.detach().double().cpu().numpy().T.copy(), m.bias.detach().double().cpu().numpy().copy())
            for m in seq if isinstance(m, nn.Linear)]


class NumpyVAE:
    """Inference copy of a CoupledVAE in numpy float64 (no torch at filter time)."""

    def __init__(self, model: CoupledVAE):
        self.latent = model.config.latent
        self.obs_idx = model.obs_idx.cpu().numpy()
        self.mean, self.std = float(model.mean), float(model.std)
        self._enc_x = _layers(model.state_encoder)
        self._enc_y = _layers(model.obs_encoder)
        self._dec = _layers(model.decoder)

    @staticmethod
    def _run(layers, h):
        for i, (W, b) in enumerate(layers):
            h = h @ W + b
            if i < len(layers) - 1:
                h = np.where(h > 0, h, 0.2 * h)
        return h

    def encode_state(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(μ, log variance) of q(z | x) for states x (..., d) in physical units."""
        out = self._run(self._enc_x, (x - self.mean) / self.std)
        return out[..., :self.latent], out[..., self.latent:]

    def encode_obs(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(μ, log variance) of q(z | y) for observations y (..., p) in physical units."""
        out = self._run(self._enc_y, (y - self.mean) / self.std)
        return out[..., :self.latent], out[..., self.latent:]

    def decode(self, z: np.ndarray) -> np.ndarray:
        """States (..., d) in physical units."""
        return self.mean + self.std * self._run(self._dec, z)
