"""Panel 1.9.4's queued websocket writes, raced as in the served app, and daviz's workaround
(daviz/app/panel_writes.py): a message queued while a large one is in flight is stranded when Bokeh's
write lock is taken at the wrong moment; `flush_stranded_writes` sends it.

The race is replayed step by step on one asyncio loop with a fake connection whose writes complete
when the test says so: deterministic, no timing."""
from __future__ import annotations

import asyncio

import pytest

document = pytest.importorskip("panel.io.document")
from bokeh.document import Document  # noqa: E402

from daviz.app.panel_writes import flush_stranded_writes  # noqa: E402


class _Lock:
    """What Panel reads of Bokeh's write lock: `_block._value == 0` while a Bokeh write holds it."""

    def __init__(self):
        self._block = type("Semaphore", (), {"_value": 1})()

    def hold(self, held: bool) -> None:
        self._block._value = 0 if held else 1


class _Socket:
    def __init__(self):
        self.write_lock = _Lock()


class _Protocol:
    @staticmethod
    def create(kind, events):
        return events[0]  # the "message" is the event's name, enough to see what was sent


class _Connection:
    def __init__(self):
        self._socket = _Socket()
        self.protocol = _Protocol()


async def _settled(doc, timeout: float = 10.0) -> None:
    """Until Panel's write tasks for doc have all run."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(not task.done() for task in document._write_tasks.get(doc, [])):
        assert loop.time() < deadline, "Panel's write tasks did not finish"
        await asyncio.sleep(0.001)


def test_a_message_stranded_by_panels_write_race_is_sent(monkeypatch):
    sent, in_flight = [], []

    def write(conn, msg=None):  # the fake websocket: each write completes when the test resolves it
        sent.append(msg)
        future = asyncio.get_running_loop().create_future()
        in_flight.append(future)
        return [future]

    monkeypatch.setitem(document.extra_socket_handlers, _Socket, write)
    doc, conn = Document(), _Connection()

    async def race():
        document.schedule_write_events(doc, [conn], ["large frame"])
        await asyncio.sleep(0)  # its task sends it; the write is in flight
        assert sent == ["large frame"]
        conn._socket.write_lock.hold(True)  # Bokeh writes a reply meanwhile
        document.schedule_write_events(doc, [conn], ["status: paused"])
        await asyncio.sleep(0)  # its task finds the lock taken: queued again, retried in 10 ms
        conn._socket.write_lock.hold(False)
        in_flight[0].set_result(None)  # the large frame is out: its task clears the write block
        await _settled(doc)
        assert sent == ["large frame"] and doc in document._WRITE_MSGS  # stranded: Panel's bug
        assert flush_stranded_writes(doc)
        await asyncio.sleep(0)  # Panel's sender runs again and writes it
        for future in in_flight[1:]:
            future.set_result(None)
        await _settled(doc)

    asyncio.run(race())
    assert sent == ["large frame", "status: paused"]
    assert doc not in document._WRITE_MSGS and doc not in document._WRITE_BLOCK
    assert not flush_stranded_writes(doc)  # nothing left: nothing to do
