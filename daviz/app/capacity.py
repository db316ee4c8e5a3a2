"""How many sessions one server process runs at once; the sessions beyond get a "server full" page.

A session computes its filters on the server, so past some number of sessions everybody's page
crawls. `DAVIZ_MAX_SESSIONS` (per server process: `panel serve --num-procs 2` holds twice as many)
caps them; the default is what one process held in benchmarks/bench_sessions.py (L96 N=20, default
filters, every session >= 5 cycles/s and Pause answered within 1 s). One process is one core's worth:
its engine runs on one thread (engine.py), so the default does not grow with the machine; more
cores hold more sessions through more processes.

A slot is taken when the page is built and kept once the page's websocket has connected (its
`onload`), and given back when the session closes. With `--num-procs` the page's HTML and its
websocket may land in different processes (bokeh issues 5582, 7091; panel 6678): the process that
served the HTML then holds a session nobody connects to. Such a slot counts only for CONNECT_GRACE_S,
the time a page takes to connect, so spurious sessions never fill the server.
"""
from __future__ import annotations

import os
import threading
import time

import panel as pn

MAX_SESSIONS_ENV = "DAVIZ_MAX_SESSIONS"
SESSIONS_PER_PROCESS = 8  # measured: benchmarks/bench_sessions.py (README, "Running for a class")
CONNECT_GRACE_S = 30.0


def max_sessions() -> int:
    """The cap for this process: DAVIZ_MAX_SESSIONS, else the measured default."""
    raw = os.environ.get(MAX_SESSIONS_ENV, "").strip()
    if not raw:
        return SESSIONS_PER_PROCESS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_SESSIONS_ENV}={raw!r}: it must be a whole number >= 1") from None
    if value < 1:
        raise ValueError(f"{MAX_SESSIONS_ENV}={raw!r}: it must be a whole number >= 1")
    return value


class SessionSlots:
    """Sessions of this process: connected ones, and built ones still within their time to connect."""

    def __init__(self, cap: int, grace: float = CONNECT_GRACE_S):
        self.cap = cap
        self.grace = grace
        self._lock = threading.Lock()
        self._waiting: dict[str, float] = {}  # key -> when its page was built
        self._connected: set[str] = set()

    def _in_use(self, now: float) -> int:
        self._waiting = {k: t for k, t in self._waiting.items() if now - t < self.grace}
        return len(self._connected) + len(self._waiting)

    def in_use(self, now: float | None = None) -> int:
        """Sessions counted now."""
        with self._lock:
            return self._in_use(time.monotonic() if now is None else now)

    def take(self, key: str, now: float | None = None) -> bool:
        """A slot for a new page, or False when the process is full."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._in_use(now) >= self.cap:
                return False
            self._waiting[key] = now
            return True

    def connected(self, key: str) -> None:
        """The page's websocket is here: its slot counts until `release`."""
        with self._lock:
            self._waiting.pop(key, None)
            self._connected.add(key)

    def release(self, key: str) -> None:
        """The session has closed (idempotent)."""
        with self._lock:
            self._waiting.pop(key, None)
            self._connected.discard(key)


_slots: SessionSlots | None = None


def slots() -> SessionSlots:
    """This process's slots (made at the first session, so DAVIZ_MAX_SESSIONS is read after fork)."""
    global _slots
    if _slots is None:
        _slots = SessionSlots(max_sessions())
    return _slots


def session_key() -> str:
    """The current Bokeh session's id ('' outside a server)."""
    context = getattr(pn.state.curdoc, "session_context", None)
    return getattr(context, "id", "") or ""


def full_page(in_use: int, cap: int):
    """What a session beyond the cap gets: a few words, no experiment, no loop."""
    return pn.Column(pn.pane.HTML(
        "<h2>daviz · ensemble data assimilation explorer</h2>"
        f"<p style='font-size: 18px'><b>The server is full</b> ({in_use} of {cap} sessions in use). "
        "Try again in a minute: reload this page.</p>"
        "<p style='color: #555'>Each page computes its own filters on the server, so the server takes "
        "only as many as it can keep playing.</p>", margin=(20, 30)))
