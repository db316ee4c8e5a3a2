"""Sweeps on a Dask cluster (issue 22): `daviz evaluate` and `daviz tune` give the same numbers on 2 workers as
in one process, tuning batches are canonical, finished entries are kept, and bad requests are refused first."""
import json
import logging
import os
import re

import numpy as np
import pytest

from daviz import cli
from daviz.cli import evaluate
from daviz.experiment import TwinExperiment
from daviz.methods import build
from daviz.tuning import evaluate_points, search, tune_many

pytest.importorskip("dask.distributed")


def _rows(path, *timings):
    """The JSON rows without the timings, which alone may differ from run to run."""
    rows = json.loads(path.read_text())
    for row in rows:
        for key in ("seconds", *timings):
            row.pop(key)
    return rows


def test_evaluate_json_is_identical_serially_and_on_two_workers(tmp_path, capsys):
    argv = ["evaluate", "--system", "l96", "--N", "5,8", "--trajectories", "4", "--cycles", "30",
            "--filters", "enkf,letkf,ensf", "--quiet", "--json"]
    assert cli.main(argv + [str(tmp_path / "serial.json")]) == 0
    assert cli.main(argv + [str(tmp_path / "two.json"), "--workers", "2"]) == 0
    serial, two = _rows(tmp_path / "serial.json"), _rows(tmp_path / "two.json")
    assert serial == two
    assert [(r["N"], r["filter"]) for r in two] == [(n, f) for n in (5, 8) for f in ("enkf", "letkf", "ensf")]
    assert all(np.isfinite(r["rrmse_mean"]) for r in serial)  # the case runs real filters, not all-NaN rows


@pytest.fixture
def kept_environment():
    """A cluster started here writes its nanny's worker settings into this process's environment: undo that."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_evaluate_on_an_existing_cluster_gives_the_same_json(tmp_path, capsys, kept_environment):
    """--scheduler ADDRESS: a cluster started apart (`dask scheduler` + `dask worker`, here a LocalCluster whose
    workers keep Dask's default MALLOC_TRIM_THRESHOLD_, hence the one-line hint)."""
    from dask.distributed import LocalCluster

    argv = ["evaluate", "--system", "l63", "--N", "5", "--trajectories", "3", "--cycles", "20", "--filters",
            "enkf,esrf", "--quiet", "--json"]
    assert cli.main(argv + [str(tmp_path / "serial.json")]) == 0
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR) as c:
        capsys.readouterr()
        assert cli.main(argv + [str(tmp_path / "cluster.json"), "--scheduler", c.scheduler_address]) == 0
    assert _rows(tmp_path / "serial.json") == _rows(tmp_path / "cluster.json")
    assert "MALLOC_TRIM_THRESHOLD_" in capsys.readouterr().err


def test_a_filter_alone_gets_the_numbers_it_gets_beside_the_others():
    """Why one task per filter changes nothing: truth, observations and the initial ensemble do not depend on
    which filters run, and each filter draws from its own noise stream."""
    filters = {name: build(name, "l96", 1.0, 8)[0] for name in ("enkf", "ensf")}
    shared = TwinExperiment("l96", 1.0, 8, filters, trajectories=3, seed=2).run(25)
    for name in filters:
        row = evaluate.evaluate_filter("l96", 1.0, 8, name, None, None, None, 3, 25, 2)
        alone = TwinExperiment("l96", 1.0, 8, {name: build(name, "l96", 1.0, 8)[0]}, trajectories=3, seed=2).run(25)
        np.testing.assert_array_equal(alone[name], shared[name])
        assert row["rrmse_mean"] == np.mean(shared[name])


