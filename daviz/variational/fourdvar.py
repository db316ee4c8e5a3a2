"""Strong-constraint incremental 4D-Var, batched over trajectories, in torch (float64).

One window: the control is the state x₀ at the window start; the model M (the system's own `step`,
the same code the filters integrate) carries it to the L observation times t₁ … t_L. With the control
variable transform x₀ = x_b + U v, U = B^{1/2} (symmetric),

    J(v) = ½ ‖v‖² + ½ Σ_j Σ_i m_ji (y_ji − M_j(x_b + U v)_i)² / σ_y²,

where m_ji ∈ {0, 1} says whether component i is observed at t_j (any selection operator H, one per
trajectory and time if wanted). Gauss–Newton outer loops linearize M around the current x₀; each inner
problem, the quadratic

    (I + Uᵀ Gᵀ G U / σ_y²) δv = −∇J(v),      G = H M′ (the tangent-linear model of the window),

is solved by conjugate gradients (at most `inner` iterations, relative residual `tol`), preconditioned
by construction: the Hessian is the identity plus a matrix of rank ≤ the number of observations, so CG
stops after at most that many iterations plus one. A backtracking line search (step 1, ½, ¼, ⅛, else 0)
keeps the non-quadratic cost from increasing on strongly nonlinear windows.

Tangent-linear and adjoint both come from torch autograd through `system.step`, two ways:
- linearization="tangent" (matrix-free, the textbook form): one forward graph per outer loop; the
  adjoint Gᵀw is its vector–Jacobian product, the tangent-linear Gδx the "double-vjp" trick (the vjp's
  derivative with respect to its cotangent), one of each per CG iteration.
- linearization="jacobian" (default, for small d): the rows of G for every observed (time, component)
  at once, by one reverse pass through a batch of copies of the window; CG then runs on the explicit
  d × d Gauss–Newton Hessian. Same quadratic, same CG iterates (up to rounding); measured several times
  faster here because torch's per-operation overhead dominates at these sizes (benchmarks/bench_variational.py).

Everything is batched over the leading axis B: trajectories iterate together; a non-finite trajectory
stays non-finite without touching the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..systems import System

DTYPE = torch.float64
_JACOBIAN_ROWS_PER_CHUNK = 512  # batch × observed rows per reverse pass: bounds the autograd graph's memory


def window_states(system: System, x0, L: int):
    """M_1(x₀) … M_L(x₀): (..., L, d) for x₀ (..., d), numpy or torch (the system's own step)."""
    states, x = [], x0
    for _ in range(int(L)):
        x = system.step(x)
        states.append(x)
    if isinstance(x0, torch.Tensor):
        return torch.stack(states, dim=-2)
    return np.stack(states, axis=-2)


def as_tensor(a, device=None) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a, dtype=DTYPE, device=device)


@dataclass
class Linearization:
    """The window linearized around x₀: the nonlinear trajectory and the operators G (TL) and Gᵀ (AD)."""

    x0: torch.Tensor  # (B, d)
    states: torch.Tensor  # (B, L, d) M_j(x₀)
    tl: callable  # δx (B, d) -> (B, L, d): M′_j δx
    ad: callable  # w (B, L, d) -> (B, d): Σ_j M′_jᵀ w_j
    rows: tuple | None = None  # jacobian mode: (t, i) index tensors of the observed rows
    jac: torch.Tensor | None = None  # jacobian mode: (B, m, d) d(M_t(x₀)_i)/dx₀ per row


def tangent_linear(system: System, x0: torch.Tensor, L: int) -> Linearization:
    """Matrix-free TL and adjoint of the window at x₀ from one autograd graph (see module docstring)."""
    x0 = x0.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        states = window_states(system, x0, L)
        w = torch.zeros_like(states, requires_grad=True)
        (g,) = torch.autograd.grad(states, x0, w, create_graph=True)

    def ad(cot):
        return torch.autograd.grad(states, x0, cot, retain_graph=True)[0]

    def tl(dx):
        return torch.autograd.grad(g, w, dx, retain_graph=True)[0]

    return Linearization(x0.detach(), states.detach(), tl, ad)


