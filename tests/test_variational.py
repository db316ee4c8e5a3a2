"""Strong-constraint incremental 4D-Var: exactness on the linear-Gaussian system, TL/adjoint/gradient checks,
robustness and cycling. Deterministic (fixed seeds), a few seconds in all."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from daviz.experiment import TwinExperiment
from daviz.filters.kalman import KalmanFilter
from daviz.systems import get_system
from daviz.variational.background import background_covariance, climatological_covariance, condition_number, shrink
from daviz.variational.experiment import WindowEndExperiment
from daviz.variational.filter import FourDVar
from daviz.variational.fourdvar import Window, observed_rows, tangent_linear, window_states, jacobian_linearization

torch.set_num_threads(1)


def _window(name, L=4, B=3, seed=0, B_scale=0.05, sigma_y=1.0, bg_err=0.5):
    """A window problem with truth on the attractor, the system's own observation pattern."""
    system = get_system(name)
    rng = np.random.default_rng(seed)
    truth0 = system.initial_truth(rng, B)
    truth = window_states(system, truth0, L)
    mask = np.zeros((L, system.dim))
    mask[:, system.obs_idx] = 1.0
    Y = (truth + sigma_y * rng.standard_normal(truth.shape)) * mask
    Bm = background_covariance(system, B_scale)
    w, V = np.linalg.eigh(Bm)
    U = (V * np.sqrt(w)) @ V.T
    xb = truth0 + bg_err * rng.standard_normal(truth0.shape)
    return Window(system, xb, Y, mask, U, sigma_y), truth0, truth


# ------------------------------------------------------------------ B
@pytest.mark.parametrize("name", ["l63", "l96"])
def test_background_covariance_is_spd_well_conditioned_and_scaled(name):
    C = climatological_covariance(name)["cov"]
    d = len(C)
    Cs = shrink(C, 0.1)
    assert np.all(np.linalg.eigvalsh(Cs) >= 0.1 * np.trace(C) / d * (1 - 1e-12))  # the shrinkage floor
    assert condition_number(Cs) <= 1 + 9 * np.linalg.eigvalsh(C)[-1] / (np.trace(C) / d)
    np.testing.assert_allclose(background_covariance(name, 0.3), 0.3 * Cs)
    if get_system(name).periodic:  # circulant: invariant under a shift of both indices
        np.testing.assert_allclose(np.roll(np.roll(C, 1, 0), 1, 1), C, atol=1e-12)
    with pytest.raises(ValueError):
        background_covariance(name, 0.0)


# ------------------------------------------------------------------ exactness on the linear system
@pytest.mark.parametrize("mode", ["jacobian", "tangent"])
def test_linear_gaussian_window_end_equals_kalman_filter_and_start_equals_smoother(mode):
    """Strong constraint = no model noise: on the linear system (σ_v set to 0) one Gauss–Newton loop with CG run to
    convergence gives exactly the Kalman filter's mean and covariance at the window end (tolerance 1e-9 relative),
    and at the window start the smoother's mean A⁻ᴸ m_L."""
    system = dataclasses.replace(get_system("linear"), model_noise_std=0.0)
    L, B, sigma_y = 4, 5, 0.7
    f = FourDVar(system, sigma_y, window=L, outer=1, inner=50, tol=1e-14, B_scale=0.8, linearization=mode)
    kf = KalmanFilter(system, sigma_y)
    rng = np.random.default_rng(3)
    truth = rng.standard_normal((B, system.dim))
    xb = truth + rng.multivariate_normal(np.zeros(system.dim), f.B, size=B)
    state, kstate = f.state_from(xb), (xb.copy(), f.B.copy())
    for j in range(L):
        truth = system.step(truth)
        y = truth[:, system.obs_idx] + sigma_y * rng.standard_normal((B, system.obs_dim))
        assert not f.at_window_end(state)
        state, kstate = f.cycle(state, y, None), kf.cycle(kstate, y, None)
    assert f.at_window_end(state)
    m, P = kstate
    scale = np.abs(m).max()
    np.testing.assert_allclose(f.mean(state), m, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(f.covariance(state), np.broadcast_to(P, (B,) + P.shape), rtol=0, atol=1e-9 * np.abs(P).max())
    np.testing.assert_allclose(f.spread(state), np.broadcast_to(np.sqrt(np.diag(P)), m.shape), rtol=1e-9)
    smoothed0 = m @ np.linalg.matrix_power(np.linalg.inv(system.A), L).T
    np.testing.assert_allclose(state.x_cov0, smoothed0, rtol=0, atol=1e-9 * scale)
    assert state.stats["inner_mean"] <= L * system.obs_dim + 1  # CG: at most rank(GᵀG) + 1 iterations


def test_linear_window_end_with_one_cg_iteration_is_not_kalman():
    system = dataclasses.replace(get_system("linear"), model_noise_std=0.0)
    L, B, sigma_y = 4, 2, 0.7
    rng = np.random.default_rng(1)
    f = FourDVar(system, sigma_y, window=L, outer=1, inner=1, B_scale=0.8)
    kf = KalmanFilter(system, sigma_y)
    xb = rng.standard_normal((B, system.dim))
    state, kstate = f.state_from(xb), (xb.copy(), f.B.copy())
    truth = xb + rng.standard_normal(xb.shape)
    for _ in range(L):
        truth = system.step(truth)
        y = truth[:, system.obs_idx] + sigma_y * rng.standard_normal((B, system.obs_dim))
        state, kstate = f.cycle(state, y, None), kf.cycle(kstate, y, None)
    assert np.abs(f.mean(state) - kstate[0]).max() > 1e-3


# ------------------------------------------------------------------ tangent-linear, adjoint, gradient
@pytest.mark.parametrize("name", ["l63", "l96", "linear"])
def test_adjoint_dot_product(name):
    """⟨G δx, w⟩ = ⟨δx, Gᵀ w⟩ to rounding, for the matrix-free TL/adjoint pair and the explicit-Jacobian pair."""
    win, truth0, _ = _window(name, L=5, B=3)
    x0 = torch.as_tensor(truth0)
    gen = torch.Generator().manual_seed(0)
    dx = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    w = torch.randn((3, 5, win.system.dim), generator=gen, dtype=torch.float64)
    lin = tangent_linear(win.system, x0, 5)
    lhs, rhs = (lin.tl(dx) * w).sum(), (dx * lin.ad(w)).sum()
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), abs(rhs))
    full = torch.ones(5, win.system.dim)
    jl = jacobian_linearization(win.system, x0, 5, observed_rows(full))
    lhs_j, rhs_j = (jl.tl(dx) * w).sum(), (dx * jl.ad(w)).sum()
    assert abs(lhs_j - rhs_j) <= 1e-12 * max(abs(lhs_j), abs(rhs_j))
    # both TLs agree with torch's forward-mode jvp (an independent implementation)
    _, jvp = torch.func.jvp(lambda x: window_states(win.system, x, 5), (x0,), (dx,))
    np.testing.assert_allclose(lin.tl(dx).numpy(), jvp.numpy(), rtol=1e-10, atol=1e-10 * float(jvp.abs().max()))
    np.testing.assert_allclose(jl.tl(dx).numpy(), jvp.numpy(), rtol=1e-10, atol=1e-10 * float(jvp.abs().max()))


