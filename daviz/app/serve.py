"""The served page of one session: the explorer in its template, or "server full" beyond the cap.

app.py calls `serve_page` once per session (Panel runs the script per session). Besides building
the explorer, this is where serving differs from running it in a notebook or a test: the session
cap (capacity.py), a warm-up once per server process, and the stylesheets of a page whose websocket
landed in another process than its HTML (`panel serve --num-procs`).
"""
from __future__ import annotations

import html
import logging
import threading

import panel as pn
from panel.io.resources import get_dist_path, patch_model_css

from ..experiment import climatology
from . import capacity, mnmef_weights
from .explorer import Explorer
from .settings import SYSTEMS
from .state import ExplorerState
from .url import sync_url

log = logging.getLogger(__name__)

_warmed = threading.Event()


def warm_up() -> None:
    """Once per server process, in a background thread: the climatologies behind "lost track" and the
    default MNMEF weights, so the first session does not wait for them (each takes seconds cold).
    Started by the first session, so with `--num-procs` each process starts its own after the fork."""
    if _warmed.is_set():
        return
    _warmed.set()

    def work():
        mnmef_weights.request("l96", 1.0, ExplorerState.param.N.default)
        for name in SYSTEMS.values():
            try:
                climatology(name)
            except Exception:  # noqa: BLE001 (only a warm-up: the session computes it if needed)
                log.exception("warm-up of the %s climatology failed", name)

    threading.Thread(target=work, name="daviz-warm-up", daemon=True).start()


def create_app(**params):
    """A new explorer for the current session, its loop started, laid out in the template; or the
    "server full" page when this process already runs its DAVIZ_MAX_SESSIONS sessions.

    Keyword arguments set the initial state; the page's URL (e.g. `?system=ks&N=10&speed=30&filters=
    EnKF,LETKF`) overrides them and then follows every change of the settings.
    """
    slots, key = capacity.slots(), capacity.session_key()
    if key and not slots.take(key):
        log.warning("server full: %d of %d sessions in use", slots.in_use(), slots.cap)
        return capacity.full_page(slots.in_use(), slots.cap)
    warm_up()
    try:
        explorer = Explorer(autostart=False, **params)
        sync_url(explorer, start=False)
        explorer.start()
        template = explorer.template()
    except Exception as exc:  # a bug must still give a page that says what happened, not a blank one
        log.exception("could not build the explorer")
        slots.release(key)
        return pn.Column(pn.pane.HTML(f"<h3>daviz could not start this page</h3><pre>{html.escape(repr(exc))}</pre>"
                                      "<p>Reload the page; if it persists, the server log has the details.</p>"))
    if key:
        pn.state.onload(lambda: slots.connected(key))
        explorer.when_closed(lambda: slots.release(key))
    template.explorer = explorer  # handy for debugging
    return template


def serve_page(title: str = "daviz explorer") -> None:
    """Build this session's page and mark it servable (what app.py does)."""
    doc = pn.state.curdoc
    local_stylesheets(doc)  # before building: stylesheets made from here on point here
    create_app().servable(title=title)
    local_stylesheets(doc)  # and those made while building


def local_stylesheets(doc) -> None:
    """Point the page's stylesheets at this server, as Panel does when it serves the page's HTML.

    With `--num-procs` the websocket may land in another process than the HTML; that process builds
    the session again from the websocket alone, and without the HTML's `dist_url` Panel points every
    stylesheet it makes at cdn.holoviz.org (theme, bootstrap, loading spinner), so the page loses its
    styles wherever the CDN cannot be reached. Setting `dist_url` and rewriting the URLs as Panel's
    page handler does is idempotent: for a session whose HTML came from this process nothing changes."""
    if doc is None or doc.session_context is None:
        return
    dist_url = get_dist_path(cdn=False)
    doc._template_variables.setdefault("dist_url", dist_url)  # what Panel's theme code reads later
    for root in doc.roots:
        patch_model_css(root, dist_url=doc._template_variables["dist_url"])
