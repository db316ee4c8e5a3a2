"""MNMEF analysis map (paper §4.2): EnKF-shaped gain with learned corrections, inflation and localization.

One analysis, for a forecast ensemble v (B, N, d), observations y (B, p) and perturbations r (B, N, p):
    f_v  = SetTransformer([v, h(v)])                                (4.25)
    w, z = F_gain(v, h(v), y, f_v)                                  (4.28)
    V    = v - mean v + w ;  Y = h(v) - mean h(v) + z
    K1   = (Vᵀ Y / c) ∘ L1 ;  K2 = (Yᵀ Y / c) ∘ L2 + Γ ;  K = K1 K2⁻¹  (4.27, 4.34; solve, no inverse)
    v_a  = base + (y - h(v) - r) Kᵀ,  clamped to ±clamp               (4.26a, App. C.4)
with L1[i, j] = g(dist(i, obs_j)), L2 = g(dist(obs_i, obs_j)), g = F_loc(f_v) on unique periodic distances.

Paper-vs-code switches (ModelConfig), defaults in brackets:
  feature_dim  [64]       paper Table C.7: 64; authors' code: 128 (128 reproduces Table 5's 341,551 exactly).
  loc_activation ["sigmoid"] paper Remark 14: 2·softmax; code: 2·sigmoid (independent weights in [0, 2]). Sigmoid
                             can equal the tuned Gaspari–Cohn weights at every N (softmax forces Σg = 2), so
                             it won the warm-started A/B at N = 40 (results/ab_loc_activation.json).
  inflation_at ["forecast"] code: base = v + F_infl(v, f_v) on the forecast; paper Alg. 1: base = v,
                             then v_a += F_infl(v_a, f_v) after the analysis.
  cov_divisor  ["N-1"]    code (Γ·(N−1) ≡ dividing by N−1, as the EnKF does); paper eq. (4.27): 1/N.

Warm start (daviz.mnmef.warm_start): two buffers, not trained, make the model start as the tuned localized
perturbed-observation EnKF: g = 2·act(loc_prior + F_loc(f_v)), and after the analysis a fixed multiplicative
inflation v_a ← v_a + (α − 1)(v_a − mean v_a), where the EnKF applies its own. Zero prior and α = 1 (the
defaults, and what checkpoints from before the warm start load as) give the model above unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..systems import System
from .set_transformer import SetTransformer, softmax_last


@dataclass
class ModelConfig:
    feature_dim: int = 64
    width: int = 64          # set-transformer latent width (Table C.7)
    heads: int = 8
    seeds: int = 16
    head_width: int = 64     # MLP heads: Linear(in, 64)+ReLU, 2 × [Linear(64, 64)+ReLU], Linear(64, out)
    loc_activation: str = "sigmoid"  # scripts/ab_loc_activation.py (README, "A/B of the paper-vs-code switches")
    inflation_at: str = "forecast"
    cov_divisor: str = "N-1"

    def __post_init__(self):
        for key, allowed in (("loc_activation", ("sigmoid", "softmax")), ("inflation_at", ("forecast", "analysis")),
                             ("cov_divisor", ("N-1", "N"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(n_in: int, n_out: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, n_out))


def distance_lookup(system: System):
    """Unique periodic distances and the index of each (state, obs) and (obs, obs) pair among them."""
    if system.distances is None:
        return None, None, None
    dist = system.distances
    unique, inverse = np.unique(dist, return_inverse=True)
    inverse = inverse.reshape(dist.shape)
    obs = system.obs_idx
    return unique, inverse[:, obs], inverse[np.ix_(obs, obs)]


class MNMEF(nn.Module):
    """The learned analysis map; `forward(v, y, r)` returns (analysis ensemble, localization weights or None)."""

    def __init__(self, system: System, sigma_y: float, config: ModelConfig | None = None):
        super().__init__()
        self.system, self.sigma_y = system, float(sigma_y)
        self.config = config = config or ModelConfig()
        d, p, f, w = system.dim, system.obs_dim, config.feature_dim, config.head_width
        self.set_transformer = SetTransformer(d + p, f, config.width, config.heads, config.seeds)
        self.gain = mlp(d + 2 * p + f, d + p, w)
        self.inflation = mlp(d + f, d, w)
        unique, idx_vh, idx_hh = distance_lookup(system)
        self.unique_distances = unique
        self.localization = mlp(f, len(unique), w) if unique is not None else None
        if unique is not None:
            self.register_buffer("loc_prior", torch.zeros(len(unique)))
        self.register_buffer("fixed_inflation", torch.ones(()))
        self.register_buffer("obs_idx", torch.as_tensor(system.obs_idx, dtype=torch.long), persistent=False)
        self._obs_slice = _as_slice(system.obs_idx)
        if unique is not None:
            self.register_buffer("idx_vh", torch.as_tensor(idx_vh, dtype=torch.long), persistent=False)
            self.register_buffer("idx_hh", torch.as_tensor(idx_hh, dtype=torch.long), persistent=False)
            # The lookup g[:, idx] as a product with a 0/1 matrix: the same numbers in float32 (one 1 per
            # column), but its backward is a matrix product instead of an atomic scatter-add, so a CUDA
            # training step is bitwise reproducible (exact resume) and has no index kernels to capture.
            n = len(unique)
            self.register_buffer("onehot_vh", torch.nn.functional.one_hot(self.idx_vh.reshape(-1), n).T.float(),
                                 persistent=False)
            self.register_buffer("onehot_hh", torch.nn.functional.one_hot(self.idx_hh.reshape(-1), n).T.float(),
                                 persistent=False)

    _WARM_START_BUFFERS = {"loc_prior": 0.0, "fixed_inflation": 1.0}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before the warm start lack its buffers: they mean prior 0 and inflation 1
        for name, value in self._WARM_START_BUFFERS.items():
            buf = getattr(self, name, None)
            if buf is not None and prefix + name not in state_dict:
                state_dict[prefix + name] = torch.full_like(buf, value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def observe(self, v):
        """h(v) for (..., d): a strided slice where the observed sites are evenly spaced (a view, whose
        backward needs no index kernel), else an index."""
        return v[..., self._obs_slice] if self._obs_slice is not None else v[..., self.obs_idx]

    def head_parameters(self):
        """Parameters fine-tuned for a new N (paper §4.4): gain, inflation, localization."""
        heads = [self.gain, self.inflation] + ([self.localization] if self.localization is not None else [])
        return [q for m in heads for q in m.parameters()]

    def localization_weights(self, f_v):
        """(B, n_unique) values of g_θ in [0, 2], or None where localization is off."""
        if self.localization is None:
            return None
        out = self.localization(f_v) + self.loc_prior
        if self.config.loc_activation == "softmax":
            return 2 * softmax_last(out)
        return 2 * torch.sigmoid(out)

    def forward(self, v, y, r, loc_override=None):
        """v (B, N, d) forecast, y (B, p), r (B, N, p) centred obs perturbations.

        `loc_override` (B, n_unique) replaces g_θ (tests use ones to recover the plain EnKF).
        """
        B, N, d = v.shape
        p = y.shape[-1]
        hv = self.observe(v)
        f_v = self.set_transformer(torch.cat([v, hv], -1))
        f_n = f_v[:, None, :].expand(B, N, f_v.shape[-1])
        wz = self.gain(torch.cat([v, hv, y[:, None, :].expand(B, N, p), f_n], -1))
        V = v - v.mean(1, keepdim=True) + wz[..., :d]
        Y = hv - hv.mean(1, keepdim=True) + wz[..., d:]
        c = N - 1 if self.config.cov_divisor == "N-1" else N
        K1 = V.transpose(1, 2) @ Y / c            # (B, d, p)
        K2 = Y.transpose(1, 2) @ Y / c            # (B, p, p)
        g = self.localization_weights(f_v) if loc_override is None else loc_override
        if g is not None:
            K1 = K1 * (g @ self.onehot_vh).reshape(B, d, p)
            K2 = K2 * (g @ self.onehot_hh).reshape(B, p, p)
        K2 = K2 + self.sigma_y**2 * torch.eye(p, dtype=v.dtype, device=v.device)
        innovation = y[:, None, :] - hv - r        # (B, N, p)
        # solve_ex: no error check, hence no device-to-host sync (a captured CUDA graph allows none);
        # a singular K2 gives non-finite values, which training and the experiment detect.
        X = torch.linalg.solve_ex(K2, innovation.transpose(1, 2))[0]  # K2⁻¹ δ for every member
        update = (K1 @ X).transpose(1, 2)
        if self.config.inflation_at == "forecast":
            va = v + self.inflation(torch.cat([v, f_n], -1)) + update
        else:
            va = v + update
            va = va + self.inflation(torch.cat([va, f_n], -1))
        # the warm start's fixed inflation, post-analysis as in the EnKF (α = 1 adds exactly 0)
        va = va + (self.fixed_inflation - 1) * (va - va.mean(1, keepdim=True))
        clamp = self.system.clamp
        return va.clamp(-clamp, clamp), g


def _as_slice(idx) -> slice | None:
    idx = np.asarray(idx)
    if len(idx) == 0 or idx[0] < 0:
        return None
    step = int(idx[1] - idx[0]) if len(idx) > 1 else 1
    if step <= 0 or not np.array_equal(idx, np.arange(idx[0], idx[0] + step * len(idx), step)):
        return None
    return slice(int(idx[0]), int(idx[-1]) + 1, step)


def obs_perturbations(shape, sigma_y: float, generator=None, dtype=torch.float32, device="cpu"):
    """Torch twin of the engine's `observation_perturbations`: centred over members, rescaled by √(N/(N−1))."""
    B, N, p = shape
    r = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    r = r - r.mean(1, keepdim=True)
    return sigma_y * (N / (N - 1)) ** 0.5 * r


def parameter_counts(model: MNMEF) -> dict:
    total = sum(q.numel() for q in model.parameters())
    heads = sum(q.numel() for q in model.head_parameters())
    return {"total": total, "heads": heads, "set_transformer": total - heads}