@pytest.mark.parametrize("name", ["l63", "l96"])
def test_tangent_linear_against_finite_differences(name):
    """‖M(x+εδx) − M(x) − ε M′δx‖ / ‖ε M′δx‖ is O(ε): small, and 10x smaller when ε is 10x smaller."""
    win, truth0, _ = _window(name, L=4, B=2)
    x0 = torch.as_tensor(truth0)
    dx = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tl = tangent_linear(win.system, x0, 4).tl(dx)
    base = window_states(win.system, x0, 4)
    ratios = []
    for eps in (1e-3, 1e-4):
        diff = window_states(win.system, x0 + eps * dx, 4) - base
        ratios.append(float((diff - eps * tl).norm() / (eps * tl).norm()))
    assert ratios[1] < 1e-3
    assert 0.05 < ratios[1] / ratios[0] < 0.2


@pytest.mark.parametrize("name", ["l63", "l96"])
def test_gradient_against_finite_differences(name):
    """The autograd gradient of the nonlinear 4D-Var cost matches central differences in random directions
    (relative error < 1e-6), and the incremental machinery's right-hand side is exactly −∇J."""
    win, _, _ = _window(name, L=5, B=2, bg_err=1.0)
    gen = torch.Generator().manual_seed(2)
    v = 0.3 * torch.randn(win.xb.shape, generator=gen, dtype=torch.float64)
    g = win.gradient(v)
    for _ in range(3):
        u = torch.randn(v.shape, generator=gen, dtype=torch.float64)
        u /= u.norm(dim=-1, keepdim=True)
        eps = 1e-5
        fd = (win.cost(v + eps * u) - win.cost(v - eps * u)) / (2 * eps)
        an = (g * u).sum(-1)
        assert torch.all((fd - an).abs() <= 1e-6 * an.abs().clamp_min(1e-3)), (fd, an)
    for mode in ("tangent", "jacobian"):
        lin = win.linearize(v, mode)
        with torch.no_grad():
            rhs = -v + lin.ad(win.mask * win.mask * (win.Y - lin.states)) @ win.U / win.sigma_y ** 2
        np.testing.assert_allclose(rhs.numpy(), -g.numpy(), rtol=1e-10, atol=1e-10 * float(g.abs().max()))


# ------------------------------------------------------------------ the solver
def test_modes_agree_cost_decreases_and_beats_background_on_l96():
    win, truth0, truth = _window("l96", L=4, B=4, B_scale=0.05, bg_err=0.7)
    a = win.solve(outer=3, inner=40, mode="jacobian")
    b = win.solve(outer=3, inner=40, mode="tangent")
    np.testing.assert_allclose(a.x0.numpy(), b.x0.numpy(), rtol=0, atol=1e-7)
    assert torch.all(a.cost[1:] <= a.cost[:-1])  # the line search never accepts an increase
    assert float(a.cost[-1].mean()) < 0.6 * float(a.cost[0].mean())
    err_b = np.linalg.norm(win.xb.numpy() - truth0, axis=-1)
    err_a = np.linalg.norm(a.x0.numpy() - truth0, axis=-1)
    assert err_a.mean() < err_b.mean()
    s = a.summary()
    assert s["outer"] == 3 and s["inner_mean"] > 3 and np.isclose(s["cost_final"], s["cost_b"] + s["cost_o"])