def test_evaluate_prints_one_timing_line_per_block(capsys):
    assert cli.main(["evaluate", "--system", "l63", "--N", "5,6", "--filters", "enkf,esrf", "--trajectories", "2",
                     "--cycles", "5"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "cycles x" in line]
    assert [line.split(":")[0].split("\r")[-1].strip() for line in lines] == ["l63 N=5 sigma_y=1.0",
                                                                              "l63 N=6 sigma_y=1.0"]


def _strip_timings(lines):
    return [re.sub(r"\[.*CPU s.*\]|[\d.]+ CPU s", "", line) for line in lines]


def test_tune_entries_are_identical_serially_and_on_two_workers(tmp_path):
    logs = {"serial": [], "two": []}
    # EnKF: stochastic. Seed 1: other tests time a first search on seed 0's trajectories (not yet remembered)
    kwargs = dict(rounds=((2, 20), (2, 30)), final=(3, 40), inflations=[1.0, 1.05, 1.2], seed=1)
    for name, workers in (("serial", 1), ("two", 2)):
        tune_many("l63", "enkf", [5, 8], [1.0, 0.7], workers=workers, directory=tmp_path / name,
                  log=lambda *parts, **_: logs[name].append(" ".join(map(str, parts))), **kwargs)
    tables = {}
    for name in logs:
        table = json.loads((tmp_path / name / "l63_enkf.json").read_text())
        for entries in table.values():
            for entry in entries.values():
                assert entry["cpu_seconds"] >= 0 and entry.pop("seconds") >= 0 and entry.pop("cpu_seconds") >= 0
        tables[name] = table
    assert tables["serial"] == tables["two"] and len(tables["two"]["0.7"]) == 2
    # every round and entry line reaches the log, an entry's lines together when it comes from a worker
    assert sorted(_strip_timings(logs["serial"])) == sorted(_strip_timings(logs["two"]))


def test_tuning_batches_are_canonical_whatever_the_workers():
    points = [(1.0, None), (1.05, None), (1.2, None)]
    args = ("l63", "enkf", 5, 1.0, points, 2, 30, 5)  # seed 5: see the tune test above
    one = evaluate_points(*args, chunks=2)
    two = evaluate_points(*args, chunks=2, workers=2)
    np.testing.assert_array_equal(one, two)
    # another split draws other EnKF noise: why the split is fixed, not the number of workers
    assert not np.array_equal(one, evaluate_points(*args))


def test_the_canonical_batches_reproduce_a_shipped_table_entry():
    """L63 EnKF σ_y=1.0 N=10 (scripts/tune_all.sh, --workers 1): the same search gives the same entry."""
    entry = json.loads((search.TUNED_DIR / "l63_enkf.json").read_text())["1.0"]["10"]
    rounds = tuple((r["trajectories"], r["cycles"]) for r in entry["rounds"] if r["round"] != "final")
    (out,) = tune_many("l63", "enkf", [10], [1.0], rounds=rounds, final=(entry["trajectories"], entry["cycles"]),
                       dry_run=True, log=lambda *a, **k: None)
    assert out["best"] == (entry["inflation"], entry["radius"]) and out["rrmse"] == entry["rrmse"]
    assert out["grid_points"] == entry["grid_points"] and out["rounds"] == entry["rounds"]


def test_each_entry_is_saved_before_the_next_one_runs(tmp_path, monkeypatch):
    """An interrupted run (or one whose worker is lost) keeps what has finished; --skip-existing resumes."""
    seen = []
    real = search.successive_halving

    def halving(system, name, N, sigma_y, **kwargs):
        seen.append(sorted(json.loads((tmp_path / "l63_esrf.json").read_text())["1.0"]) if seen else [])
        if N == 7:
            raise KeyboardInterrupt  # cut off during the third entry
        return real(system, name, N, sigma_y, **kwargs)

    monkeypatch.setattr(search, "successive_halving", halving)
    with pytest.raises(KeyboardInterrupt):
        tune_many("l63", "esrf", [5, 6, 7], [1.0], rounds=((1, 10),), final=(1, 10), refine=False,
                  inflations=[1.0, 1.1], directory=tmp_path, log=lambda *a, **k: None)
    assert seen == [[], ["5"], ["5", "6"]]


def _never(*args, **kwargs):
    raise AssertionError("work started although the request should have been refused first")


TUNE = ["tune", "--system", "l63", "--filter", "enkf", "--N", "5", "--dry-run"]
EVALUATE = ["evaluate", "--system", "l63", "--filters", "enkf", "--N", "5", "--trajectories", "2", "--cycles", "5",
            "--quiet"]


@pytest.mark.parametrize("command", [TUNE, EVALUATE], ids=["tune", "evaluate"])
@pytest.mark.parametrize("flags, expected", [
    (["--workers", "0"], "--workers: must be a positive integer"),
    (["--workers", "two"], "--workers: expected an integer"),
    (["--workers", "2", "--scheduler", "tcp://10.0.0.5:8786"], "give --workers (a local cluster) or --scheduler"),
    (["--scheduler", " "], "--scheduler needs an address"),
    (["--scheduler", "http://10.0.0.5:8786"], "--scheduler: unknown scheme 'http'"),
    (["--scheduler", "tcp://10.0.0.5"], "--scheduler needs host:port"),
])
def test_bad_cluster_requests_are_refused_with_one_line_before_any_work(command, flags, expected, monkeypatch,
                                                                       capsys):
    monkeypatch.setattr(search, "successive_halving", _never)
    monkeypatch.setattr(evaluate, "build", _never)
    assert cli.main(command + flags) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and expected in err and "Traceback" not in err


def test_an_unreachable_scheduler_is_one_line_and_no_trajectory_runs(monkeypatch, capsys):
    import dask

    monkeypatch.setattr(evaluate, "TwinExperiment", _never)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert cli.main(EVALUATE + ["--scheduler", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot reach the Dask scheduler tcp://127.0.0.1:1" in err


def test_a_worker_lost_mid_task_costs_only_that_task(tmp_path):
    """A worker process killed mid-task (as by the OOM killer): Dask runs that task again on a new worker,
    every result arrives once, in task order, and the tasks already done are not lost."""
    from daviz.parallel import run_tasks

    def square_once_dying(i, folder):
        import os
        from pathlib import Path
        runs = Path(folder) / f"runs_{i}"
        with runs.open("a") as fh:
            fh.write("x")
        if i == 2 and runs.read_text() == "x":
            os._exit(1)  # the first try of task 2 takes its worker process down with it
        return i * i

    seen = []
    out = run_tasks(square_once_dying, [(i, str(tmp_path)) for i in range(4)], workers=2,
                    on_result=lambda i, r: seen.append(i))
    assert out == [0, 1, 4, 9]
    assert sorted(seen) == [0, 1, 2, 3]  # each result handed over once
    assert (tmp_path / "runs_2").read_text() == "xx"  # the lost task ran again
