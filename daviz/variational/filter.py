"""Cycling 4D-Var as an engine filter: TwinExperiment, `daviz evaluate` and the explorer run it unchanged.

The engine hands a filter one observation per cycle. `FourDVar` keeps the current window's observations,
forecasts its estimate between window ends, and when the window's L-th observation arrives solves the
window (fourdvar.Window.solve) from the background x_b at the window start:

    cycle j = kL:          x_b = analysis at t_kL (the previous window's end; the first x_b is the mean of the
                           engine's initial ensemble, the same information every filter starts from)
    cycles kL+1 … kL+L−1:  estimate = forecast M(…M(x_b)) — no observation used yet, they are stored
    cycle (k+1)L:          solve the window with y_{kL+1} … y_{(k+1)L}; estimate = analysis at the window end
                           M_L(x₀ᵃ), which is also the next window's background.

So `mean` is causal (it never uses a future observation) and at window ends it is a filtering analysis,
comparable with the ensemble filters' analyses. `spread` is the linearized analysis-error standard deviation:
the inverse Gauss–Newton Hessian at the window start, U (I + UᵀGᵀGU/σ²)⁻¹ Uᵀ, carried to the current time by
the tangent-linear model (no model error); before the first window it is B itself. It is computed only
when asked for (the app asks, `evaluate` does not) and then cached, one model step per cycle.

Strong constraint: the model is taken as perfect, so the linear system's small model noise (σ_v = 0.01) is
ignored by 4D-Var (the filters add it to their forecasts).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..filters.base import EnsembleFilter
from ..systems import System, get_system
from .background import DEFAULT_SHRINKAGE, background_covariance, sqrt_and_inverse
from .fourdvar import Window, analysis_covariance, as_tensor, propagate_covariance


@dataclass
class VarState:
    """A variational method's state for a batch of B trajectories (numpy float64)."""

    x: np.ndarray  # (B, d) current estimate
    xb: np.ndarray  # (B, d) background at the current window's start
    Y: np.ndarray  # (B, L, d) this window's observations so far (zeros where not observed / not yet)
    k: int  # observations collected in the current window (0 right after a solve)
    solved: bool = False  # this cycle ended a window (the estimate is an analysis)
    # the spread, computed lazily: covariance `cov0` at `x_cov0`, `steps` model steps before now
    x_cov0: np.ndarray | None = field(default=None, repr=False)
    cov0: np.ndarray | None = field(default=None, repr=False)
    steps: int = 0
    window: Window | None = field(default=None, repr=False)  # last solved window (for its Hessian), if any
    cache: dict = field(default_factory=dict, repr=False)  # {"steps": s, "x": (B, d), "P": (B, d, d)}
    stats: dict = field(default_factory=dict)  # the last solve's iterations, costs and seconds


