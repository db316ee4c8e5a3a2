"""Filters against exact answers: the Kalman update, ETKF equivalences, the exact Kalman filter."""
from dataclasses import replace

import numpy as np
import pytest

from daviz.experiment import TwinExperiment
from daviz.filters import make_filter
from daviz.filters.enkf import observation_perturbations, perturbed_obs_analysis
from daviz.filters.localization import gaspari_cohn
from daviz.systems import get_system

L96 = get_system("l96")


def forecast_ensemble(B=3, N=15, seed=0):
    rng = np.random.default_rng(seed)
    truth = L96.initial_truth(rng, B)
    E = truth[:, None, :] + rng.normal(0, 1.5, size=(B, N, L96.dim))
    y = L96.observe(truth) + rng.standard_normal((B, L96.obs_dim))
    return E, y


def kalman_from_sample(E, y, sigma_y):
    """Exact Kalman update of the ensemble's sample mean and covariance."""
    H = np.eye(L96.dim)[L96.obs_idx]
    means, covs = [], []
    for Eb, yb in zip(E, y):
        m, P = Eb.mean(0), np.cov(Eb.T)
        K = P @ H.T @ np.linalg.inv(H @ P @ H.T + sigma_y**2 * np.eye(len(H)))
        means.append(m + K @ (yb - H @ m))
        covs.append((np.eye(L96.dim) - K @ H) @ P)
    return np.array(means), np.array(covs)


def test_etkf_equals_kalman_update_of_sample_statistics():
    E, y = forecast_ensemble()
    Ea = make_filter("esrf", L96, 0.7).analysis(E, y, None)
    m, P = kalman_from_sample(E, y, 0.7)
    assert np.abs(Ea.mean(1) - m).max() < 1e-10
    assert np.abs(np.array([np.cov(e.T) for e in Ea]) - P).max() < 1e-10


@pytest.mark.parametrize("N", [5, 40])  # fewer and more members than observations
def test_letkf_with_infinite_radius_equals_etkf(N):
    E, y = forecast_ensemble(N=N)
    rng = np.random.default_rng(0)
    etkf = make_filter("esrf", L96, 1.0).analysis(E, y, rng)
    assert np.abs(make_filter("letkf", L96, 1.0, radius=np.inf).analysis(E, y, rng) - etkf).max() < 1e-10
    assert np.abs(make_filter("letkf", L96, 1.0, radius=None).analysis(E, y, rng) - etkf).max() < 1e-10


def test_letkf_localization_only_uses_nearby_observations():
    E, y = forecast_ensemble(B=1)
    letkf = make_filter("letkf", L96, 1.0, radius=1.0)
    y2 = y.copy()
    y2[0, 5] += 10.0  # observation at grid point 20
    change = np.abs(letkf.analysis(E, y2, None) - letkf.analysis(E, y, None)).max(axis=1)[0]
    support = 2 * 1.0 * np.sqrt(10 / 3)
    far = np.minimum(np.abs(np.arange(40) - 20), 40 - np.abs(np.arange(40) - 20)) >= support
    assert np.all(change[far] == 0) and change[20] > 0.1


def test_ienkf_equals_etkf_on_a_linear_model():
    linear = replace(get_system("linear"), model_noise_std=0.0)
    rng = np.random.default_rng(3)
    E = rng.standard_normal((4, 8, linear.dim))
    y = rng.standard_normal((4, linear.obs_dim))
    expected = make_filter("esrf", linear, 1.0).analysis(linear.step(E), y, rng)
    assert np.abs(make_filter("ienkf", linear, 1.0).cycle(E, y, rng) - expected).max() < 1e-10


@pytest.mark.parametrize("tol, most", [(1e-5, 6.0), (1e-300, 11.0)])
def test_ienkf_tolerance_is_relative_to_ensemble_size(tol, most):
    """DAPPER's wtol: stop once |dw|^2 < tol N. On a tracked L63 run that takes a few iterations;
    a tolerance nothing meets takes all 10, plus the forecast of the smoothed ensemble."""
    f = make_filter("ienkf", "l63", 1.0, inflation=1.05, tol=tol)
    exp = TwinExperiment("l63", 1.0, 10, {"ienkf": f}, trajectories=4, seed=0)
    exp.run(20)
    before = f.forecasts
    exp.run(30)
    per_cycle = (f.forecasts - before) / (4 * 30)
    assert per_cycle <= most and (per_cycle == 11.0) == (most == 11.0)
    assert np.all(exp.running_rrmse()["ienkf"] < 0.2)


