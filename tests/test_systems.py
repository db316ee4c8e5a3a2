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


def test_ks_start_is_the_periodic_zero_mean_kassam_trefethen_state():
    ks = get_system("ks")
    x0 = ks.burn_in_start(np.random.default_rng(0), 3)
    # KS conserves the spatial mean, so the start's mean is the truth's mean forever: it must be 0
    # (the paper's misprinted cos(2x/L)(1 + sin(2x/L)) has mean 0.668 and fails here).
    assert np.abs(x0.mean(axis=1)).max() < 1e-12
    # Periodic and smooth: apart from the 1e-3 perturbation, only Fourier modes 1 and 2 are present.
    spectrum = np.abs(np.fft.rfft(x0, axis=1)) / ks.dim
    assert spectrum[:, 1:3].min() > 0.2 and spectrum[:, 3:].max() < 1e-3
    assert not np.allclose(x0[0], x0[1])  # the perturbation separates the trajectories


def test_ks_truth_keeps_zero_spatial_mean_over_a_long_run():
    ks = get_system("ks")
    x = ks.initial_truth(np.random.default_rng(1), 4)
    means = [x.mean(axis=1)]
    for _ in range(1000):
        x = ks.step(x)
        means.append(x.mean(axis=1))
    assert np.abs(means).max() < 1e-10
    assert 1.1 < x.std() < 1.5  # climatological std ≈ 1.31 (independent implementation: 1.31)


def test_ks_conserves_whatever_mean_it_starts_with():
    # Why the start matters: the k=0 mode never changes, so a non-zero start mean is never forgotten.
    ks = get_system("ks")
    x = ks.initial_truth(np.random.default_rng(2), 2) + 0.668
    for _ in range(200):
        x = ks.step(x)
    assert np.allclose(x.mean(axis=1), 0.668, atol=1e-10)


def test_ks_numpy_fast_path_is_the_generic_etdrk4_step():
    from array_api_compat import array_namespace

    ks = get_system("ks")
    x = attractor_states("ks")

    def generic(x):  # the array-API path, as torch runs it
        xp, c = array_namespace(x), ks._constants.like(x)

        def nonlinear(v):
            u = xp.fft.irfft(v, n=ks.dim, axis=-1)
            return c["g"] * xp.fft.rfft(u * u, axis=-1)

        v = xp.fft.rfft(x, axis=-1)
        for _ in range(ks.substeps):
            v = etdrk4_step(v, nonlinear, c)
        return xp.fft.irfft(v, n=ks.dim, axis=-1)

    a, b = x, x
    for _ in range(20):
        a, b = ks.step(a), generic(b)
    assert np.abs(a - b).max() < 1e-12
