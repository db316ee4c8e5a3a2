"""The explorer's page: controls in the sidebar, the status and the live plots in the main area.

One `Explorer` per browser session (app.py builds it inside the served script, which Panel runs once
per session), so every session owns its experiment and random streams. The state (state.py) holds
the settings and the experiment; the views (views/, plots.py) draw it; the session loop (loop.py)
runs the engine off the event loop and calls `_draw`, which redoes what changed and sends a frame.
"""
from __future__ import annotations

import html
import logging
import threading

import numpy as np
import panel as pn
import param
from bokeh.models import Div as BokehDiv

from ..experiment import climatology
from . import mnmef_weights
from .controls import Controls
from .download import run_file
from .loop import SessionLoop
from .plots import ExplorerPlots
from .state import ExplorerState
from .settings import SYSTEMS
from .url import sync_url
from .views.status import Notes, StatusLine

log = logging.getLogger(__name__)


class Explorer(pn.viewable.Viewer):
    """Ensemble data assimilation explorer: controls in the sidebar, live plots in the main area."""

    lecture = param.Boolean(default=False, label="Lecture mode (large text, fewer panels)")
    diagnostics = param.Boolean(default=False, label="Diagnostics (rank histograms, spread vs error)")

    def __init__(self, autostart: bool = True, **params):
        state_params = {k: params.pop(k) for k in list(params) if k in ExplorerState.param}
        super().__init__(**params)
        self.plots: ExplorerPlots | None = None
        self.frames = 0
        self.url_problem = ""  # URL values refused at load; shown until the user changes a setting
        self._dirty: set[str] = set()  # what `_draw` must redo: layout, status, series, localization
        self.loop = SessionLoop(draw=self._draw, on_close=self.close)
        self.state = ExplorerState(autostart=autostart, runner=self._run_later, **state_params)
        self.loop.state = self.state
        st = self.state
        self.controls = Controls(st, self, play=st.play, pause=st.pause, step=self.loop.step, reset=st.reset,
                                 download=lambda: run_file(st))
        self.status = StatusLine()
        self.notes = Notes()
        # Three persistent panes whose Bokeh layouts are swapped: panes added to a FlexBox after the page
        # has rendered lose their flex sizing (measured), panes created up front keep it.
        self._main_pane = _flex_pane(BokehDiv(text="<i>Starting the experiment…</i>"), 3, 560)
        self._side_pane = _flex_pane(BokehDiv(text=""), 2, 360)
        self._diag_pane = _flex_pane(BokehDiv(text=""), 2, 360)
        self._diag_pane.visible = False
        self._plots_area = pn.FlexBox(self._main_pane, self._side_pane, self._diag_pane, sizing_mode="stretch_width",
                                      flex_wrap="wrap", align_content="flex-start")
        # Watchers may run on an engine thread (restarts): those touching Bokeh models only mark work
        # for `_draw`, which runs on the event loop holding the document lock.
        st.param.watch(self._update_notes, ["message", "mnmef", "preset", "tuned_source"])
        st.param.watch(lambda *e: self._mark("series"), "component")
        st.param.watch(lambda *e: self._mark("localization"), ["localization", "radius"])
        st.param.watch(lambda *e: self.update_status(), "playing")
        st.param.watch(lambda *e: self._mark("layout"), "restarts")
        self.param.watch(lambda *e: self._mark("layout"), ["lecture", "diagnostics"])
        self._update_notes()
        self._sync_layout()
        self.update_status()

    # ------------------------------------------------------------------ reactions
    def _mark(self, what: str) -> None:
        self._dirty.add(what)
        self.loop.wake()

    def _run_later(self, fn) -> None:
        """The state's runner: restarts and filter swaps run in the engine thread, in order."""
        self.loop.submit(fn)
        self._mark("status")  # "restarting…"

    def _update_notes(self, *events) -> None:
        self.notes.update(self.state, self.url_problem)

    def show_url_problem(self, text: str) -> None:
        """Name the refused URL values ('' clears the note)."""
        self.url_problem = text
        self._update_notes()

    # ------------------------------------------------------------------ drawing (event loop, document held)
    def _draw(self, finished: bool) -> None:
        """Redo what changed; send a frame if the browser has drawn the last one."""
        if self._dirty:
            self._redo(self._dirty.copy())
        if self.plots is not None and self.plots.pending() and self.plots.ready():
            if self.plots.push_frame():
                self.frames += 1
            self.update_status()
        elif finished:
            self.update_status()

    def _redo(self, what: set) -> None:
        self._dirty -= what
        if "layout" in what:
            self._sync_layout()
        if what & {"layout", "status"}:
            self.update_status()
        if self.plots is None or self.state.recorder is None:
            return
        if "series" in what:
            self.plots.refresh_series()
        if "localization" in what:
            self.plots.refresh_localization()

    def _sync_layout(self) -> None:
        """Build the figures for the current system, runs and view mode (or say why there are none)."""
        st = self.state
        if st.closed or st.busy:
            return
        rec = st.recorder
        if rec is None:
            if self.plots is not None or st.experiment is None:
                self.plots = None
                self._main_pane.object = BokehDiv(text=(
                    "<i>No experiment is running: the message above says why and what is accepted.</i>"
                    if st.message else "<i>Starting the experiment…</i>"))
                self._side_pane.object = BokehDiv(text="")
                self._diag_pane.visible = False
            return
        lecture, diagnostics = self.lecture, self.diagnostics and not self.lecture
        key = ExplorerPlots.layout_key(rec, lecture, diagnostics)
        if self.plots is not None and self.plots.key == key:
            return
        first_seq = self.plots.seq if self.plots is not None else 0  # frame numbers go on across layouts
        self.plots = ExplorerPlots(st, lecture=lecture, diagnostics=diagnostics, first_seq=first_seq)
        self.plots.on_ack = self.loop.wake  # the next frame goes as soon as the browser has drawn this one
        self.status.set_lecture(lecture)
        self._main_pane.object = self.plots.main
        self._side_pane.object = self.plots.side
        if self.plots.diag is not None:
            self._diag_pane.object = self.plots.diag
        self._diag_pane.visible = self.plots.diag is not None

    def status_html(self) -> str:
        """The status line as the page would show it now."""
        st, plots, loop = self.state, self.plots, self.loop
        shown = plots.sent_upto if plots is not None and np.isfinite(plots.sent_upto) else st.cycle
        if loop.restarting:
            running = "restarting…"
        elif st.playing:
            running = f"{st.cycles_per_second:.1f} cycles/s"
        else:  # "paused" once the last cycle computed has been drawn: nothing moves after it
            settled = loop.idle and (plots is None or not plots.pending())
            running = "paused" if settled else "pausing…"
        return self.status.html(st, shown, running)

    def update_status(self) -> None:
        self.status.pane.object = self.status_html()

    # ------------------------------------------------------------------ session
    def start(self):
        """Start the session loop once the page has loaded; stop and free everything when it closes."""
        self.loop.start()
        pn.state.on_session_destroyed(lambda session_context: self.close())
        return self

    def close(self) -> None:
        """The session ended or its connection went: stop at once, release the experiment."""
        self.loop.stop()
        self.state.close()
        self.plots = None

    # ------------------------------------------------------------------ page
    def main(self):
        return [pn.Column(self.status.build(), *self.notes.build(), self._plots_area, sizing_mode="stretch_width")]

    def template(self):
        # BootstrapTemplate: everything it needs is served locally (FastListTemplate fetches a
        # Google font, which fails offline and shows up as a console error).
        return pn.template.BootstrapTemplate(
            title="daviz · ensemble data assimilation explorer",
            sidebar=self.controls.sidebar(), main=self.main(), sidebar_width=300,
            header_background="#1f4e79",
        )

    def __panel__(self):
        return pn.Row(pn.Column(*self.controls.sidebar(), width=300),
                      pn.Column(*self.main(), sizing_mode="stretch_width"))