def test_enkf_perturbed_observations_match_kalman_in_expectation():
    E, y = forecast_ensemble(B=1, N=10)
    draws = 4000
    Eb, yb = np.repeat(E, draws, axis=0), np.repeat(y, draws, axis=0)
    Ea = make_filter("enkf", L96, 1.0).analysis(Eb, yb, np.random.default_rng(7))
    m, P = kalman_from_sample(E, y, 1.0)
    # Centred perturbations make the analysis mean exact for every draw ...
    assert np.abs(Ea.mean(1) - m[0]).max() < 1e-10
    # ... and the sample covariance right on average: Monte Carlo error ~ 1/sqrt(4000), allow 5%.
    A = Ea - Ea.mean(1, keepdims=True)
    P_mean = np.einsum("bni,bnj->ij", A, A) / (draws * 9)
    assert np.linalg.norm(P_mean - P[0]) / np.linalg.norm(P[0]) < 0.05


def test_enkf_with_unit_localization_is_the_unlocalized_update():
    E, y = forecast_ensemble()
    D = observation_perturbations(np.random.default_rng(0), *E.shape[:2], L96.obs_dim, 1.0)
    ones_vh, ones_hh = np.ones((L96.dim, L96.obs_dim)), np.ones((L96.obs_dim,) * 2)
    a = perturbed_obs_analysis(E, y, L96.obs_idx, 1.0, D)
    b = perturbed_obs_analysis(E, y, L96.obs_idx, 1.0, D, ones_vh, ones_hh)
    assert np.abs(a - b).max() < 1e-12


def test_gaspari_cohn_shape():
    d = np.linspace(0, 10, 101)
    w = gaspari_cohn(d, 2.0)
    assert w[0] == 1 and np.all(np.diff(w) <= 1e-12) and w[d >= 2 * 2 * np.sqrt(10 / 3)].max() == 0
    assert np.all(gaspari_cohn(d, np.inf) == 1)


@pytest.mark.parametrize("name", ["enkf", "esrf", "letkf", "ienkf"])
def test_filters_track_the_exact_kalman_filter(name):
    linear = get_system("linear")
    filters = {"kalman": make_filter("kalman", linear, 1.0), name: make_filter(name, linear, 1.0)}
    exp = TwinExperiment(linear, 1.0, 40, filters, trajectories=32, seed=1)
    gap, err_kf = [], []
    for _ in range(300):
        exp.step()
        gap.append(np.linalg.norm(exp.mean(name) - exp.mean("kalman"), axis=1))
        err_kf.append(np.linalg.norm(exp.mean("kalman") - exp.truth, axis=1))
    gap, err_kf = np.mean(gap[50:]), np.mean(err_kf[50:])
    rr = exp.running_rrmse()
    # With N=40 > d=10 the ensemble mean stays close to the exact posterior mean, and the errors agree.
    # Perturbed observations add sampling noise to the mean, so the stochastic EnKF sits further off.
    assert gap < (0.6 if name == "enkf" else 0.35) * err_kf, (gap, err_kf)
    assert abs(rr[name].mean() / rr["kalman"].mean() - 1) < 0.1


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="sigma_y"):
        make_filter("letkf", L96, 0.0)
    with pytest.raises(ValueError, match="radius"):
        make_filter("letkf", L96, 1.0, radius=-1.0)
    with pytest.raises(ValueError, match="inflation"):
        make_filter("enkf", L96, 1.0, inflation=0.5)
    with pytest.raises(ValueError, match="'foo'"):
        make_filter("foo", L96, 1.0)
    E, y = forecast_ensemble()
    with pytest.raises(ValueError, match=r"\(B, N, 40\)"):
        make_filter("esrf", L96, 1.0).analysis(E[..., :30], y, None)
    with pytest.raises(ValueError, match="N=1"):
        make_filter("esrf", L96, 1.0).analysis(E[:, :1], y, None)
