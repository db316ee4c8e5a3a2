"""Set transformer (Lee et al. 2019) mapping an ensemble of any size N to one feature vector f_v.

Layout (paper App. C.1, eq. C.1): Linear(in → 64) → 2 SAB → PMA(16 seeds) → 2 SAB → flatten → Linear(1024 → f).
Block details follow the authors' code (facts file), which differs from the paper's post-norm eq. (4.9):
  MAB(q, k) = q + MHA(LN(q), LN(k))  (one pre-norm shared by queries and keys, residual on raw q)
              then out = h + FF(LN2(h)),  FF = Linear → ReLU → Linear;
  SAB(x)    = Linear(MAB(x, x));  PMA(x) = MAB(seeds, x) with the query projection frozen to identity.
Everything before the PMA is permutation-equivariant over members, so f_v is permutation-invariant.
"""
from __future__ import annotations

import torch
from torch import nn

SHORT_AXIS = 16  # below this the written-out softmax is the faster one on the CPU


def softmax_last(x):
    """Softmax over the last axis. On the CPU torch.softmax's kernel is 2-4x slower forward+backward than
    exp/normalise written out when the axis is shorter than 16 (ensembles of 10 or 15 members), and 2-3x faster
    from 16 on (the 16 PMA seeds, larger ensembles); measured, torch 2.13, one thread:
    `python benchmarks/bench_softmax.py`. The max is detached because softmax does not depend on the shift, so
    the gradient is the same."""
    if x.device.type == "cpu" and x.shape[-1] < SHORT_AXIS:
        return softmax_written_out(x)
    return torch.softmax(x, dim=-1)


def softmax_written_out(x):
    """exp(x − max) / Σ exp(x − max) over the last axis, as separate ops."""
    e = (x - x.amax(-1, keepdim=True).detach()).exp()
    return e * e.sum(-1, keepdim=True).reciprocal()


class MultiHeadAttention(nn.Module):
    """Plain multi-head attention; batched over any leading dims, sequence length free."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def _split(self, x):  # (B, L, W) -> (B, H, L, W/H)
        B, L, W = x.shape
        return x.reshape(B, L, self.heads, W // self.heads).transpose(1, 2)

    def forward(self, q, kv):
        # Written out rather than F.scaled_dot_product_attention: on CUDA that picks the memory-efficient
        # kernel for float32, whose backward is not deterministic (no exact resume); the sequences here
        # are 10-100 members long, so the plain form costs nothing and fuses under torch.compile.
        qh, kh, vh = self._split(self.q(q)), self._split(self.k(kv)), self._split(self.v(kv))
        att = softmax_last((qh @ kh.transpose(-2, -1)) * qh.shape[-1] ** -0.5) @ vh
        B, H, L, w = att.shape
        return self.out(att.transpose(1, 2).reshape(B, L, H * w))


class MAB(nn.Module):
    """Multi-head attention block, pre-norm as in the authors' code."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, q, kv):
        h = q + self.attn(self.norm(q), self.norm(kv))
        return h + self.ff(self.norm2(h))


class SAB(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.mab = MAB(width, heads)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        return self.proj(self.mab(x, x))


class PMA(nn.Module):
    """Pooling by attention onto `seeds` learned queries: (B, N, W) -> (B, seeds, W) for any N."""

    def __init__(self, width: int, heads: int, seeds: int):
        super().__init__()
        self.seeds = nn.Parameter(torch.empty(1, seeds, width))
        nn.init.xavier_uniform_(self.seeds)
        self.mab = MAB(width, heads)
        # The seeds are already free parameters, so a query projection adds nothing: freeze it to identity
        # (kept as a buffer-like frozen parameter so the parameter count matches the paper's Table 5).
        with torch.no_grad():
            self.mab.attn.q.weight.copy_(torch.eye(width))
            self.mab.attn.q.bias.zero_()
        self.mab.attn.q.weight.requires_grad_(False)
        self.mab.attn.q.bias.requires_grad_(False)

    def forward(self, x):
        return self.mab(self.seeds.expand(x.shape[0], -1, -1), x)


class SetTransformer(nn.Module):
    """(B, N, in_dim) -> (B, out_dim), invariant to the order of the N members."""

    def __init__(self, in_dim: int, out_dim: int = 64, width: int = 64, heads: int = 8, seeds: int = 16,
                 encoder_blocks: int = 2, decoder_blocks: int = 2):
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.encoder = nn.Sequential(*[SAB(width, heads) for _ in range(encoder_blocks)])
        self.pool = PMA(width, heads, seeds)
        self.decoder = nn.Sequential(*[SAB(width, heads) for _ in range(decoder_blocks)])
        self.head = nn.Linear(seeds * width, out_dim)

    def forward(self, x):
        z = self.decoder(self.pool(self.encoder(self.embed(x))))
        return self.head(z.flatten(1))
