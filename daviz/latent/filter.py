"""LatentEnSF: the EnSF analysis run in the latent space of a coupled VAE (numpy only, float64).

One analysis (Latent-EnSF, arXiv 2409.00127, §3.3):
1. encode every forecast member with the state encoder's mean, z_n = μ_x(x_n)   (B, N, r)
2. encode the sparse observation with the observation encoder: z_y = μ_y(y), with variance v_y = exp(ℓ_y(y))
3. EnSF (daviz.filters.ensf) in latent space, the encoded observation observing every latent component
   directly, with noise variance γ² v_y: the observation encoder's own error bar, scaled by γ
4. decode every analysis member, x_n = D(z_n); multiplicative inflation afterwards, as for every filter.

Settings: inflation and γ (`gamma`, scalars or one per batch element), and the EnSF settings (steps,
eps_alpha, eps_beta, damping, kernel). The shipped weights' sidecar records the inflation and γ chosen on
"tune" trajectories (daviz.latent.train.choose_settings).
"""
from __future__ import annotations

import numpy as np

from ..filters.base import EnsembleFilter, check_ensemble, per_batch
from ..filters.ensf import DEFAULTS, check_params, ensf_sample


class LatentEnSF(EnsembleFilter):
    name = "latent-ensf"
    localizes = False

    def __init__(self, system, sigma_y, vae, inflation=1.0, radius=None, gamma=1.0, **params):
        super().__init__(system, sigma_y, inflation, None)
        if not np.array_equal(np.asarray(vae.obs_idx), np.asarray(system.obs_idx)):
            raise ValueError(f"the VAE was trained for observations at {np.asarray(vae.obs_idx).tolist()}, "
                             f"not at {np.asarray(system.obs_idx).tolist()}")
        self.vae = vae
        self.gamma = per_batch(gamma, "gamma", 0.0)
        if np.any(np.asarray(self.gamma) <= 0):
            raise ValueError(f"gamma must be positive, got {gamma!r}")
        self.settings = {**DEFAULTS, **check_params(params)}

    @property
    def params(self) -> dict:
        as_json = lambda v: v if np.isscalar(v) else np.asarray(v).tolist()
        return {**super().params, "gamma": as_json(self.gamma), **{k: as_json(v) for k, v in self.settings.items()}}

    def analysis(self, E, y, rng):
        check_ensemble(E, y, self.system)
        Z, _ = self.vae.encode_state(E)  # (B, N, r)
        z_y, logvar = self.vae.encode_obs(y)  # (B, r)
        gamma = np.reshape(self.gamma, (-1, 1)) if np.ndim(self.gamma) else self.gamma
        var = gamma**2 * np.exp(logvar)
        Za = ensf_sample(Z, z_y, var, rng, obs_idx=None, **self.settings)
        return self.vae.decode(Za)
