"""daviz.parallel: the same results serially and on a local Dask cluster, and a lost worker costs nothing."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from daviz.parallel import run_tasks
from daviz.seeding import stream

cloudpickle = pytest.importorskip("cloudpickle")
pytest.importorskip("dask.distributed")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test file


def draw(seed: int, name: str, n: int) -> np.ndarray:
    """A task whose numbers come from its own named stream, as daviz's sweep tasks do."""
    return stream(seed, "test", name).standard_normal(n)


def dies_once(marker: str, seed: int) -> float:
    """Kills its worker process the first time it runs anywhere (a lost worker), then succeeds."""
    if not os.path.exists(marker):
        Path(marker).write_text("x")
        os._exit(1)
    return float(stream(seed, "test", "lost").standard_normal())


def test_serial_and_two_workers_give_identical_results():
    tasks = [(0, f"task-{i}", 5) for i in range(6)]
    seen = []
    serial = run_tasks(draw, tasks)
    parallel = run_tasks(draw, tasks, workers=2, on_result=lambda i, r: seen.append(i))
    assert sorted(seen) == list(range(6))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_a_lost_worker_is_replaced_and_its_task_rerun(tmp_path):
    marker = str(tmp_path / "died")
    calls = []
    out = run_tasks(dies_once, [(marker, 1), (marker, 2), (marker, 3)], workers=2,
                    on_result=lambda i, r: calls.append(i))
    assert os.path.exists(marker)  # a worker really died
    assert out == [float(stream(s, "test", "lost").standard_normal()) for s in (1, 2, 3)]
    assert sorted(calls) == [0, 1, 2]  # each finished task handed over exactly once


def worker_settings(_: int) -> tuple:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")


def test_local_workers_run_single_threaded_without_the_slow_malloc_setting(monkeypatch):
    """Dask's MALLOC_TRIM_THRESHOLD_ halves the filters' speed (daviz.parallel); the nanny's settings must not
    leak into this process's environment either (every later subprocess would inherit them)."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    before = dict(os.environ)
    assert run_tasks(worker_settings, [(0,), (1,)], workers=2) == [(None, "1"), (None, "1")]
    assert dict(os.environ) == before


@pytest.mark.parametrize("workers,scheduler,message", [(0, None, "integer >= 1"), (2, "tcp://x:1", "not both"),
                                                       (None, " ", "needs an address")])
def test_bad_requests_are_refused(workers, scheduler, message):
    with pytest.raises(ValueError, match=message):
        run_tasks(draw, [(0, "a", 1)], workers=workers, scheduler=scheduler)
