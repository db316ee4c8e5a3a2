"""Integrators against known behaviour: 4th-order convergence, the L96 Lyapunov exponent,
and one code path giving the same numbers in numpy and torch."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from daviz.systems import get_system
from daviz.systems.base import periodic_index_distances
from daviz.systems.integrators import etdrk4_coefficients, etdrk4_step


def attractor_states(name, batch=4, seed=0):
    return get_system(name).initial_truth(np.random.default_rng(seed), batch)


def step_errors(system, x0, multipliers, ref_multiplier):
    ref = replace(system, substeps=system.substeps * ref_multiplier).step(x0)
    return [np.abs(replace(system, substeps=system.substeps * m).step(x0) - ref).max() for m in multipliers]


@pytest.mark.parametrize("name", ["l63", "l96"])
def test_rk4_fourth_order_convergence(name):
    errors = step_errors(get_system(name), attractor_states(name), (1, 2, 4), 64)
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    # Halving the step divides the error by 2^4 = 16 for a 4th-order scheme.
    assert all(13 < r < 19 for r in ratios), (errors, ratios)


def test_etdrk4_fourth_order_on_a_nonstiff_problem():
    # v' = -v + sin(v): the same coefficient and step functions the KS model uses.
    def solve(h, T=1.0):
        c = dict(zip(("E", "E2", "Q", "f1", "f2", "f3"), etdrk4_coefficients((-1.0,), h)))
        v = np.array([1.0])
        for _ in range(round(T / h)):
            v = etdrk4_step(v, np.sin, c)
        return v[0]

    ref = solve(1 / 4096)
    errors = [abs(solve(h) - ref) for h in (1 / 8, 1 / 16, 1 / 32)]
    assert all(14 < errors[i] / errors[i + 1] < 18 for i in range(2)), errors


def test_kuramoto_sivashinsky_converges_at_high_order():
    # On stiff KS, Cox–Matthews ETDRK4 shows the known stiff order reduction (Hochbruck & Ostermann
    # 2005) before its asymptotic 4th order: observed ratios are 9–13 (order > 3) and rising.
    errors = step_errors(get_system("ks"), attractor_states("ks"), (1, 2, 4, 8), 256)
    ratios = [errors[i] / errors[i + 1] for i in range(3)]
    assert all(r > 8 for r in ratios) and ratios[-1] > ratios[0], ratios


def test_lorenz96_leading_lyapunov_exponent():
    system = get_system("l96")
    rng = np.random.default_rng(1)
    x = attractor_states("l96", batch=8)
    eps = 1e-7
    dx = rng.standard_normal(x.shape)
    dx *= eps / np.linalg.norm(dx, axis=1, keepdims=True)
    log_growth, steps = 0.0, 1000
    for _ in range(steps):  # Benettin: renormalize the separation every observation interval
        x, y = system.step(x), system.step(x + dx)
        dist = np.linalg.norm(y - x, axis=1, keepdims=True)
        log_growth += np.log(dist[:, 0] / eps)
        dx = (y - x) * eps / dist
    exponent = log_growth.mean() / (steps * system.dt_obs)
    assert 1.5 < exponent < 1.9  # known value ≈ 1.7 for d=40, F=8


@pytest.mark.parametrize("name", ["l63", "l96", "ks", "linear"])
def test_numpy_and_torch_paths_agree(name):
    system = get_system(name)
    x = attractor_states(name)
    out_np = system.step(system.step(x))
    xt = torch.from_numpy(x)
    out_torch = system.step(system.step(xt)).numpy()
    assert np.abs(out_np - out_torch).max() < 1e-10
    assert system.step(xt.float()).dtype == torch.float32


def test_attractor_statistics_and_observations():
    l96 = get_system("l96")
    x = attractor_states("l96", batch=16)
    assert 1.5 < x.mean() < 3.5 and 2.5 < x.std() < 4.5  # L96 F=8 climatology: mean ≈ 2.3, std ≈ 3.6
    assert list(l96.obs_idx) == list(range(0, 40, 4))
    assert get_system("ks").obs_dim == 16 and get_system("l63").obs_dim == 1
    ks = attractor_states("ks", batch=4)
    assert np.all(np.abs(ks) < 6) and ks.std() > 0.5  # bounded, non-trivial chaos


def test_linear_system_is_marginally_stable():
    A = get_system("linear").A
    assert np.allclose(np.abs(np.linalg.eigvals(A)), 1.0)


def test_periodic_distances():
    D = periodic_index_distances(40)
    assert D[0, 39] == 1 and D[0, 20] == 20 and D.max() == 20 and np.all(D == D.T)


def test_unknown_system_is_named():
    with pytest.raises(ValueError, match="'l99'"):
        get_system("l99")