def test_non_finite_trajectory_stays_apart():
    win, _, _ = _window("l63", L=4, B=3)
    ref = win.solve(outer=2, inner=10)
    xb = win.xb.clone()
    xb[1] = float("nan")
    bad = Window(win.system, xb, win.Y, win.mask, win.U, win.sigma_y).solve(outer=2, inner=10)
    assert torch.isnan(bad.x0[1]).all()
    np.testing.assert_allclose(bad.x0[[0, 2]].numpy(), ref.x0[[0, 2]].numpy(), rtol=1e-12)


def test_first_guess_is_used():
    win, truth0, _ = _window("l63", L=5, B=2, bg_err=2.0)
    exact = win.solve(outer=4, inner=20)
    warm = win.solve(outer=1, inner=20, first_guess=exact.x0.numpy())
    assert float(warm.cost[0].max()) <= float(exact.cost[-1].max()) * (1 + 1e-12)  # starts where the other ended


# ------------------------------------------------------------------ cycling in the engine
def test_cycling_4dvar_in_twin_experiment_tracks_l63():
    system = get_system("l63")
    f = FourDVar(system, 1.0, window=5, outer=2, inner=10, B_scale=0.02)
    exp = WindowEndExperiment(system, 1.0, 10, {"4dvar": f}, trajectories=2, seed=0, purpose="tune")
    exp.run(60)
    end = exp.window_end_rrmse()["4dvar"]
    every = exp.running_rrmse()["4dvar"]
    assert exp.window_ends["4dvar"] == 12 and f.solves == 12
    assert np.all(end < 0.25) and np.all(np.isfinite(every))  # climatology is 0.50
    assert np.all(end < every)  # analyses beat the forecasts between them
    assert set(f.last_stats) >= {"outer", "inner_mean", "cost_initial", "cost_final", "seconds"}
    sp = f.spread(exp.states["4dvar"])
    assert sp.shape == (2, 3) and np.all(np.isfinite(sp)) and np.all(sp > 0)
    # the plain engine runs it too (its R-RMSE is then that of every cycle)
    plain = TwinExperiment(system, 1.0, 10, {"4dvar": FourDVar(system, 1.0, window=5, outer=2, inner=10, B_scale=0.02)},
                           trajectories=2, seed=0, purpose="tune")
    np.testing.assert_allclose(plain.run(60)["4dvar"], every, rtol=1e-12)


def test_spread_is_lazy_and_incremental():
    system = get_system("l63")
    f = FourDVar(system, 1.0, window=3, outer=1, inner=5, B_scale=0.02)
    rng = np.random.default_rng(0)
    truth = system.initial_truth(rng, 1)
    state = f.state_from(truth + 0.1)
    spreads = []
    for _ in range(5):
        truth = system.step(truth)
        state = f.cycle(state, truth[:, system.obs_idx], None)
        spreads.append(f.spread(state))  # incremental: one step per call
    # recomputed from the window start in one go: the same numbers
    fresh = dataclasses.replace(state, cache={})
    np.testing.assert_allclose(f.spread(fresh), spreads[-1], rtol=1e-10)
    assert f.window_phase(state) == (2, 3)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        FourDVar("l63", 1.0, window=0)
    with pytest.raises(ValueError):
        FourDVar("l63", 1.0, outer=0)
    with pytest.raises(ValueError):
        FourDVar("l63", 1.0, linearization="adjoint")


def test_evaluate_command_runs_4dvar_with_the_filters_json_keys(tmp_path):
    from daviz.cli import main

    out = tmp_path / "eval.json"
    assert main(["evaluate", "--system", "l63", "--filters", "4dvar,enkf", "--N", "10", "--trajectories", "2",
                 "--cycles", "8", "--quiet", "--json", str(out)]) == 0
    import json

    rows = {r["filter"]: r for r in json.loads(out.read_text())}
    assert set(rows["enkf"]) <= set(rows["4dvar"])  # the filters' keys, plus the variational extras
    var = rows["4dvar"]
    assert var["window_ends"] == 4 and var["params"]["window"] == 2 and var["params"]["inflation"] is None
    assert var["solver"]["solves"] == 4 and var["solver"]["last_window"]["outer"] >= 1
    assert 0 < var["rrmse_mean"] < 0.5 and var["rrmse_all_cycles_mean"] > 0


def test_the_methods_registry_builds_4dvar_for_the_app():
    from daviz.methods import build

    f, _ = build("4dvar", "l96", 1.0, 20, inflation=1.05, radius=3.0)  # the app passes these; they do not apply
    assert isinstance(f, FourDVar) and f.window == 3
