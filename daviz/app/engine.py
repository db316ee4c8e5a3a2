"""The server's engine: every session's numerical work, one piece at a time, in turns.

Why one worker thread per process: at the explorer's sizes the filters spend their time in Python
(tiny numpy arrays), so engine threads of one process mostly wait for each other's GIL. Measured on
L96 N=20 with the default filters: one thread 6.7 ms a cycle, two threads side by side 11.5 ms a
cycle in total, i.e. less work done, and every extra thread delays the event loop's answers to
clicks. More cores are used by more processes (`panel serve --num-procs`, or several servers behind
a load balancer: deploy/).

Why it is fair: a session's loop has at most one piece of work here at a time (it submits the next
only once the last is done), pieces are served first come first served, and each one is short (an
advance stops after `ExplorerState.max_seconds_per_advance`). Under overload the pieces go round the
sessions in turn: every session slows down by the same factor, none starves, and what waits is
bounded by the number of sessions. A piece still waiting when its session pauses is cancelled.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

BUSY_MEMORY_S = 3.0  # how long the engine counts as shared after work last had to wait for its turn


class Engine:
    """One worker thread; pieces of work in the order they came; knows whether sessions wait."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="daviz-engine")
        self._lock = threading.Lock()
        self._queued = 0  # pieces submitted and not finished
        self._last_wait = -float("inf")  # when a piece last came while another was queued or running

    def submit(self, fn, *args) -> Future:
        """Run fn(*args) on the engine after the pieces already there."""
        with self._lock:
            if self._queued:
                self._last_wait = time.monotonic()
            self._queued += 1
        future = self._pool.submit(fn, *args)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: Future) -> None:
        with self._lock:
            self._queued -= 1

    @property
    def queued(self) -> int:
        """Pieces of work waiting or running now."""
        return self._queued

    def shared(self, now: float | None = None) -> bool:
        """Whether work had to wait for other work lately: the sessions are sharing the engine."""
        now = time.monotonic() if now is None else now
        return now - self._last_wait < BUSY_MEMORY_S


ENGINE = Engine()  # one per server process