class VariationalFilter(EnsembleFilter):
    """Common machinery: window bookkeeping, forecast between window ends, lazy spread. Subclasses
    implement `solve_window(state, Y) -> dict` (see there)."""

    name = "variational"
    localizes = False
    scores_window_ends = True  # daviz.variational.experiment scores the window-end analyses apart

    def __init__(self, system: System, sigma_y: float, window: int = 5, B_scale: float = 0.1,
                 shrinkage: float = DEFAULT_SHRINKAGE, obs_mask=None):
        system = get_system(system) if isinstance(system, str) else system
        super().__init__(system, sigma_y, 1.0, None)
        if int(window) != window or window < 1:
            raise ValueError(f"window must be a positive integer (observation times per window), got {window!r}")
        self.window = int(window)
        self.B_scale = float(B_scale)
        self.shrinkage = float(shrinkage)
        self.B = background_covariance(system, self.B_scale, self.shrinkage)
        self.U, self.U_inv = sqrt_and_inverse(self.B)
        if obs_mask is None:
            obs_mask = np.zeros(system.dim)
            obs_mask[system.obs_idx] = 1.0
        self.obs_mask = np.asarray(obs_mask, dtype=float)  # (d,) which components each observation holds
        self.window_mask = np.broadcast_to(self.obs_mask, (self.window, system.dim)).copy()
        self.last_stats: dict = {}
        self.solves = 0
        self.solve_seconds = 0.0

    @property
    def params(self) -> dict:
        return {"inflation": None, "radius": None, "window": self.window, "B_scale": self.B_scale,
                "shrinkage": self.shrinkage}

    # ---------------------------------------------------------------- state
    def initial_state(self, E0, prior_mean, prior_std):
        xb = np.asarray(E0, dtype=float).mean(axis=1)
        B = len(xb)
        return VarState(x=xb.copy(), xb=xb.copy(), Y=np.zeros((B, self.window, self.system.dim)), k=0,
                        x_cov0=xb.copy(), cov0=np.broadcast_to(self.B, (B,) + self.B.shape).copy(), steps=0)

    def state_from(self, xb: np.ndarray, cov: np.ndarray | None = None) -> VarState:
        """A state at a window start with background xb (B, d) and background covariance `cov` (default B)."""
        xb = np.asarray(xb, dtype=float)
        cov = self.B if cov is None else np.asarray(cov, dtype=float)
        return VarState(x=xb.copy(), xb=xb.copy(), Y=np.zeros((len(xb), self.window, self.system.dim)), k=0,
                        x_cov0=xb.copy(), cov0=np.broadcast_to(cov, (len(xb),) + cov.shape[-2:]).copy())

    @staticmethod
    def mean(state: VarState) -> np.ndarray:
        return state.x

    def spread(self, state: VarState) -> np.ndarray:
        """(B, d) linearized error std of the current estimate (see the module docstring)."""
        P = self.covariance(state)
        return np.sqrt(np.clip(np.diagonal(P, axis1=-2, axis2=-1), 0.0, None))

    def covariance(self, state: VarState) -> np.ndarray:
        cache = state.cache
        if cache.get("steps") == state.steps:
            return cache["P"]
        if cache and cache["steps"] < state.steps:
            x, P, done = as_tensor(cache["x"]), as_tensor(cache["P"]), cache["steps"]
        else:
            if state.cov0 is None and state.window is not None:
                state.cov0 = analysis_covariance(state.window, state.x_cov0).numpy()
            x, P, done = as_tensor(state.x_cov0), as_tensor(state.cov0), 0
        with torch.no_grad():
            x, P = propagate_covariance(self.system, x, P, state.steps - done)
        state.cache.update(steps=state.steps, x=x.numpy(), P=P.numpy())
        return state.cache["P"]

    def window_phase(self, state: VarState) -> tuple[int, int]:
        """(observations collected in the current window, window length L); (0, L) right after a solve."""
        return state.k, self.window

    def at_window_end(self, state: VarState) -> bool:
        return bool(state.solved)

    # ---------------------------------------------------------------- cycling
    def forecast_mean(self, x: np.ndarray) -> np.ndarray:
        return self.system.step(x)

    def cycle(self, state: VarState, y: np.ndarray, rng) -> VarState:
        y = np.asarray(y, dtype=float)
        if y.shape != (len(state.x), self.system.obs_dim):
            raise ValueError(f"observations must have shape ({len(state.x)}, {self.system.obs_dim}), got {y.shape}")
        x = self.forecast_mean(state.x)
        Y = state.Y.copy()
        Y[:, state.k, :] = 0.0
        Y[:, state.k, self.system.obs_idx] = y
        k = state.k + 1
        # the cached covariance is carried over: the next spread() needs one model step more
        new = replace(state, x=x, Y=Y, k=k, solved=False, steps=state.steps + 1, cache=dict(state.cache))
        if k < self.window:
            return new
        start = time.perf_counter()
        out = self.solve_window(state, Y)
        seconds = time.perf_counter() - start
        self.solves += 1
        self.solve_seconds += seconds
        self.last_stats = {**out["stats"], "seconds": round(seconds, 4)}
        x_end = out["x_end"]
        return VarState(x=x_end, xb=x_end.copy(), Y=np.zeros_like(Y), k=0, solved=True, x_cov0=out["cov_x"],
                        cov0=out["cov"], steps=out["cov_steps"], window=out.get("window"), stats=self.last_stats)

    def solve_window(self, state: VarState, Y: np.ndarray) -> dict:
        """Solve the window from state.xb with observations Y (B, L, d); returns {"x_end": (B, d) window-end
        analysis, "cov_x", "cov", "cov_steps": the analysis covariance `cov` (B, d, d) holds at the state
        `cov_x`, `cov_steps` model steps before the window end (cov None: computed lazily from "window"),
        "window": a fourdvar.Window or None, "stats": dict}."""
        raise NotImplementedError

    def analysis(self, E, y, rng):
        raise NotImplementedError("a variational method runs whole windows: call cycle()")


