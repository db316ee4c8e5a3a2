"""MNMEF for the explorer: weights load once per process in a background thread, never on the event loop.

Importing torch and reading a checkpoint can take many seconds on a cold machine; done inside a
session's callback it froze every session of the server. Here the first request for a (system, σ_y,
N) starts the load in a worker thread and answers "loading"; the session builds its experiment
without MNMEF and restarts once `ready` says so. Each session then gets its own filter object
(its own `last_localization`) around the shared, read-only cached model.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnmef-load")
_futures: dict[tuple, Future] = {}
_lock = threading.Lock()
LOADING = "loading"


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


def get_filter(system: str, sigma_y: float, N: int):
    """(filter, info) when loaded, (None, LOADING) while loading, (None, reason) when unavailable."""
    key = (system, float(sigma_y), int(N))
    fut = _future(key)
    if not fut.done():
        return None, LOADING
    exc = fut.exception()
    if exc is not None:
        with _lock:
            _futures.pop(key, None)  # the next restart tries again: weights shipped meanwhile are found
        return None, _reason(exc)
    try:  # cached model: a fresh per-session filter object costs nothing
        return _load(key)
    except Exception as exc:  # noqa: BLE001 (any failure is reported, never raised into the app)
        return None, _reason(exc)


def preload(keys) -> None:
    """Load these (system, σ_y, N) in the background, e.g. the defaults, when the server starts."""
    for key in keys:
        request(*key)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        return f"the torch code is not installed ({exc})"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text


def describe(info, ok: bool) -> str:
    """One line for the page: which weights MNMEF uses, that they are loading, or why it is unavailable."""
    if info == LOADING:
        return "MNMEF: loading the learned filter's weights…"
    if not ok or not isinstance(info, dict):
        return f"MNMEF unavailable: {info}"
    text = str(info.get("file", "?"))
    variant, trained, pre = info.get("variant"), info.get("trained_N"), info.get("pretrained_N")
    if variant == "finetuned":
        text += f" (pretrained at N={pre}, heads fine-tuned for N={trained})"
    elif variant:
        text += f" ({variant}, trained at N={trained if trained is not None else pre})"
    return f"MNMEF weights: {text}"
