"""Successive-halving tuning: it finds the optimum, never picks a diverging point, records its budget,
and tunes on trajectories disjoint from the test ones."""
import json

import numpy as np
import pytest

from daviz import cli, tuning
from daviz.experiment import TwinExperiment
from daviz.systems import get_system
from daviz.tuning import search
from daviz.tuning import (METHOD, assess, evaluate_points, grid_for, is_current, is_tuned, is_untunable,
                          lost_track_level,
                          parse_rounds, ranking, refined_points, save_tuned, successive_halving, tune_many,
                          tuned_params)

ROUNDS, FINAL = ((2, 50), (4, 100), (8, 100)), (16, 200)


def quiet(*args, **kwargs):
    pass


def toy_evaluator(truth, noise=0.002, nan_points=(), lost_points=(), calls=None):
    """R-RMSE = a smooth bowl with its minimum at `truth`, plus noise shrinking like 1/sqrt(budget)."""
    def evaluate(points, trajectories, cycles, seed):
        rng = np.random.default_rng(seed)
        if calls is not None:
            calls.append((list(points), trajectories, cycles, seed))
        out = np.empty((len(points), trajectories))
        for i, (a, r) in enumerate(points):
            base = 0.3 + 40 * (a - truth[0]) ** 2 + (0 if r is None else 0.005 * (r - truth[1]) ** 2)
            out[i] = base + noise * np.sqrt(200 / cycles) * rng.standard_normal(trajectories)
            if (a, r) in nan_points:
                out[i, 0] = np.nan  # one trajectory diverges
            if (a, r) in lost_points:
                out[i, -1] = 0.9  # one trajectory above the L96 climatological level 0.84
        return out
    return evaluate


def test_halving_keeps_the_true_best_and_refines_to_it():
    calls = []
    # The optimum (1.07, 5.0) is off the coarse grid in inflation: only the refinement can reach it.
    res = successive_halving("l96", "letkf", 10, 1.0, rounds=ROUNDS, final=FINAL, log=quiet,
                             evaluate=toy_evaluator((1.07, 5.0), calls=calls))
    assert res["status"] == "ok" and res["best"] == (1.07, 5.0)
    coarse = grid_for("l96", "letkf")
    assert len(calls[0][0]) == len(coarse)  # round 1: every grid point
    assert len(calls[1][0]) == int(np.ceil(len(coarse) / 3))  # round 2: the best third
    assert (1.07, 5.0) in calls[2][0] and (1.05, 4.5) in calls[2][0]  # refinement: finer inflation and radius
    assert calls[-1][1:3] == FINAL and len(calls[-1][0]) == tuning.DEFAULT_FINALISTS == 6
    assert len({c[3] for c in calls}) == len(calls)  # every round on fresh trajectories


def test_a_diverging_point_is_never_selected():
    # The bowl's minimum diverges on one trajectory in every round: it must lose to its neighbours.
    best = (1.1, 3.0)
    res = successive_halving("l96", "letkf", 10, 1.0, rounds=ROUNDS, final=FINAL, log=quiet,
                             evaluate=toy_evaluator(best, noise=0.0, nan_points={best}))
    assert res["status"] == "ok" and res["best"] != best and res["diverged"] == 0
    assert np.isfinite(res["rrmse"])


def test_a_point_that_loses_track_ranks_behind_every_point_that_does_not():
    a = assess(np.array([[0.1, 0.1, 0.9], [0.5, 0.5, 0.5], [0.2, np.nan, 0.2]]), level=0.84)
    assert a["lost"].tolist() == [1, 0, 0] and a["diverged"].tolist() == [0, 0, 1]
    assert ranking(a).tolist() == [1, 0, 2]  # mean 0.37 with a lost trajectory loses to mean 0.5
    best = (1.1, 3.0)
    res = successive_halving("l96", "letkf", 10, 1.0, rounds=ROUNDS, final=FINAL, log=quiet,
                             evaluate=toy_evaluator(best, noise=0.0, lost_points={best}))
    assert res["best"] != best and res["lost"] == 0


