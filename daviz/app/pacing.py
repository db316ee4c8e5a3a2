"""Pacing: how many cycles are due to keep the chosen speed, and the speed actually reached."""
from __future__ import annotations

import time
from collections import deque


class Pacer:
    """Cycles owed at `speed` cycles/s since the last look, never more than half a second's worth."""

    def __init__(self):
        self.cycles_per_second = 0.0
        self._owed = 0.0
        self._last_clock: float | None = None
        self._history: deque = deque(maxlen=20)  # (time, cycle) of recent advances

    def reset(self) -> None:
        """A new experiment: nothing owed, no rate yet."""
        self.cycles_per_second = 0.0
        self._history.clear()
        self._owed = 0.0
        self._last_clock = None

    def resume(self) -> None:
        """Playing (again): the next look starts the clock, nothing is owed for the pause."""
        self._last_clock = None

    def due(self, speed: float, now: float | None = None) -> int:
        """How many cycles to run now; the first look after `resume` runs one."""
        now = time.monotonic() if now is None else now
        if self._last_clock is None:
            self._last_clock = now
            self._history.clear()
            self._owed = 1.0
        else:
            self._owed += speed * (now - self._last_clock)
            self._last_clock = now
        self._owed = min(self._owed, max(1.0, speed * 0.5))  # do not pile up a backlog
        n = int(self._owed)
        self._owed -= n
        return n

    def done(self, cycle: int) -> None:
        """Cycles were run up to `cycle`: update the measured rate (over the last 20 advances)."""
        now = time.monotonic()
        self._history.append((now, cycle))
        t0, c0 = self._history[0]
        if now - t0 > 0.2:
            self.cycles_per_second = (cycle - c0) / (now - t0)