class FourDVar(VariationalFilter):
    """Cycling strong-constraint incremental 4D-Var (Gauss–Newton outer loops, CG inner solves).

    Parameters (tunable, `daviz.variational.tuned`): `window` L (observation times per window), `outer`
    Gauss–Newton loops, `inner` CG iterations at most per loop, `B_scale` (B = B_scale · shrunk climatological
    covariance), `shrinkage` λ, `tol` CG's relative residual, `linearization` "jacobian" or "tangent".
    `last_stats` holds the last window's outer/inner iterations, costs (first guess, final, J_b, J_o) and time.
    """

    name = "4dvar"

    def __init__(self, system, sigma_y, window: int = 5, outer: int = 3, inner: int = 20, B_scale: float = 0.1,
                 shrinkage: float = DEFAULT_SHRINKAGE, tol: float = 1e-6, linearization: str = "jacobian",
                 obs_mask=None):
        super().__init__(system, sigma_y, window, B_scale, shrinkage, obs_mask)
        if int(outer) < 1 or int(inner) < 1 or not tol > 0:
            raise ValueError(f"need outer >= 1, inner >= 1 and tol > 0, got {outer!r}, {inner!r}, {tol!r}")
        if linearization not in ("jacobian", "tangent"):
            raise ValueError(f"linearization must be 'jacobian' or 'tangent', got {linearization!r}")
        self.outer, self.inner, self.tol, self.linearization = int(outer), int(inner), float(tol), linearization

    @property
    def params(self) -> dict:
        return {**super().params, "outer": self.outer, "inner": self.inner, "tol": self.tol,
                "linearization": self.linearization}

    def make_window(self, xb: np.ndarray, Y: np.ndarray) -> Window:
        return Window(self.system, np.nan_to_num(xb, nan=0.0, posinf=0.0, neginf=0.0), Y, self.window_mask,
                      self.U, self.sigma_y)

    def solve_window(self, state, Y, first_guess=None):
        bad = ~np.isfinite(state.xb).all(axis=-1)
        window = self.make_window(state.xb, Y)
        res = window.solve(self.outer, self.inner, self.tol, self.linearization, first_guess=first_guess)
        x0 = res.x0.numpy()
        x_end = res.states[:, -1].numpy().copy()
        x0[bad] = np.nan
        x_end[bad] = np.nan
        return {"x_end": x_end, "cov_x": x0, "cov": None, "cov_steps": self.window, "window": window,
                "stats": res.summary(), "x0": x0}


class NIDAFilter(VariationalFilter):
    """Cycling Neural Incremental DA: at each window end, the learned coarse-to-fine MAP reconstruction (nida.py)
    of the window's trajectory from the background's forecast ũ⁰ and the window's observations; its last time
    level is the analysis. `spread` at window ends is the last increment's posterior std there (the learned
    prior's MAP covariance), carried forward between window ends by the tangent-linear model like 4D-Var's."""

    name = "nida"

    def __init__(self, model, increments: int | None = None, B_scale: float = 0.1):
        super().__init__(model.system, model.sigma_y, model.config.window, B_scale)
        self.model = model
        self.increments = model.config.increments if increments is None else int(increments)
        if self.increments < 1:
            raise ValueError(f"increments must be >= 1, got {increments!r}")

    @property
    def params(self) -> dict:
        return {**super().params, "increments": self.increments}

    def reconstruct(self, xb: np.ndarray, Y: np.ndarray):
        """(u (B, T, d) numpy, end covariance (B, d, d) numpy) for backgrounds xb and window observations Y."""
        from .nida import background_trajectory

        xb = np.nan_to_num(np.asarray(xb, dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
        B, d = xb.shape
        u0 = background_trajectory(self.system, xb, self.window)
        Yfull = np.zeros_like(u0)
        Yfull[:, 1:] = Y
        mask = np.zeros((self.window + 1, d))
        mask[1:] = self.window_mask
        tens = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)
        with torch.inference_mode():
            u, cov = self.model.reconstruct(tens(u0), tens(Yfull), tens(mask), self.increments, want_end_cov=True)
        return u.double().numpy(), cov.double().numpy()

    def solve_window(self, state, Y):
        bad = ~np.isfinite(state.xb).all(axis=-1)
        u, cov = self.reconstruct(state.xb, Y)
        u[bad] = np.nan
        x_end = u[:, -1].copy()
        return {"x_end": x_end, "cov_x": x_end, "cov": cov, "cov_steps": 0, "x0": u[:, 0].copy(),
                "stats": {"increments": self.increments}}


class NIDAHybrid(NIDAFilter):
    """NIDA's reconstruction as the first guess of a few 4D-Var iterations (the paper's hybrid): the window is then
    solved by `FourDVar` (same B, background and observations) starting from NIDA's window-start state."""

    name = "nida-4dvar"

    def __init__(self, model, fourdvar: FourDVar, increments: int | None = None):
        super().__init__(model, increments, fourdvar.B_scale)
        if fourdvar.window != self.window or fourdvar.system is not self.system:
            raise ValueError("the hybrid's 4D-Var must use the NIDA model's system and window")
        self.fourdvar = fourdvar

    @property
    def params(self) -> dict:
        return {**self.fourdvar.params, "increments": self.increments}

    def solve_window(self, state, Y):
        first = super().solve_window(state, Y)
        out = self.fourdvar.solve_window(state, Y, first_guess=np.nan_to_num(first["x0"]))
        return {**out, "stats": {**out["stats"], "increments": self.increments}}
