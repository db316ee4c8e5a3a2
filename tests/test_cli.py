"""The `daviz` command line: bad input is refused up front with one line, results are strict JSON."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from daviz import cli
from daviz.cli import evaluate, simulate
from daviz.mnmef import pretrained

HUGE_N = "100000000"  # no machine holds 64 trajectories of this ensemble


def _never(*args, **kwargs):
    raise AssertionError("work started although the input should have been refused first")


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fail the test if an experiment is built or a filter loaded: refusals must come before any work."""
    monkeypatch.setattr(evaluate, "TwinExperiment", _never)
    monkeypatch.setattr(simulate, "TwinExperiment", _never)
    monkeypatch.setattr(evaluate, "build", _never)


EVALUATE = ["evaluate", "--system", "l63", "--filters", "enkf", "--N", "5", "--trajectories", "2", "--cycles", "5",
            "--quiet"]
BAD = [  # (command line, words the one-line message must contain)
    (EVALUATE + ["--cycles", "0"], "--cycles: must be a positive integer"),
    (EVALUATE + ["--cycles", "-5"], "--cycles: must be a positive integer"),
    (EVALUATE + ["--cycles", "2.5"], "--cycles: expected an integer"),
    (EVALUATE + ["--trajectories", "0"], "--trajectories: must be a positive integer"),
    (EVALUATE + ["--sigma-y", "nan"], "--sigma-y: values must be positive"),
    (EVALUATE + ["--sigma-y", "0"], "--sigma-y: values must be positive"),
    (EVALUATE + ["--sigma-y", "-1"], "--sigma-y: values must be positive"),
    (EVALUATE + ["--sigma-y", "1,inf"], "--sigma-y: observation noise must be positive and finite"),
    (EVALUATE + ["--N", "1"], "--N: ensemble sizes must be integers >= 2"),
    (EVALUATE + ["--N", "0,10"], "--N: ensemble sizes must be integers >= 2"),
    (EVALUATE + ["--system", "foo"], "--system: invalid choice: 'foo'"),
    (EVALUATE + ["--seed", "-1"], "--seed: must be a non-negative integer"),
    (EVALUATE + ["--inflation", "nan"], "--inflation: expected a number"),
    (EVALUATE + ["--inflation", "0.5"], "--inflation: inflation must be a finite number >= 1"),
    (EVALUATE + ["--radius", "nan"], "--radius: expected a number"),
    (EVALUATE + ["--filters", "kalmann"], "--filters: unknown filter(s) ['kalmann']"),
    (EVALUATE + ["--N", HUGE_N, "--trajectories", "64"], f"N={HUGE_N} with 64 trajectories needs about"),
    (EVALUATE + ["--json", "/nonexistent/dir/out.json"], "folder /nonexistent/dir does not exist"),
    (EVALUATE + ["--json", "/proc/daviz-out.json"], "cannot write there"),
    (["simulate", "--cycles", "0"], "--cycles: must be a positive integer"),
    (["simulate", "--cycles", "-5"], "--cycles: must be a positive integer"),
    (["simulate", "--trajectories", "0"], "--trajectories: must be a positive integer"),
    (["simulate", "--sigma-y", "nan"], "--sigma-y: expected a number"),
    (["simulate", "--sigma-y", "0"], "--sigma-y: observation noise must be a positive finite number"),
    (["simulate", "--sigma-y", "-1"], "--sigma-y: observation noise must be a positive finite number"),
    (["simulate", "--system", "foo"], "--system: invalid choice: 'foo'"),
    (["simulate", "--seed", "-3"], "--seed: must be a non-negative integer"),
    (["simulate", "--out", "/nonexistent/x.npz"], "folder /nonexistent does not exist"),
    (["simulate", "--trajectories", "1000000000", "--cycles", "1000000", "--out", "{tmp}/x.npz"],
     "1000000000 trajectories x 1000000 cycles need about"),
]


@pytest.mark.parametrize("argv, expected", BAD, ids=[" ".join(a[a.index("--quiet") + 1:] if "--quiet" in a else a)
                                                      for a, _ in BAD])
