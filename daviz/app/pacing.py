"""Pacing: how many cycles are due to keep the chosen speed, and the speed actually reached."""
from __future__ import annotations

import time
from collections import deque

RATE_WINDOW_S = 3.0  # the speed reached is measured over the advances of the last few seconds
BEHIND = 0.9  # below this fraction of the speed asked, the page says the speed is not reached


class Pacer:
    """Cycles owed at `speed` cycles/s since the last look, never more than half a second's worth."""

    def __init__(self):
        self.cycles_per_second = 0.0
        self._owed = 0.0
        self._last_clock: float | None = None
        self._history: deque = deque()  # (time, cycle) of the advances of the last RATE_WINDOW_S

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

    def done(self, cycle: int, now: float | None = None) -> None:
        """Cycles were run up to `cycle`: update the measured rate (over the last RATE_WINDOW_S, so that
        it follows the server's load, and never fewer than two advances: under overload they are rare)."""
        now = time.monotonic() if now is None else now
        history = self._history
        history.append((now, cycle))
        while len(history) > 2 and now - history[1][0] >= RATE_WINDOW_S:
            history.popleft()
        t0, c0 = history[0]
        if now - t0 > 0.2:
            self.cycles_per_second = (cycle - c0) / (now - t0)

    def measured_for(self, now: float | None = None) -> float:
        """Seconds the measured rate covers (0 before the second advance)."""
        now = time.monotonic() if now is None else now
        return now - self._history[0][0] if len(self._history) > 1 else 0.0

    def behind(self, speed: float, now: float | None = None) -> bool:
        """Whether the measured rate (over at least a second) is clearly below the speed asked."""
        return self.measured_for(now) >= 1.0 and self.cycles_per_second < BEHIND * speed
