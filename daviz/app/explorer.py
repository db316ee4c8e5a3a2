"""The explorer's page: controls in the sidebar, the status and the live plots in the main area.

One `Explorer` per browser session (serve.py builds it inside the served script, which Panel runs once
per session), so every session owns its experiment and random streams. The state (state.py) holds
the settings and the experiment; the views (views/, plots.py) draw it; the session loop (loop.py)
runs the engine off the event loop and calls `_draw`, which redoes what changed and sends a frame.
"""
from __future__ import annotations

import numpy as np
import panel as pn
import param
from bokeh.models import Div as BokehDiv

from .controls import Controls
from .download import run_file
from .engine import ENGINE
from .loop import SessionLoop
from .plots import ExplorerPlots
from .state import ExplorerState
from .views.status import Notes, StatusLine, speed_text


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
        self._closed_callbacks: list = []
        self._built: ExplorerPlots | None = None  # figures the engine built, not shown yet
        self._building = False
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
        built, self._built = self._built, None
        if built is not None and built.key == key:
            self._show(built)
        elif self.loop.doc is None:  # not served (tests, notebooks): build here and now
            self._show(ExplorerPlots(st, lecture=lecture, diagnostics=diagnostics))
        elif not self._building:
            # Served: building the figures takes ~0.5 s, which on the event loop would hold up every
            # session's clicks (a class opening the link at once); the engine builds them in its turn.
            self._building = True
            self.loop.submit(lambda: self._build(lecture, diagnostics))

    def _build(self, lecture: bool, diagnostics: bool) -> None:
        """On the engine: the figures for the current recorder; `_sync_layout` shows them if still wanted."""
        try:
            if self.state.recorder is not None and not self.state.closed:
                self._built = ExplorerPlots(self.state, lecture=lecture, diagnostics=diagnostics)
        finally:
            self._building = False
            self._mark("layout")

    def _show(self, plots: ExplorerPlots) -> None:
        """Swap the page's figures for `plots` (event loop, document held)."""
        if self.plots is not None:  # frame numbers go on across layouts
            plots.seq = plots.acked = self.plots.seq
        self.plots = plots
        plots.on_ack = self.loop.wake  # the next frame goes as soon as the browser has drawn this one
        self.status.set_lecture(plots.lecture)
        self._main_pane.object = plots.main
        self._side_pane.object = plots.side
        if plots.diag is not None:
            self._diag_pane.object = plots.diag
        self._diag_pane.visible = plots.diag is not None

    def status_html(self) -> str:
        """The status line as the page would show it now."""
        st, plots, loop = self.state, self.plots, self.loop
        shown = plots.sent_upto if plots is not None and np.isfinite(plots.sent_upto) else st.cycle
        if loop.restarting:
            running = "restarting…"
        elif st.playing:
            running = speed_text(st.cycles_per_second, st.speed, st.behind, ENGINE.shared())
        else:  # "paused" once the last cycle computed has been drawn: nothing moves after it
            settled = loop.idle and (plots is None or not plots.pending())
            running = "paused" if settled else "pausing…"
        return self.status.html(st, shown, running)

    def update_status(self) -> None:
        self.status.pane.object = self.status_html()

    # ------------------------------------------------------------------ session
    def start(self):
        """Start the session loop once the page has loaded; stop and free everything when it closes.

        Without an experiment yet (the served page: sync_url leaves it to here), the first one is
        built by the loop's first piece of engine work, once the page has loaded: never on the event
        loop, where a class opening the link at once would queue every click behind the builds, and
        never for a session whose page connected to another server process (`--num-procs`)."""
        if self.state.experiment is None and not self.state.restarting:
            self.state.request_restart()  # the loop has no document yet: this waits for its first look
        self.loop.start()
        pn.state.on_session_destroyed(lambda session_context: self.close())
        return self

    def when_closed(self, fn) -> None:
        """Call fn() once the session has closed (its slot on the server is free again)."""
        self._closed_callbacks.append(fn)

    def close(self) -> None:
        """The session ended or its connection went: stop at once, release the experiment."""
        self.loop.stop()
        self.state.close()
        self.plots = None
        while self._closed_callbacks:
            self._closed_callbacks.pop()()

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


def _flex_pane(bokeh_layout, grow: int, basis: int):
    """A Bokeh layout as a flex item: panes share a row in proportion `grow` and wrap below `basis` px."""
    css = f":host {{flex: {grow} 1 {basis}px !important; width: auto !important;}}"
    return pn.pane.Bokeh(bokeh_layout, sizing_mode="stretch_width", min_width=basis, stylesheets=[css])
