"""The twin experiment, metrics, tuning tables and the command line."""
import json

import numpy as np
import pytest

from daviz import cli
from daviz.experiment import LOST_TRACK_WINDOW, TwinExperiment, climatology, memory_estimate
from daviz.filters.base import EnsembleFilter
from daviz.filters import make_filter
from daviz.metrics import average_rrmse, relative_improvement, rrmse, rrmse_std
from daviz.seeding import stream
from daviz.systems import get_system
from daviz.tuning import save_tuned, sweep, tuned_params


def l96_filters(*names, **kw):
    return {n: make_filter(n, "l96", 1.0, inflation=1.05, radius=2.0) for n in names}


def test_rrmse_is_eq_5_2():
    truth = np.ones((3, 1, 4))  # ‖v†‖ = 2 at each of 3 times
    est = truth + np.array([0.0, 1.0, 2.0])[:, None, None] / 2  # errors 0, 1, 2
    assert rrmse(est, truth)[0] == pytest.approx(3 / 6)
    assert average_rrmse([0.1, 0.3, np.nan]) == pytest.approx(0.2)
    assert rrmse_std([0.1, 0.3]) == pytest.approx(0.1)
    assert relative_improvement(0.2, 0.15) == pytest.approx(0.25)


def test_running_rrmse_matches_the_metric():
    exp = TwinExperiment("l96", 1.0, 10, l96_filters("esrf"), trajectories=3, seed=2)
    means, truths = [], []
    for _ in range(20):
        exp.step()
        means.append(exp.mean("esrf"))
        truths.append(exp.truth)
    assert np.allclose(exp.running_rrmse()["esrf"], rrmse(np.array(means), np.array(truths)))


def test_seeds_are_reproducible_and_streams_independent():
    a = TwinExperiment("l96", 1.0, 10, l96_filters("enkf", "letkf"), trajectories=2, seed=5)
    b = TwinExperiment("l96", 1.0, 10, l96_filters("enkf", "letkf"), trajectories=2, seed=5)
    c = TwinExperiment("l96", 1.0, 10, l96_filters("letkf"), trajectories=2, seed=5)  # one filter fewer
    for _ in range(10):
        for e in (a, b, c):
            e.step()
    assert np.array_equal(a.states["enkf"], b.states["enkf"])  # bit-identical
    assert np.array_equal(a.truth, c.truth) and np.array_equal(a.observation, c.observation)
    assert np.array_equal(a.states["letkf"], c.states["letkf"])  # the EnKF's noise did not leak
    d = TwinExperiment("l96", 1.0, 10, {}, trajectories=2, seed=5, purpose="tune")
    assert not np.allclose(d.truth, a.truth)  # tuning trajectories differ from test ones
    assert not np.array_equal(stream(5, "test", "truth").random(4), stream(5, "tune", "truth").random(4))


def test_replicas_share_truth_and_observations():
    exp = TwinExperiment("l96", 1.0, 5, {}, trajectories=2, seed=0, replicas=3)
    exp.step()
    assert exp.truth.shape == (6, 40)
    assert np.array_equal(exp.truth[:2], exp.truth[4:]) and np.array_equal(exp.observation[:2], exp.observation[2:4])


def test_divergence_is_flagged_and_the_rest_goes_on():
    exp = TwinExperiment("l96", 1.0, 10, l96_filters("enkf", "esrf"), trajectories=3, seed=0)
    exp.step()
    exp.states["esrf"][1] = np.nan  # trajectory 1 of the ESRF blows up
    for _ in range(5):
        exp.step()
    assert exp.diverged["esrf"].tolist() == [False, True, False]
    assert not exp.diverged["enkf"].any()
    rr = exp.running_rrmse()
    assert np.isnan(rr["esrf"][1]) and np.isfinite(rr["esrf"][[0, 2]]).all() and np.isfinite(rr["enkf"]).all()
    assert np.isfinite(exp.states["esrf"]).all()  # frozen at a finite value, the batch keeps running


