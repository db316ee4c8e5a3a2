"""Where a sweep's tasks run: here, one after the other (the default), or on a Dask cluster.

    run_tasks(fn, tasks)                         # serial, in this process
    run_tasks(fn, tasks, workers=2)              # a local Dask cluster of 2 single-threaded processes
    run_tasks(fn, tasks, scheduler="tcp://...")  # an existing cluster (`dask scheduler` + `dask worker`s)

A task is `fn(*args)` for one tuple of `tasks`. The callers make every task a pure function of its arguments:
its random numbers come from the named streams of its own (seed, purpose, name) key (daviz.seeding), never
from the order or the place it runs in. So the results, returned in task order, are identical to the serial
run's, whatever the number of workers.

Finished results are handed to `on_result(index, result)` in this process as they arrive, so the caller can
save them at once. A worker lost mid-task (killed, out of memory) costs only the task it was running: the
scheduler runs it again on another worker (Dask's `allowed-failures`), and what has finished is kept.

A local cluster never has more processes than there are tasks, and a single task runs here (`runs_here`):
starting a process for it would only add its start-up time.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any, Callable, Sequence

from tqdm import tqdm

SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")  # the address schemes Dask's comms understand


def check_workers(workers, scheduler) -> None:
    """One clear line for impossible requests, before any work."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"--workers must be an integer >= 1, got {workers!r}")
    if scheduler is not None and workers not in (None, 1):
        raise ValueError("give --workers (a local cluster) or --scheduler (an existing one), not both")
    if scheduler is not None:
        address = str(scheduler).strip()
        if not address or any(c.isspace() for c in address):
            raise ValueError("--scheduler needs an address such as tcp://10.0.0.5:8786")
        scheme, _, location = address.rpartition("://")
        if (scheme or "tcp") not in SCHEMES:
            raise ValueError(f"--scheduler: unknown scheme {scheme!r} in {address!r}; use e.g. tcp://10.0.0.5:8786")
        if scheme != "inproc" and not location.rpartition(":")[2].isdigit():
            raise ValueError(f"--scheduler needs host:port, e.g. tcp://10.0.0.5:8786, got {address!r}")
    if (scheduler is not None or (workers or 1) > 1) and importlib.util.find_spec("distributed") is None:
        raise ValueError("--workers/--scheduler need Dask: pip install 'dask[distributed]' (or daviz[cluster])")


def runs_here(workers, scheduler, n_tasks: int) -> bool:
    """Whether run_tasks runs these tasks serially in this process (callers that pass live callbacks, such as
    a logger or an already built filter, to in-process tasks only)."""
    return scheduler is None and min(workers or 1, n_tasks) <= 1


def run_tasks(fn: Callable[..., Any], tasks: Sequence[tuple], workers: int | None = None,
              scheduler: str | None = None, on_result: Callable[[int, Any], None] | None = None,
              progress: bool = False, label: str = "tasks") -> list:
    """Results of fn(*task) for every task, in task order (see the module docstring)."""
    check_workers(workers, scheduler)
    tasks = list(tasks)
    bar = tqdm(total=len(tasks), disable=not progress, desc=label, unit="task", leave=False)
    results: list = [None] * len(tasks)
    try:
        if runs_here(workers, scheduler, len(tasks)):
            for i, args in enumerate(tasks):
                results[i] = fn(*args)
                _done(i, results[i], on_result, bar)
            return results
        with _client(min(workers or 1, len(tasks)) if scheduler is None else None, scheduler) as client:
            futures = [client.submit(fn, *args, pure=False) for args in tasks]
            index = {f.key: i for i, f in enumerate(futures)}
            from dask.distributed import as_completed

            for future, result in as_completed(futures, with_results=True):
                i = index[future.key]
                results[i] = result
                _done(i, result, on_result, bar)
                future.release()  # the result is here now: free the worker's copy
        return results
    finally:
        bar.close()


def _done(i, result, on_result, bar) -> None:
    if on_result is not None:
        with tqdm.external_write_mode():  # what on_result prints does not tear the progress bars
            on_result(i, result)
    bar.update(1)


# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also fixes glibc's mmap threshold: every
# numpy temporary over 128 KiB is then mapped and unmapped again, and a filter cycle runs at about half speed
# (L96 EnKF N=20, 16 trajectories: 0.55 s against 0.28 s, 100 000 page faults against none). Local workers
# start without it; an existing cluster's workers should too (see SLOW_WORKERS).
_NANNY_ENVIRON = "distributed.nanny.pre-spawn-environ"
SLOW_WORKERS = ("daviz: the cluster's workers run with MALLOC_TRIM_THRESHOLD_ set (Dask's default), which halves "
                "the speed of these sweeps; start them with "
                "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON=\"{'MALLOC_TRIM_THRESHOLD_': None}\"")


def _malloc_trim_threshold():
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


class _client:
    """A Dask client on a local cluster of `workers` single-threaded processes, or on `scheduler`."""

    def __init__(self, workers, scheduler):
        try:
            import dask
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise ValueError("--workers/--scheduler need Dask: pip install 'dask[distributed]'") from None
        self.cluster = None
        self.environ = dict(os.environ)  # the nanny writes its worker settings into this process's environment
        if scheduler is None:
            # one thread per process: the numpy and torch work inside a task is single-threaded by design
            # (the nanny sets OMP/MKL/OpenBLAS threads to 1), so K processes use K cores
            with dask.config.set({f"{_NANNY_ENVIRON}.MALLOC_TRIM_THRESHOLD_": None}):
                self.cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                            dashboard_address=None, silence_logs=logging.ERROR)
        try:
            # gives up after Dask's connect timeout (distributed.comm.timeouts.connect, 30 s by default)
            self.client = Client(self.cluster if scheduler is None else scheduler)
        except (OSError, ValueError) as exc:  # unreachable (after the timeout), or an address Dask refuses
            self._close_cluster()
            raise ValueError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
        if scheduler is not None and any(self.client.run(_malloc_trim_threshold).values()):
            print(SLOW_WORKERS, file=sys.stderr, flush=True)

    def __enter__(self):
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        self._close_cluster()

    def _close_cluster(self):
        if self.cluster is not None:
            self.cluster.close()
        for name in set(os.environ) - set(self.environ):
            del os.environ[name]
        os.environ.update(self.environ)