def observed_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, i) of every (time, component) observed by at least one trajectory of the batch."""
    t, i = torch.nonzero(mask.reshape(-1, *mask.shape[-2:]).amax(0) > 0, as_tuple=True)
    return t, i


def observed_jacobian(system: System, x0: torch.Tensor, L: int, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """(states (B, L, d), J (B, m, d)) with J[b, r] = ∂ M_{t_r}(x₀)_{i_r} / ∂x₀ for the m rows (t_r, i_r).

    One reverse pass through a batch of m copies of each trajectory (copy r seeds output r), in chunks of
    at most _JACOBIAN_ROWS_PER_CHUNK copies so the autograd graph stays small.
    """
    t_idx, i_idx = rows
    B, d = x0.shape
    m = len(t_idx)
    x0 = x0.detach()
    with torch.no_grad():
        states = window_states(system, x0, L)
    if m == 0:
        return states, x0.new_zeros((B, 0, d))
    J = x0.new_empty((B, m, d))
    per = max(1, _JACOBIAN_ROWS_PER_CHUNK // m)
    r = torch.arange(m)
    for b0 in range(0, B, per):
        xe = x0[b0:b0 + per, None, :].expand(-1, m, d).clone().requires_grad_(True)
        with torch.enable_grad():
            out = window_states(system, xe, L)[:, r, t_idx, i_idx]  # (b, m)
            (J[b0:b0 + per],) = torch.autograd.grad(out.sum(), xe)
    return states, J


def jacobian_linearization(system: System, x0: torch.Tensor, L: int, rows) -> Linearization:
    states, J = observed_jacobian(system, x0, L, rows)
    t_idx, i_idx = rows
    B, _, d = states.shape

    def tl(dx):  # only the observed rows are known: the rest are zero (they are masked out anyway)
        out = states.new_zeros(states.shape)
        out[:, t_idx, i_idx] = (J @ dx[..., None])[..., 0]
        return out

    def ad(cot):
        return (J * cot[:, t_idx, i_idx][..., None]).sum(1)

    return Linearization(x0.detach(), states, tl, ad, rows, J)


def conjugate_gradient(matvec, b: torch.Tensor, iters: int, tol: float):
    """Batched CG for A x = b (A symmetric positive definite, one per batch row); x starts at 0.

    Each row stops on its own once ‖r‖ ≤ tol ‖b‖ (or after `iters`). Returns (x, iterations per row).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(-1)
    bnorm = rs.sqrt()
    done_its = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)
    active = rs.sqrt() > tol * bnorm
    for _ in range(int(iters)):
        if not bool(active.any()):
            break
        Ap = matvec(p)
        pAp = (p * Ap).sum(-1)
        alpha = torch.where(active, rs / torch.where(active, pAp, torch.ones_like(pAp)), torch.zeros_like(rs))
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        rs_new = (r * r).sum(-1)
        done_its += active.long()
        beta = torch.where(active, rs_new / torch.where(active, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta[:, None] * p
        rs = torch.where(active, rs_new, rs)
        active = active & (rs.sqrt() > tol * bnorm)
    return x, done_its


@dataclass
class WindowResult:
    """What one window's solve returns (torch tensors, batch first)."""

    x0: torch.Tensor  # (B, d) analysis at the window start
    states: torch.Tensor  # (B, L, d) the analysis trajectory; states[:, -1] is the window-end analysis
    cost: torch.Tensor  # (outer + 1, B) J after 0, 1, … outer loops (J at the first guess first)
    cost_b: torch.Tensor  # (B,) final background term
    cost_o: torch.Tensor  # (B,) final observation term
    inner: torch.Tensor  # (B,) CG iterations, summed over the outer loops
    outer: int  # outer loops run (fewer than asked when converged)
    steps: torch.Tensor  # (outer, B) accepted line-search step per outer loop (0: no decrease found)
    hessian: torch.Tensor | None = field(default=None, repr=False)  # (B, d, d) GN Hessian of the last loop (jacobian mode)

    def summary(self) -> dict:
        """JSON-friendly means over the finite trajectories."""
        def mean(t):
            a = t.detach().cpu().numpy().astype(float)
            a = a[np.isfinite(a)]
            return float(a.mean()) if a.size else float("nan")
        return {"outer": self.outer, "inner_mean": mean(self.inner.double()), "cost_initial": mean(self.cost[0]),
                "cost_final": mean(self.cost[-1]), "cost_b": mean(self.cost_b), "cost_o": mean(self.cost_o)}


class Window:
    """One 4D-Var window problem for a batch: background x_b (B, d), observations Y and mask (B, L, d)."""

    def __init__(self, system: System, xb, Y, mask, U, sigma_y: float):
        self.system = system
        self.xb = as_tensor(xb)
        self.Y = as_tensor(Y)
        self.mask = as_tensor(mask).expand_as(self.Y) if as_tensor(mask).dim() < 3 else as_tensor(mask)
        self.U = as_tensor(U)
        self.sigma_y = float(sigma_y)
        self.L = self.Y.shape[-2]
        if self.xb.shape[-1] != system.dim or self.Y.shape[-1] != system.dim or self.U.shape != (system.dim,) * 2:
            raise ValueError(f"shapes do not fit d={system.dim}: xb {tuple(self.xb.shape)}, Y {tuple(self.Y.shape)}, "
                             f"U {tuple(self.U.shape)}")

    def x0(self, v: torch.Tensor) -> torch.Tensor:
        return self.xb + v @ self.U.T

    def cost_terms(self, v: torch.Tensor, states: torch.Tensor | None = None):
        """(J_b, J_o, states) at v; differentiable if v requires grad."""
        if states is None:
            states = window_states(self.system, self.x0(v), self.L)
        r = self.mask * (self.Y - states) / self.sigma_y
        return 0.5 * (v * v).sum(-1), 0.5 * (r * r).sum((-1, -2)), states

    def cost(self, v: torch.Tensor) -> torch.Tensor:
        jb, jo, _ = self.cost_terms(v)
        return jb + jo

    def gradient(self, v: torch.Tensor) -> torch.Tensor:
        """∇J(v) by reverse-mode autograd of the nonlinear cost (what the finite-difference test checks)."""
        v = v.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.cost(v).sum(), v)
        return g

    def linearize(self, v: torch.Tensor, mode: str, rows=None) -> Linearization:
        x0 = self.x0(v)
        if mode == "tangent":
            return tangent_linear(self.system, x0, self.L)
        return jacobian_linearization(self.system, x0, self.L, rows if rows is not None else observed_rows(self.mask))

    def solve(self, outer: int = 3, inner: int = 20, tol: float = 1e-6, mode: str = "jacobian",
              first_guess=None, max_halvings: int = 3, converged: float = 1e-10) -> WindowResult:
        """Gauss–Newton + CG from v = U⁻¹(first_guess − x_b) (default: the background itself).

        Stops before `outer` loops once no trajectory's accepted step exceeds converged · (1 + ‖v‖)."""
        if mode not in ("jacobian", "tangent"):
            raise ValueError(f"linearization must be 'jacobian' or 'tangent', got {mode!r}")
        if int(outer) < 1 or int(inner) < 1:
            raise ValueError(f"need outer >= 1 and inner >= 1, got {outer!r}, {inner!r}")
        s2 = self.sigma_y ** 2
        B, d = self.xb.shape
        if first_guess is None:
            v = torch.zeros_like(self.xb)
        else:
            v = torch.linalg.solve(self.U, (as_tensor(first_guess) - self.xb).T).T
        rows = observed_rows(self.mask) if mode == "jacobian" else None
        with torch.no_grad():
            jb, jo, states = self.cost_terms(v)
        J = jb + jo
        costs, steps = [J], []
        inner_its = torch.zeros(B, dtype=torch.long)
        hessian = None
        for _ in range(int(outer)):
            lin = self.linearize(v, mode, rows)
            with torch.no_grad():
                innov = self.mask * (self.Y - lin.states)
                rhs = -v + lin.ad(self.mask * innov) @ self.U / s2  # −∇J(v)
                if mode == "jacobian":
                    m_rows = self.mask[:, rows[0], rows[1]]  # (B, m)
                    GU = (m_rows[..., None] * lin.jac) @ self.U  # (B, m, d)
                    hessian = torch.eye(d, dtype=DTYPE) + GU.transpose(-1, -2) @ GU / s2

                    def matvec(p, H=hessian):
                        return (H @ p[..., None])[..., 0]
                else:
                    def matvec(p, lin=lin):
                        return p + lin.ad(self.mask * lin.tl(p @ self.U.T)) @ self.U / s2
                dv, its = conjugate_gradient(matvec, rhs, inner, tol)
                inner_its += its
                # backtracking: the largest of 1, 1/2, ... that decreases J; 0 where none does
                alpha = torch.ones(B, dtype=DTYPE)
                accepted = torch.zeros(B, dtype=torch.bool)
                for _ in range(int(max_halvings) + 1):
                    trial = v + alpha[:, None] * dv
                    jb_t, jo_t, st_t = self.cost_terms(trial)
                    J_t = jb_t + jo_t
                    ok = torch.isfinite(J_t) & (J_t <= J) & ~accepted
                    v = torch.where(ok[:, None], trial, v)
                    J = torch.where(ok, J_t, J)
                    jb, jo = torch.where(ok, jb_t, jb), torch.where(ok, jo_t, jo)
                    states = torch.where(ok[:, None, None], st_t, states)
                    accepted |= ok
                    if bool(accepted.all()):
                        break
                    alpha = torch.where(accepted, alpha, 0.5 * alpha)
                steps.append(torch.where(accepted, alpha, torch.zeros_like(alpha)))
                costs.append(J)
                # converged everywhere (or stuck): the remaining outer loops would change nothing
                if not bool(((steps[-1][:, None] * dv).norm(dim=-1) > converged * (1 + v.norm(dim=-1))).any()):
                    break
        return WindowResult(self.x0(v), states, torch.stack(costs), jb, jo, inner_its, len(steps),
                            torch.stack(steps), hessian)


def analysis_covariance(window: Window, x0, rows=None) -> torch.Tensor:
    """(B, d, d) Gauss–Newton analysis-error covariance at the window start, U (I + UᵀGᵀGU/σ²)⁻¹ Uᵀ, with G
    linearized at x₀ (the analysis): the inverse Hessian of J in x₀ coordinates."""
    x0 = as_tensor(x0)
    rows = observed_rows(window.mask) if rows is None else rows
    _, J = observed_jacobian(window.system, x0, window.L, rows)
    m_rows = window.mask[:, rows[0], rows[1]]
    GU = (m_rows[..., None] * J) @ window.U
    d = x0.shape[-1]
    H = torch.eye(d, dtype=DTYPE) + GU.transpose(-1, -2) @ GU / window.sigma_y ** 2
    L_, info = torch.linalg.cholesky_ex(H)
    Hinv = torch.cholesky_inverse(L_)
    cov = window.U @ Hinv @ window.U.T
    bad = info != 0
    if bool(bad.any()):
        cov = torch.where(bad[:, None, None], torch.full_like(cov, float("nan")), cov)
    return 0.5 * (cov + cov.transpose(-1, -2))


def propagate_covariance(system: System, x: torch.Tensor, P: torch.Tensor, steps: int):
    """(x_k, M′ P M′ᵀ) after `steps` model steps from x with covariance P (tangent-linear, no model error).

    The one-step Jacobian comes from autograd (reverse pass through d copies of each state)."""
    B, d = x.shape
    eye_rows = (torch.zeros(d, dtype=torch.long), torch.arange(d))
    for _ in range(int(steps)):
        states, J = observed_jacobian(system, x, 1, eye_rows)  # J[b, i] = ∂ step(x)_i / ∂x
        P = J @ P @ J.transpose(-1, -2)
        P = 0.5 * (P + P.transpose(-1, -2))
        x = states[:, 0]
    return x, P