_warmed = threading.Event()


def warm_up() -> None:
    """Once per server process, in a background thread: the climatologies behind "lost track" and the
    default MNMEF weights, so the first session does not wait for them (each takes seconds cold)."""
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


def _flex_pane(bokeh_layout, grow: int, basis: int):
    """A Bokeh layout as a flex item: panes share a row in proportion `grow` and wrap below `basis` px."""
    css = f":host {{flex: {grow} 1 {basis}px !important; width: auto !important;}}"
    return pn.pane.Bokeh(bokeh_layout, sizing_mode="stretch_width", min_width=basis, stylesheets=[css])


def create_app(**params):
    """A new explorer for the current session, its loop started, laid out in the template.

    Keyword arguments set the initial state; the page's URL (e.g. `?system=ks&N=10&speed=30&filters=
    EnKF,LETKF`) overrides them and then follows every change of the settings.
    """
    warm_up()
    try:
        explorer = Explorer(autostart=False, **params)
        sync_url(explorer)
        explorer.start()
        template = explorer.template()
    except Exception as exc:  # a bug must still give a page that says what happened, not a blank one
        log.exception("could not build the explorer")
        return pn.Column(pn.pane.HTML(f"<h3>daviz could not start this page</h3><pre>{html.escape(repr(exc))}</pre>"
                                      "<p>Reload the page; if it persists, the server log has the details.</p>"))
    template.explorer = explorer  # handy for debugging
    return template