def test_a_filter_that_explodes_does_not_crash_the_run():
    # No inflation, no localization, N=5 on L96 with huge initial spread: the ensemble runs away.
    f = {"esrf": make_filter("esrf", "l96", 1.0), "big": make_filter("esrf", "l96", 1.0, inflation=50.0)}
    exp = TwinExperiment("l96", 1.0, 5, f, trajectories=2, seed=0)
    exp.run(30)
    assert exp.diverged["big"].all() and not exp.diverged["esrf"].all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(sigma_y=0.0), "sigma_y"), (dict(N=1), "N=1"), (dict(trajectories=0), "trajectories"),
    (dict(system="l99"), "l99"),
])
def test_bad_experiment_arguments(kwargs, match):
    args = dict(system="l96", sigma_y=1.0, N=10, filters={}, trajectories=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TwinExperiment(**args)


def test_huge_ensembles_are_refused_before_allocating(monkeypatch):
    with pytest.raises(ValueError, match=r"N=10000000 with 64 trajectories needs about .* GiB, more than"):
        TwinExperiment("l96", 1.0, 10_000_000, l96_filters("letkf"), trajectories=64)
    # The estimate grows with what each filter keeps: N x N for the IEnKF, local problems for the LETKF.
    assert memory_estimate("l96", 100, 8, ["ienkf"]) > memory_estimate("l96", 100, 8, ["esrf"])
    assert memory_estimate("l96", 100, 8, ["letkf"]) > memory_estimate("l96", 100, 8, ["esrf"])
    monkeypatch.setenv("DAVIZ_MAX_MEMORY_GB", "100")
    TwinExperiment("l96", 1.0, 10, l96_filters("letkf"), trajectories=2)  # a normal run fits


def test_climatology_levels():
    """Predicting the climatological mean gives these R-RMSEs: the bar a filter must beat."""
    assert climatology("l63")["rrmse"] == pytest.approx(0.50, abs=0.02)
    assert climatology("l96")["rrmse"] == pytest.approx(0.84, abs=0.02)
    assert climatology("l96")["mean"].mean() == pytest.approx(2.3, abs=0.2)  # L96 F=8: mean ~2.3 per component
    assert climatology("l96") is climatology("l96")  # computed once


class Scripted(EnsembleFilter):
    """A test filter whose analysis is the truth plus a chosen offset (it peeks at the experiment)."""

    name = "scripted"

    def __init__(self, system, offsets):
        super().__init__(system, 1.0)
        self.offsets, self.exp = offsets, None

    def cycle(self, E, y, rng):
        offset = self.offsets[self.exp.cycle - 1]  # the experiment counts the cycle before the filters run
        return self.exp.truth[:, None, :] + offset + 0.01 * rng.standard_normal(E.shape)


def test_lost_track_needs_a_full_window_above_climatology():
    K = 10
    # cycles 1-14: offset 10 per component (far worse than climatology); 15-40: almost exact.
    system = get_system("l96")
    f = Scripted(system, [10.0] * 14 + [0.0] * 26)
    exp = TwinExperiment(system, 1.0, 5, {"s": f}, trajectories=2, lost_track_window=K)
    f.exp = exp
    seen = []
    for _ in range(40):
        exp.step()
        seen.append((exp.cycle, bool(exp.lost_track("s").all()), bool(exp.lost_track("s", ever=True).all())))
    assert all(not now for c, now, _ in seen if c < K)  # never before K cycles, however bad
    assert all(now for c, now, _ in seen if K <= c <= 14)  # a full window of bad cycles
    # Recovering: the window mixes old bad and new good cycles until it falls below climatology.
    assert not seen[-1][1] and seen[-1][2]  # no longer lost now, but it did lose track
    assert np.isfinite(exp.window_rrmse("s")).all() and exp.window_rrmse("s").max() < 0.01
    assert not exp.diverged["s"].any()


def test_letkf_without_localization_loses_track_and_tuned_letkf_does_not():
    """The issue's case: LETKF without localization at N=5 on L96 stays finite but worse than climatology."""
    tuned5, tuned20 = tuned_params("l96", "letkf", 5, 1.0), tuned_params("l96", "letkf", 20, 1.0)
    # Which of these trajectories blow up to NaN is chaotic: it changed with the machine's BLAS (2 of 8 alive
    # on one machine, enough on another), so 16 trajectories leave a margin (12 alive here; 5-12 over seeds 0-2).
    bad = TwinExperiment("l96", 1.0, 5, {"letkf": make_filter("letkf", "l96", 1.0, tuned5["inflation"], None)},
                         trajectories=16, seed=0)
    rr = bad.run(300)["letkf"]
    alive = ~bad.diverged["letkf"]
    assert alive.sum() >= 4  # enough finite trajectories for the test to mean something
    assert (rr[alive] > 1.1).all()  # the issue measured 1.29 over 1500 cycles
    assert bad.lost_track("letkf")[alive].all() and bad.lost_track("letkf", ever=True)[alive].all()
    assert not bad.lost_track("letkf")[~alive].any()  # diverged is counted apart
    good = TwinExperiment("l96", 1.0, 20, {"letkf": make_filter("letkf", "l96", 1.0, tuned20["inflation"],
                                                                tuned20["radius"])}, trajectories=8, seed=0)
    good.run(300)
    assert good.lost_track_window == LOST_TRACK_WINDOW == 100
    assert not good.lost_track("letkf", ever=True).any() and not good.diverged["letkf"].any()
    assert (good.window_rrmse("letkf") < 0.6 * good.climatology_level).all()


def test_sweep_finds_the_best_grid_point():
    points = [(1.0, 2.0), (1.1, 2.0), (3.0, 2.0)]  # inflation 3 is absurd
    res = sweep("l96", "letkf", 10, 1.0, trajectories=2, cycles=30, workers=2, points=points)
    assert res["best"] != (3.0, 2.0) and res["best_score"] == min(res["scores"])
    # The batched sweep scores each point as a standalone run on the tuning trajectories would.
    f = make_filter("letkf", "l96", 1.0, inflation=points[1][0], radius=points[1][1])
    alone = TwinExperiment("l96", 1.0, 10, {"letkf": f}, trajectories=2, purpose="tune").run(30)["letkf"]
    assert res["scores"][1] == pytest.approx(np.mean(alone), rel=0.2)


def test_tuned_table_lookup(tmp_path):
    save_tuned("l96", "letkf", 10, 1.0, 1.1, 2.0, 0.4, {}, directory=tmp_path)
    save_tuned("l96", "letkf", 40, 1.0, 1.02, 4.0, 0.3, {}, directory=tmp_path)
    assert tuned_params("l96", "letkf", 12, 0.9, directory=tmp_path)["radius"] == 2.0
    assert tuned_params("l96", "letkf", 100, 1.0, directory=tmp_path)["inflation"] == 1.02
    assert tuned_params("ks", "letkf", 10, 1.0, directory=tmp_path)["source"].startswith("default")
    assert tuned_params("l63", "letkf", 10, 1.0, directory=tmp_path)["radius"] is None


def test_cli_evaluate_writes_json(tmp_path, capsys):
    out = tmp_path / "out.json"
    code = cli.main(["evaluate", "--system", "l63", "--filters", "enkf,esrf", "--N", "5", "--trajectories", "2",
                     "--cycles", "20", "--json", str(out), "--quiet"])
    assert code == 0
    rows = json.loads(out.read_text())
    assert {r["filter"] for r in rows} == {"enkf", "esrf"}
    keys = {"system", "filter", "N", "sigma_y", "trajectories", "cycles", "rrmse_mean", "rrmse_std", "diverged",
            "params", "seconds"}
    assert all(keys <= set(r) for r in rows) and all(0 < r["rrmse_mean"] < 1 for r in rows)
    assert "R-RMSE" in capsys.readouterr().out


def test_cli_rejects_bad_input(capsys):
    assert cli.main(["evaluate", "--N", "1"]) == 2
    assert cli.main(["evaluate", "--filters", "kalmann"]) == 2
    assert cli.main(["evaluate", "--system", "l96", "--N", "5", "--trajectories", "1", "--cycles", "2",
                     "--filters", "esrf", "--inflation", "0.5", "--quiet"]) == 2
    assert "inflation" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["l63", "l96", "ks"])
def test_shipped_climatology_table_matches_a_fresh_free_run(name):
    """systems/climatology.json spares the app seconds per system at start-up; it must stay what the recipe gives."""
    from daviz.experiment import _free_run_climatology
    from daviz.systems import get_system

    shipped = climatology(name)
    fresh = _free_run_climatology(get_system(name), 16, 2000)
    assert shipped["rrmse"] == pytest.approx(fresh["rrmse"], rel=1e-9)
    np.testing.assert_allclose(shipped["mean"], fresh["mean"], rtol=1e-9, atol=1e-12)


def test_a_remembered_initial_truth_continues_exactly_like_a_fresh_one():
    from daviz import experiment as ex
    from daviz.filters import make_filter

    def run():
        exp = TwinExperiment("l63", 1.0, 5, {"enkf": make_filter("enkf", "l63", 1.0, inflation=1.02)}, seed=123)
        exp.run(20)
        return exp.truth.copy(), exp.mean("enkf").copy()

    ex._initial_truths.clear()
    first = run()  # burn-in computed
    assert len(ex._initial_truths) == 1
    second = run()  # burn-in remembered
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