def test_bad_input_is_refused_with_one_line_before_any_work(argv, expected, tmp_path, capsys, nothing_runs):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"daviz {argv[0]}: error: "), err
    assert expected in lines[0]
    assert out == "" and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_memory_limit_is_named_and_can_be_set(monkeypatch, capsys, nothing_runs):
    monkeypatch.setenv("DAVIZ_MAX_MEMORY_GB", "0.001")  # 1 MiB: even a small run is refused
    assert cli.main(["evaluate", "--system", "l96", "--N", "40", "--trajectories", "64", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "more than the 0.001 GiB available (limit: DAVIZ_MAX_MEMORY_GB" in err


@pytest.mark.parametrize("argv, expected", [
    (["evaluate", "--json", "/nonexistent/dir/out.json"], "folder /nonexistent/dir does not exist"),
    (["simulate", "--out", "/nonexistent/x.npz"], "folder /nonexistent does not exist"),
    (["evaluate", "--cycles", "-5"], "--cycles: must be a positive integer"),
])
def test_console_script_prints_one_line_and_no_traceback(argv, expected):
    proc = subprocess.run([sys.executable, "-m", "daviz.cli", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_help_says_json_is_strict(capsys):
    assert cli.main(["evaluate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "strict JSON: NaN" in text and "written as null" in text


def _strict_loads(text):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_json_is_strict_null_for_nan(tmp_path, capsys):
    """A filter that diverges on every trajectory has no R-RMSE: the file says null, not NaN."""
    out = tmp_path / "rows.json"
    code = cli.main(["evaluate", "--system", "l96", "--filters", "esrf", "--inflation", "50", "--N", "5",
                     "--trajectories", "2", "--cycles", "30", "--json", str(out), "--quiet"])
    assert code == 0
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    (row,) = _strict_loads(text)
    assert row["diverged"] == 2 and row["rrmse_mean"] is None and row["rrmse_std"] is None
    assert "nan" in capsys.readouterr().out  # the table still shows it


def test_strict_json_converts_nested_values():
    value = {"a": [np.float64("nan"), np.inf, -np.inf, 1.5], "b": np.array([1.0, np.nan]), "c": np.int64(3),
             "d": {"e": (float("nan"),)}, "f": None, "g": "NaN"}
    assert _strict_loads(json.dumps(evaluate.strict_json(value), allow_nan=False)) == {
        "a": [None, None, None, 1.5], "b": [1.0, None], "c": 3, "d": {"e": [None]}, "f": None, "g": "NaN"}


def test_evaluate_reports_lost_track_and_elapsed_time(tmp_path, capsys):
    """LETKF without localization at N=5 on L96 loses track (finite error above climatology) and is counted."""
    out = tmp_path / "rows.json"
    code = cli.main(["evaluate", "--system", "l96", "--filters", "letkf", "--N", "5", "--radius", "0",
                     "--trajectories", "4", "--cycles", "200", "--json", str(out)])
    assert code == 0
    (row,) = _strict_loads(out.read_text())
    assert row["params"]["radius"] is None and row["lost_track_window"] == 100
    assert 0.8 < row["climatology_rrmse"] < 0.9  # L96: E|v - mean| / E|v|
    assert row["lost_track"] >= 1 and row["lost_track"] + row["diverged"] == 4
    captured = capsys.readouterr()
    assert " lost " in captured.out.splitlines()[0]
    assert "l96 N=5 sigma_y=1.0: 200 cycles x 4 trajectories in" in captured.err and "elapsed" in captured.err


def test_evaluate_fails_when_every_filter_is_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)  # no weights at all
    out = tmp_path / "rows.json"
    code = cli.main(["evaluate", "--system", "l63", "--filters", "mnmef", "--N", "5", "--trajectories", "1",
                     "--cycles", "2", "--json", str(out), "--quiet"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "skipping mnmef" in err and "nothing to evaluate: every requested filter was skipped" in err


def test_simulate_writes_exactly_the_named_file(tmp_path, capsys):
    out = tmp_path / "run.data"  # numpy alone would have written run.data.npz
    assert cli.main(["simulate", "--system", "l63", "--trajectories", "2", "--cycles", "3", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.data"]
    with np.load(out) as data:
        assert data["truth"].shape == (4, 2, 3) and data["observations"].shape == (3, 2, 1)
