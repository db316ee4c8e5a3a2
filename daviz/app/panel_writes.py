"""A workaround for a Panel 1.9.4 bug that can leave a session's last update unsent for good.

Panel queues a document's websocket writes while another write is in flight (`_WRITE_MSGS`, guarded
by `_WRITE_BLOCK`) and a task sends them later (`panel/io/document.py`, `_dispatch_msgs`). When a
queued message finds Bokeh's write lock taken, its task puts it back and retries 10 ms later; if the
task that sent the previous (large) message finishes in between, it clears `_WRITE_BLOCK`, and the
retry then returns without sending. The message waits until the next change of the document sends
it along. While playing that is the next frame; after Reset while paused nothing changes any more,
and the page stayed at "cycle 0 · pausing…" (about one Reset in eight). Panel cannot be upgraded here
(1.10 needs Python >= 3.12).

`flush_stranded_writes` finds such a message (queued, with nothing left to send it) and hands it to
Panel's own sender again, as Panel does when it queues one. The session loop calls it after every
look, so a stranded message goes out within one loop period. With another Panel, whose internals
differ, it does nothing.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

try:
    from panel.io.document import _WRITE_BLOCK, _WRITE_MSGS, _dispatch_msgs, _dispatch_write_task
except ImportError:  # another Panel: nothing to work around here
    _WRITE_MSGS = None


def flush_stranded_writes(doc) -> bool:
    """Send the document's queued messages if no task will (event loop); True if there were some."""
    if _WRITE_MSGS is None or doc is None or doc not in _WRITE_MSGS or doc in _WRITE_BLOCK:
        return False
    log.debug("re-sending %d stranded message(s)", sum(len(m) for m in _WRITE_MSGS[doc].values()))
    _WRITE_BLOCK[doc] = True
    _dispatch_write_task(doc, _dispatch_msgs, doc)
    return True
