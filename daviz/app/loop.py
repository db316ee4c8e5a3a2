"""The served session's loop: engine work goes to a worker thread, then the page is drawn.

Bokeh runs every session callback holding the document lock for as long as the callback runs; an
earlier design awaited the engine inside the callback, so under load the lock was held almost all
the time, clicks (Pause) queued behind whole ticks, and frames piled up in the websocket. Now each
look (`tick`, every LOOP_MS or sooner when woken) only starts the next piece of engine work on a
thread and returns; `draw` pushes a frame only when the browser has acknowledged the previous one.
The lock is held for milliseconds and at most one small frame is in flight. The engine work of all
sessions takes turns on one worker (engine.py), so under overload every session slows down evenly.
"""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future

import panel as pn
from panel.io.state import set_curdoc

from .engine import ENGINE
from .panel_writes import flush_stranded_writes

log = logging.getLogger(__name__)

LOOP_MS = 50  # how often the loop looks for work; each look takes well under a millisecond


class SessionLoop:
    """Runs one session: restarts and filter swaps first (in order), then Steps, then cycles due."""

    def __init__(self, draw, on_close):
        """`draw(finished)` runs on the event loop, document held (`finished`: engine work just ended);
        `on_close()` when the browser has gone."""
        self.state = None  # the session's ExplorerState, set once it exists (its runner is `submit`)
        self.draw = draw
        self.on_close = on_close
        self.work: Future | None = None  # the engine work in progress (or waiting for its turn)
        self._work_plays = False  # whether that work is cycles for the player (cancelled by a pause)
        self.jobs: deque = deque()  # restarts and filter swaps, run in order before any more cycles
        self.steps_owed = 0
        self.doc = None
        self._woken = False
        self._callback = None
        self._was_connected = False

    def submit(self, fn) -> None:
        """Run fn (a restart, a filter swap) on the engine thread before anything else."""
        self.jobs.append(fn)

    def step(self) -> None:
        """The Step button: pause, then one cycle."""
        self.state.pause()
        self.steps_owed += 1
        self.wake()

    @property
    def restarting(self) -> bool:
        return self.state.restarting or bool(self.jobs)

    @property
    def idle(self) -> bool:
        """No engine work running or owed."""
        return self.work is None and not self.steps_owed

    def wake(self) -> None:
        """Look again soon on the event loop (callable from any thread), instead of at the next tick."""
        doc = self.doc
        if doc is None or self._woken or self.state is None or self.state.closed:
            return
        self._woken = True
        with set_curdoc(doc):
            pn.state.execute(self._tick_woken, schedule=True)

    def _tick_woken(self) -> None:
        self._woken = False
        self.tick()

    def tick(self) -> None:
        """One look: start engine work off the event loop, then draw. Well under a millisecond when
        nothing is due."""
        st = self.state
        if st.closed:
            return
        if self._connection_lost():
            self.on_close()
            return
        if self.work is not None and self._work_plays and not st.playing:
            self.work.cancel()  # still waiting for its turn: a pause needs no turn at all
        finished = self.work is not None and self.work.done()
        if finished:
            exc = None if self.work.cancelled() else self.work.exception()
            self.work = None
            if exc is not None:
                log.error("engine work failed", exc_info=exc)
                st.pause()
                st.message = f"update failed: {exc}"
        if self.work is None and not self.jobs and st.mnmef_arrived():
            st.request_restart()  # the weights arrived: rebuild with MNMEF
        if self.work is None:
            self.work = self._next_work()
            if self.work is not None:
                self.work.add_done_callback(lambda f: self.wake())
        with pn.io.hold(self.doc):
            self.draw(finished)
        flush_stranded_writes(self.doc)  # a Panel bug can leave the last update unsent (panel_writes.py)

    def _next_work(self) -> Future | None:
        st = self.state
        self._work_plays = False
        if self.jobs:
            return ENGINE.submit(self.jobs.popleft())
        if st.restarting:
            return None
        if self.steps_owed:
            self.steps_owed -= 1
            return ENGINE.submit(st.advance, 1)
        n = st.cycles_due()
        if n <= 0:
            return None
        self._work_plays = True
        return ENGINE.submit(st.advance, n, True)

    def _connection_lost(self) -> bool:
        """True once the browser that had this session has gone (tab closed, network lost)."""
        session = self._server_session()
        if session is None:
            return False
        if session.connection_count > 0:
            self._was_connected = True
            return False
        return self._was_connected or session.destroyed

    def _server_session(self):
        """Bokeh's ServerSession of this page (None outside a server): Bokeh offers no public way to its
        connection count or to ask for its expiry."""
        return getattr(getattr(self.doc, "session_context", None), "_session", None)

    def start(self) -> None:
        """Look every LOOP_MS once the page has loaded."""
        self.doc = pn.state.curdoc
        if self._callback is None:
            # A background callback does not flag the session busy: otherwise the template's busy
            # indicator would spin for as long as the app plays.
            self._callback = pn.io.PeriodicCallback(callback=self.tick, period=LOOP_MS, background=True)
            pn.state.onload(self._callback.start)

    def stop(self) -> None:
        """Stop looking and let Bokeh discard the session's document at its next sweep."""
        if self._callback is not None:
            try:
                self._callback.stop()
            except Exception:  # noqa: BLE001 (already stopped by Panel)
                pass
            self._callback = None
        session = self._server_session()
        if session is not None and not session.destroyed:
            session.request_expiration()
        self.doc = None
