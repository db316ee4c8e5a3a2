"""Many sessions on one server process, without a browser: the engine's turns, fair slowing down under
overload (with the speed reached on the page), the session cap's slots, and the pacer's measured rate.

Loops are driven as the served app drives them (a look per session, then a wait for engine work with
a timeout), never with fixed sleeps; the overload is made by a cycle that costs a fixed time."""
from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, wait

import pytest

from daviz.app.capacity import SessionSlots, max_sessions
from daviz.app.engine import BUSY_MEMORY_S, Engine
from daviz.app.pacing import Pacer

pytest.importorskip("panel")

FAST = ["EnKF", "LETKF"]
CYCLE_COST_S = 0.01  # every cycle of the overload test takes this long on the engine


def test_the_engine_serves_waiting_sessions_in_turns():
    engine = Engine()
    gate = threading.Event()
    order, done = [], threading.Event()

    def piece(name: str, left: int):
        gate.wait(30)
        order.append(name)
        if left > 1:  # as a session's loop does: the next piece only once the last is done
            engine.submit(piece, name, left - 1)
        elif len(order) == 12:
            done.set()

    for name in "ABC":
        engine.submit(piece, name, 4)
    assert engine.queued == 3 and engine.shared()  # B and C came while A was there
    gate.set()
    assert done.wait(30)
    assert order == list("ABC") * 4  # round robin: nobody goes twice while another waits
    assert engine.queued == 0
    assert not engine.shared(now=time.monotonic() + BUSY_MEMORY_S)


def test_a_session_alone_does_not_count_as_sharing():
    engine = Engine()
    for _ in range(3):
        engine.submit(lambda: None).result(timeout=30)
    assert not engine.shared()


def test_pacer_measures_the_last_seconds_and_says_when_behind():
    p = Pacer()
    assert not p.behind(10, now=0.0)  # nothing measured yet
    for k in range(31):  # 10 cycles/s for 3 s
        p.done(10 * k, now=k / 10)
    assert p.cycles_per_second == pytest.approx(100.0) and not p.behind(10, now=3.0)
    for k in range(1, 11):  # then 2 cycles/s: one cycle every half second
        p.done(300 + k, now=3.0 + k / 2)
    assert p.cycles_per_second == pytest.approx(2.0) and p.behind(10, now=8.0)  # older advances dropped


def test_session_slots_cap_count_connected_pages_and_forget_unconnected_ones():
    slots = SessionSlots(cap=2, grace=30.0)
    assert slots.take("a", now=0.0) and slots.take("b", now=1.0)
    assert not slots.take("c", now=2.0)  # full
    slots.connected("a")
    slots.release("b")  # its tab closed
    assert slots.take("c", now=3.0)
    assert not slots.take("d", now=4.0)
    # "c"'s page never connected here (its websocket went to another process): after the grace it
    # no longer counts, while the connected "a" does for as long as it is open
    assert slots.take("d", now=40.0) and slots.in_use(now=40.0) == 2
    slots.release("a")
    slots.release("a")  # idempotent
    assert slots.take("e", now=41.0) and not slots.take("f", now=42.0)


def test_max_sessions_setting(monkeypatch):
    monkeypatch.setenv("DAVIZ_MAX_SESSIONS", "3")
    assert max_sessions() == 3
    for bad in ("0", "-2", "many"):
        monkeypatch.setenv("DAVIZ_MAX_SESSIONS", bad)
        with pytest.raises(ValueError, match="DAVIZ_MAX_SESSIONS"):
            max_sessions()
    monkeypatch.delenv("DAVIZ_MAX_SESSIONS")
    assert max_sessions() >= 1


def _overloaded_explorers(count: int, monkeypatch):
    from daviz.app.explorer import Explorer

    explorers = []
    for seed in range(count):
        e = Explorer(filters=FAST, N=10, seed=seed, speed=60)
        exp = e.state.experiment
        real_step = exp.step

        def costly_step(real_step=real_step):
            real_step()
            time.sleep(CYCLE_COST_S)  # the engine's time per cycle: 60 cycles/s asked, ~100 in all given

        monkeypatch.setattr(exp, "step", costly_step)
        explorers.append(e)
    return explorers


def _look(explorers) -> None:
    """One look of every session's loop (as the served loop does), the browser drawing every frame,
    then a wait (bounded) for some engine work to finish."""
    for e in explorers:
        e.loop.tick()
        if e.plots is not None:
            e.plots.frame.tags = [e.plots.seq]
    pending = [e.loop.work for e in explorers if e.loop.work is not None]
    if pending:
        wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)


def test_overloaded_sessions_slow_down_evenly_and_say_so(monkeypatch):
    explorers = _overloaded_explorers(5, monkeypatch)
    from daviz.app.engine import ENGINE

    for e in explorers:
        e.state.play()
    most_queued = 0
    deadline = time.monotonic() + 120
    while min(e.state.cycle for e in explorers) < 40:
        assert time.monotonic() < deadline, [e.state.cycle for e in explorers]
        _look(explorers)
        most_queued = max(most_queued, ENGINE.queued)
    cycles = [e.state.cycle for e in explorers]
    assert min(cycles) >= 0.6 * max(cycles), cycles  # every session gets its turns: none starves
    assert most_queued <= len(explorers)  # at most one piece of work per session ever waits
    for e in explorers:  # 5 x 60 cycles/s asked of an engine that does ~100: each says it is behind
        assert e.state.behind and e.state.cycles_per_second < 0.9 * 60
        assert "of 60 cycles/s" in e.status_html() and "server busy" in e.status_html()

    # A pause is answered at once, even with the session's work waiting for its turn: that work is
    # cancelled, so the page says "paused" without waiting for the others' turns.
    first = explorers[0]
    first.state.pause()
    deadline = time.monotonic() + 30
    while not first.loop.idle:
        assert time.monotonic() < deadline
        _look(explorers)
    paused_at = first.state.cycle
    while min(e.state.cycle for e in explorers[1:]) < 60:
        assert time.monotonic() < deadline + 90
        _look(explorers)
    assert first.state.cycle == paused_at and "paused" in first.status_html()
    for e in explorers:
        e.close()