def test_a_point_that_loses_track_for_a_while_is_penalised():
    # Finite and good on average, but one trajectory lost track in some 100-cycle window.
    a = assess(np.array([[0.3, 0.3], [0.4, 0.4]]), level=0.84, lost_windows=np.array([[False, True], [False, False]]))
    assert a["lost"].tolist() == [1, 0] and ranking(a).tolist() == [1, 0]
    best = (1.1, 3.0)
    toy = toy_evaluator(best, noise=0.0)

    def evaluate(points, trajectories, cycles, seed):
        values = toy(points, trajectories, cycles, seed)
        return values, np.array([[p == best] * trajectories for p in points])

    res = successive_halving("l96", "letkf", 10, 1.0, rounds=ROUNDS, final=FINAL, log=quiet, evaluate=evaluate)
    assert res["best"] != best and res["lost"] == 0


def test_lost_windows_come_from_the_twin_experiment():
    # ESRF at N=5 on L96, no inflation: loses track within 300 cycles on some trajectories.
    values, lost = evaluate_points("l96", "esrf", 5, 1.0, [(1.0, None), (1.2, None)], trajectories=3, cycles=300,
                                   seed=0, lost_windows=True)
    from daviz.filters import make_filter
    f = make_filter("esrf", "l96", 1.0, inflation=np.repeat([1.0, 1.2], 3))  # the same batch, run by hand
    exp = TwinExperiment("l96", 1.0, 5, {"esrf": f}, trajectories=3, seed=0, purpose="tune", replicas=2)
    exp.run(300)
    assert lost.dtype == bool and lost.ravel().tolist() == exp.lost_track("esrf", ever=True).tolist()
    assert lost.any()  # the case does exercise the flag


def test_when_everything_diverges_no_point_is_chosen():
    every = set(grid_for("l63", "esrf"))
    every |= {p for c in every for p in refined_points(c, [], [])}
    evaluate = toy_evaluator((1.1, None), nan_points=every)
    res = successive_halving("l63", "esrf", 5, 1.0, rounds=ROUNDS, final=FINAL, log=quiet, evaluate=evaluate)
    assert res["status"] == "diverged" and res["best"] is None
    assert len(res["rounds"]) == 1  # nothing left to run after the first round


def test_budget_is_recorded_and_tables_stay_readable(tmp_path):
    rounds, final = ((2, 20), (2, 30)), (3, 40)
    out = tune_many("l63", "enkf", [5], [1.0], rounds=rounds, final=final, inflations=[1.0, 1.05, 1.2],
                    directory=tmp_path, log=quiet)
    entry = json.loads((tmp_path / "l63_enkf.json").read_text())["1.0"]["5"]
    assert entry["method"] == METHOD and (entry["trajectories"], entry["cycles"]) == final
    # A final round shorter than the test trajectories is not what --skip-existing keeps; one as long is.
    assert entry["lost_window"] == 100 and not is_current("l63", "enkf", 5, 1.0, tmp_path)
    save_tuned("l63", "enkf", 10, 1.0, 1.05, None, 0.05, {**entry, "cycles": get_system("l63").test_cycles},
               directory=tmp_path)
    assert is_current("l63", "enkf", 10, 1.0, tmp_path)
    assert [(r["trajectories"], r["cycles"]) for r in entry["rounds"]] == [*rounds, final]
    assert entry["trajectory_cycles"] == sum(r["points"] * r["trajectories"] * r["cycles"] for r in entry["rounds"])
    assert entry["grid_points"] > 3 and entry["cpu_seconds"] > 0 and entry["lost"] == 0
    assert 0 < entry["rrmse"] < 0.2 and entry["rrmse"] == out[0]["rrmse"]
    params = tuned_params("l63", "enkf", 5, 1.0, directory=tmp_path)
    assert params["inflation"] == entry["inflation"] and params["radius"] is None


def test_the_final_round_is_as_long_as_the_test_trajectories_unless_told():
    # Rare losses of track only show on runs as long as the test ones (KS 2000 cycles, the others 1500).
    assert tuning.final_budget("ks") == (16, 2000) and tuning.final_budget("l96") == (16, 1500)
    assert tuning.final_budget("l96", (8, None)) == (8, 1500) and tuning.final_budget("l63", (3, 40)) == (3, 40)


