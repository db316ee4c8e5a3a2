"""MNMEF for the explorer: weights load once per process in a background thread, never on the event loop.

Importing torch and reading a checkpoint can take many seconds on a cold machine; done inside a
session's callback it froze every session of the server. Here the first request for a (system, σ_y,
N) starts the load in a worker thread and answers `MnmefState.LOADING`; the session builds its
experiment without MNMEF and restarts once `ready` says so. Each session then gets its own filter
object (its own `last_localization`) around the shared, read-only cached model.

`MnmefState` is what the page knows about MNMEF (off, loading, ready with these weights, unavailable
and why); views read its `phase`, never its text.
"""
from __future__ import annotations

import enum
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnmef-load")
_futures: dict[tuple, Future] = {}
_lock = threading.Lock()


class MnmefPhase(enum.Enum):
    OFF = "off"  # MNMEF is not among the selected runs
    LOADING = "loading"  # its weights are loading in the background: it joins by a restart when they are in
    READY = "ready"  # it runs with `MnmefState.weights`
    UNAVAILABLE = "unavailable"  # no usable weights (or no torch): the other runs go on; `reason` says why


@dataclass(frozen=True)
class MnmefState:
    phase: MnmefPhase
    reason: str = ""  # UNAVAILABLE: why, in one line
    weights: dict = field(default_factory=dict)  # READY: file, variant, trained_N, pretrained_N, ...

    @property
    def text(self) -> str:
        """One line for the page: which weights MNMEF uses, that they are loading, or why it is unavailable."""
        if self.phase is MnmefPhase.OFF:
            return ""
        if self.phase is MnmefPhase.LOADING:
            return "MNMEF: loading the learned filter's weights…"
        if self.phase is MnmefPhase.UNAVAILABLE:
            return f"MNMEF unavailable: {self.reason}"
        info = self.weights
        text = str(info.get("file", "?"))
        variant, trained, pre = info.get("variant"), info.get("trained_N"), info.get("pretrained_N")
        if variant == "finetuned":
            text += f" (pretrained at N={pre}, heads fine-tuned for N={trained})"
        elif variant:
            text += f" ({variant}, trained at N={trained if trained is not None else pre})"
        return f"MNMEF weights: {text}"

    @classmethod
    def unavailable(cls, reason: str) -> MnmefState:
        return cls(MnmefPhase.UNAVAILABLE, reason=reason)


MnmefState.OFF = MnmefState(MnmefPhase.OFF)
MnmefState.LOADING = MnmefState(MnmefPhase.LOADING)


def _load(key: tuple):
    import torch  # noqa: PLC0415 (heavy, optional)

    if torch.get_num_threads() > 1:
        torch.set_num_threads(1)  # tiny matrices: threads add overhead and steal the server's cores
    from ..mnmef.pretrained import load_filter  # noqa: PLC0415

    return load_filter(*key, variant="auto")


def _future(key: tuple) -> Future:
    with _lock:
        fut = _futures.get(key)
        if fut is None:
            fut = _futures[key] = _executor.submit(_load, key)
        return fut


def request(system: str, sigma_y: float, N: int) -> None:
    """Start loading in the background (no-op if loaded or loading)."""
    _future((system, float(sigma_y), int(N)))


def ready(system: str, sigma_y: float, N: int) -> bool:
    """Whether a request for these weights has finished (loaded or failed)."""
    fut = _futures.get((system, float(sigma_y), int(N)))
    return fut is not None and fut.done()


def get_filter(system: str, sigma_y: float, N: int) -> tuple[object | None, MnmefState]:
    """(filter, READY state) when loaded, (None, LOADING) while loading, (None, UNAVAILABLE) otherwise."""
    key = (system, float(sigma_y), int(N))
    fut = _future(key)
    if not fut.done():
        return None, MnmefState.LOADING
    exc = fut.exception()
    if exc is not None:
        with _lock:
            _futures.pop(key, None)  # the next restart tries again: weights shipped meanwhile are found
        return None, MnmefState.unavailable(_reason(exc))
    try:  # cached model: a fresh per-session filter object costs nothing
        filt, info = _load(key)
    except Exception as exc:  # noqa: BLE001 (any failure is reported, never raised into the app)
        return None, MnmefState.unavailable(_reason(exc))
    return filt, MnmefState(MnmefPhase.READY, weights=info)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        return f"the torch code is not installed ({exc})"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text