def test_an_untunable_setting_replaces_the_old_entry_and_a_later_success_replaces_it(tmp_path):
    save_tuned("l96", "esrf", 20, 1.0, 1.15, None, 0.9, {"cycles": 300}, directory=tmp_path)
    save_tuned("l96", "esrf", 40, 1.0, 1.1, None, 0.5, {"cycles": 1500}, directory=tmp_path)
    tuning.save_untunable("l96", "esrf", 20, 1.0, {"cycles": 1500}, directory=tmp_path)
    table = json.loads((tmp_path / "l96_esrf.json").read_text())
    assert list(table["1.0"]) == ["40"] and is_untunable("l96", "esrf", 20, 1.0, tmp_path)
    save_tuned("l96", "esrf", 20, 1.0, 1.3, None, 0.8, {"cycles": 1500}, directory=tmp_path)
    assert not is_untunable("l96", "esrf", 20, 1.0, tmp_path) and is_tuned("l96", "esrf", 20, 1.0, tmp_path)


def _record_many(directory, filter_name, count):
    for n in range(2, 2 + count):
        tuning.save_untunable("l96", filter_name, n, 1.0, {"cycles": 1}, directory=directory)


def test_two_tuners_side_by_side_keep_every_untunable_record(tmp_path):
    """Tuners of different tables share untunable.json: its read-modify-write is locked, so no record is lost."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    jobs = [ctx.Process(target=_record_many, args=(tmp_path, name, 60)) for name in ("esrf", "ienkf")]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert [job.exitcode for job in jobs] == [0, 0]
    table = json.loads((tmp_path / tuning.UNTUNABLE).read_text())
    assert {name: len(table[f"l96_{name}"]["1.0"]) for name in ("esrf", "ienkf")} == {"esrf": 60, "ienkf": 60}
    assert not list(tmp_path.glob(".*.tmp"))  # every write renamed its temporary file into place


def test_skip_existing_redoes_entries_of_the_old_grid_search(tmp_path, monkeypatch):
    save_tuned("l63", "esrf", 5, 1.0, 1.05, None, 0.05, {"trajectories": 4, "cycles": 200}, directory=tmp_path)
    assert is_tuned("l63", "esrf", 5, 1.0, tmp_path) and not is_current("l63", "esrf", 5, 1.0, tmp_path)
    # Halving that only looked at whole-run R-RMSE (no lost_window) is redone as well.
    save_tuned("l63", "esrf", 15, 1.0, 1.05, None, 0.05, {"method": METHOD}, directory=tmp_path)
    assert is_tuned("l63", "esrf", 15, 1.0, tmp_path, METHOD) and not is_current("l63", "esrf", 15, 1.0, tmp_path)
    done = []
    monkeypatch.setattr(search, "successive_halving", lambda *a, **k: done.append(a[2]) or {
        "status": "diverged", "rounds": [{"trajectories": 1, "cycles": 1, "points": 1}], "grid_points": 1,
        "trajectory_cycles": 1, "cpu_seconds": 0.0, "seconds": 0.0, "lost": None, "diverged": None,
        "lost_level": 0.5})
    tune_many("l63", "esrf", [5, 10, 15], [1.0], skip_existing=True, directory=tmp_path, log=quiet)
    assert done == [5, 10, 15] and is_untunable("l63", "esrf", 10, 1.0, tmp_path)
    tune_many("l63", "esrf", [5, 10, 15], [1.0], skip_existing=True, directory=tmp_path, log=quiet)
    assert done == [5, 10, 15]  # recorded as untunable: not searched again
    assert tuned_params("l63", "esrf", 5, 1.0, directory=tmp_path)["inflation"] == 1.05  # old entry still read


def test_tuning_runs_on_tune_streams_disjoint_from_the_test_trajectories(monkeypatch):
    seen = []

    class Recording(TwinExperiment):
        def __init__(self, *args, **kwargs):
            seen.append((kwargs["purpose"], kwargs["seed"]))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(search, "TwinExperiment", Recording)
    successive_halving("l63", "enkf", 5, 1.0, points=[(1.0, None), (1.1, None)], rounds=((2, 5), (2, 5)),
                       final=(2, 5), finalists=1, log=quiet)
    assert {p for p, _ in seen} == {"tune"} and len({s for _, s in seen}) == len(seen)
    seeds = sorted({s for _, s in seen} | {0})
    test = np.concatenate([TwinExperiment("l63", 1.0, 5, {}, trajectories=2, seed=s).truth for s in seeds])
    tune = np.concatenate([TwinExperiment("l63", 1.0, 5, {}, trajectories=2, seed=s, purpose="tune").truth
                           for _, s in seen])
    # None of the tuning truths is a test truth of any seed used here.
    assert not np.isclose(tune[:, None], test[None]).all(axis=-1).any()


def test_batched_points_match_standalone_runs():
    values = evaluate_points("l96", "letkf", 10, 1.0, [(1.05, 2.0), (1.2, 4.0)], trajectories=2, cycles=20, seed=3)
    from daviz.filters import make_filter
    f = make_filter("letkf", "l96", 1.0, inflation=1.2, radius=4.0)
    alone = TwinExperiment("l96", 1.0, 10, {"letkf": f}, trajectories=2, seed=3, purpose="tune").run(20)["letkf"]
    assert np.allclose(values[1], alone, rtol=1e-8)


def test_refined_points():
    pts = refined_points((1.05, 4.0), None, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0])
    assert sorted({a for a, _ in pts}) == [1.03, 1.04, 1.05, 1.06, 1.07]
    assert sorted({r for _, r in pts}) == [3.5, 4.0, 4.5]
    edge = refined_points((1.0, 1.0), None, [1.0, 2.0, 4.0])
    assert sorted({a for a, _ in edge}) == [1.0, 1.01, 1.02] and sorted({r for _, r in edge}) == [0.75, 1.0, 1.5]
    assert sorted(a for a, _ in refined_points((1.3, None), None, [])) == [1.26, 1.28, 1.3, 1.32, 1.34]
    assert refined_points((1.45, 16.0), None, [8.0, 12.0, 16.0])[-1] == (1.49, 24.0)


def test_lost_track_level_is_the_climatological_rrmse():
    assert lost_track_level("ks") == pytest.approx(1.0, abs=0.01)  # zero-mean KS: guessing 0 gives exactly 1
    assert 0.8 < lost_track_level("l96") < 0.9 and 0.4 < lost_track_level("l63") < 0.6


def test_rounds_parsing_and_bad_input(capsys):
    assert parse_rounds("2x200, 4X400") == ((2, 200), (4, 400)) and parse_rounds(None) is None
    with pytest.raises(ValueError, match="rounds"):
        parse_rounds("2x200,4")
    assert cli.main(["tune", "--system", "l63", "--filter", "enkf", "--rounds", "0x10", "--dry-run"]) == 2
    assert "rounds" in capsys.readouterr().err


def test_fast_paths_of_the_sweep_filters_give_the_same_analysis():
    # A sweep gives LETKF one radius per batch element (solved radius by radius) and KS has p=16 > N,
    # where the transform runs in ensemble space: both must equal the plain computation.
    from daviz.filters import make_filter
    from daviz.filters.etkf import gram_eigen, inverse_sqrt_factor, transform_analysis
    from daviz.systems import get_system

    ks = get_system("ks")
    rng = np.random.default_rng(0)
    x = ks.initial_truth(rng, 3)
    E = x[:, None, :] + rng.standard_normal((3, 8, ks.dim))
    y = ks.observe(x) + rng.standard_normal((3, ks.obs_dim))
    radii = np.array([2.0, 16.0, 5.0])
    batched = make_filter("letkf", ks, 1.0, radius=radii).analysis(E, y, rng)
    for i, r in enumerate(radii):
        alone = make_filter("letkf", ks, 1.0, radius=r).analysis(E[i:i + 1], y[i:i + 1], rng)
        assert np.abs(batched[i] - alone[0]).max() < 1e-12
    A = E - E.mean(axis=1, keepdims=True)
    S = (E[..., ks.obs_idx] - E[..., ks.obs_idx].mean(axis=1, keepdims=True))
    delta = y - E[..., ks.obs_idx].mean(axis=1)
    SV, V, lam = gram_eigen(S)  # observation space, 16 x 16
    w = SV @ ((np.swapaxes(V, -1, -2) @ delta[..., None])[..., 0] / (7 + lam))[..., None]
    plain = A + SV @ (inverse_sqrt_factor(7.0, lam)[..., None] * (np.swapaxes(SV, -1, -2) @ A))
    plain = plain + np.swapaxes(w, -1, -2) @ A
    assert np.abs(transform_analysis(A, S, delta) - plain).max() < 1e-10
