"""The explorer's view: widgets, a Panel template, and the session loop that keeps the plots live.

One `Explorer` per browser session (app.py builds it inside the served script, which Panel runs once
per session), so every session owns its experiment and random streams.

The session loop (`_loop`, every LOOP_MS) never blocks the event loop: it hands the numerical work to
a worker thread and returns, and pushes a frame only when the browser has acknowledged the previous
one (plots.py / frames.py). Bokeh runs every session callback holding the document lock for as long
as the callback runs; the earlier design awaited the engine inside the callback, so under load the
lock was held almost all the time, clicks (Pause) queued behind whole ticks, and frames piled up in
the websocket. Now the lock is held for milliseconds and at most one small frame is in flight.
"""
from __future__ import annotations

import datetime as _dt
import html
import io
import logging
import subprocess
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import panel as pn
import param
from bokeh.models import Div as BokehDiv
from panel.io.state import set_curdoc

from .. import __version__
from ..experiment import climatology
from . import mnmef_weights
from .plots import ExplorerPlots
from .presets import explanation
from .runs import RUNS
from .settings import SIGMA_BOUNDS, SYSTEMS
from .state import ExplorerState
from .url import sync_url

log = logging.getLogger(__name__)

LOOP_MS = 50  # how often the session loop looks for work; each look takes well under a millisecond
# Engine work of all sessions; numpy releases the GIL in its kernels, so two threads use two cores.
ENGINE = ThreadPoolExecutor(max_workers=4, thread_name_prefix="daviz-engine")

CSS = """
.daviz-status {font-family: ui-monospace, SFMono-Regular, Menlo, monospace; line-height: 1.6;}
.daviz-status .bad {color: #b00020; font-weight: 600;}
.daviz-status .win {color: #555;}
"""


def _code_version() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"daviz {__version__}" + (f" ({commit})" if commit else "")


ALERT_CSS = ":host(.daviz-alert) {{background: {bg}; color: {fg}; border: 1px solid {border}; border-radius: 6px; " \
            "padding: 4px 12px; font-size: 14px;}}"


class Explorer(pn.viewable.Viewer):
    """Ensemble data assimilation explorer: controls in the sidebar, live plots in the main area."""

    lecture = param.Boolean(default=False, label="Lecture mode (large text, fewer panels)")
    diagnostics = param.Boolean(default=False, label="Diagnostics (rank histograms, spread vs error)")

    def __init__(self, autostart: bool = True, **params):
        state_params = {k: params.pop(k) for k in list(params) if k in ExplorerState.param}
        super().__init__(**params)
        self.plots: ExplorerPlots | None = None
        self._work: Future | None = None
        self._jobs: deque = deque()  # restarts and filter swaps, run in order before any more cycles
        self._steps_owed = 0
        self._dirty: set[str] = set()  # what the loop must redo on the event loop: layout, series, localization
        self._woken = False
        self._doc = None
        self.url_problem = ""  # URL values refused at load; shown until the user changes a setting
        self.state = ExplorerState(autostart=autostart, runner=self._run_later, **state_params)
        self._callback = None
        self._was_connected = False
        self.frames = 0
        self._build_widgets()
        # Three persistent panes whose Bokeh layouts are swapped: panes added to a FlexBox after the page
        # has rendered lose their flex sizing (measured), panes created up front keep it.
        self._main_pane = _flex_pane(BokehDiv(text="<i>Starting the experiment…</i>"), 3, 560)
        self._side_pane = _flex_pane(BokehDiv(text=""), 2, 360)
        self._diag_pane = _flex_pane(BokehDiv(text=""), 2, 360)
        self._diag_pane.visible = False
        self._plots_area = pn.FlexBox(self._main_pane, self._side_pane, self._diag_pane, sizing_mode="stretch_width",
                                      flex_wrap="wrap", align_content="flex-start")
        # Watchers may run on an engine thread (restarts): those touching Bokeh models only mark work
        # for the loop, which runs on the event loop holding the document lock.
        self.state.param.watch(self._on_message, ["message", "mnmef", "preset", "tuned_source"])
        self.state.param.watch(lambda *e: self._mark("series"), "component")
        self.state.param.watch(lambda *e: self._mark("localization"), ["localization", "radius"])
        self.state.param.watch(self._on_playing, "playing")
        self.state.param.watch(lambda *e: self._mark("layout"), "restarts")
        self.param.watch(lambda *e: self._mark("layout"), ["lecture", "diagnostics"])
        self._on_message()
        self._on_playing()
        self._sync_layout()
        self._update_status()

    # ------------------------------------------------------------------ widgets
    def _build_widgets(self):
        p = self.state.param
        W = pn.widgets
        self.w_system = W.Select.from_param(p.system, sizing_mode="stretch_width")
        self.w_preset = W.Select.from_param(p.preset, sizing_mode="stretch_width")
        self.w_N = W.IntSlider.from_param(p.N, sizing_mode="stretch_width")
        # σ_y and seed are typed: a text box that refuses bad values visibly (a numeric box would
        # silently clamp them, or drop the dot of "2.5" into 25).
        self.w_sigma = self._typed_input("sigma_y", float, f"a number from {SIGMA_BOUNDS[0]} to {SIGMA_BOUNDS[1]}")
        self.w_seed = self._typed_input("seed", int, "a whole number from 0 to 2³²−1")
        self.w_loc = W.RadioButtonGroup.from_param(p.localization, sizing_mode="stretch_width")
        self.w_radius = W.FloatSlider.from_param(p.radius, sizing_mode="stretch_width")
        self.w_infl_mode = W.RadioButtonGroup.from_param(p.inflation_mode, sizing_mode="stretch_width")
        self.w_infl = W.FloatSlider.from_param(p.inflation, sizing_mode="stretch_width")
        self.w_filters = W.CheckBoxGroup.from_param(p.filters, inline=False)
        self.w_speed = W.IntSlider.from_param(p.speed, sizing_mode="stretch_width")
        self.w_component = W.IntSlider.from_param(p.component, sizing_mode="stretch_width")
        self.w_lecture = W.Toggle.from_param(self.param.lecture, label="Lecture mode", sizing_mode="stretch_width")
        self.w_diag = W.Toggle.from_param(self.param.diagnostics, label="Diagnostics", sizing_mode="stretch_width")
        self.b_play = W.Button(label="Play", color="primary", width=60, margin=(5, 2))
        self.b_pause = W.Button(label="Pause", color="default", width=60, margin=(5, 2))
        self.b_step = W.Button(label="Step", color="default", width=60, margin=(5, 2))
        self.b_reset = W.Button(label="Reset", color="warning", width=60, margin=(5, 2))
        self.b_play.on_click(lambda e: self.state.play())
        self.b_pause.on_click(lambda e: self.state.pause())
        self.b_step.on_click(self._on_step)
        self.b_reset.on_click(lambda e: self.state.reset())
        self.download = W.FileDownload(callback=self._download, filename="daviz_run.npz", label="Download this run (.npz)",
                                       color="light", sizing_mode="stretch_width")

        self.status = pn.pane.HTML("", css_classes=["daviz-status"], sizing_mode="stretch_width",
                                   stylesheets=[CSS], margin=(0, 10), styles={"font-size": "13px"})
        # HTML panes, not Markdown alerts: user text (URL values) is escaped and shown as typed; a
        # Markdown pane would turn "[text](url)" into a link and "![x](url)" into a remote image.
        self.message = pn.pane.HTML("", visible=False, sizing_mode="stretch_width", margin=(2, 10),
                                    stylesheets=[ALERT_CSS.format(bg="#fff3cd", fg="#664d03", border="#ffecb5")],
                                    css_classes=["daviz-alert"])
        self.explain = pn.pane.HTML("", visible=False, sizing_mode="stretch_width", margin=(2, 10),
                                    stylesheets=[ALERT_CSS.format(bg="#cff4fc", fg="#055160", border="#b6effb")],
                                    css_classes=["daviz-alert"])
        self.info = pn.pane.HTML("", sizing_mode="stretch_width", styles={"font-size": "12px"}, margin=(0, 10))

    def _typed_input(self, name: str, convert, accepted: str):
        """A text box bound to a state parameter; a rejected value shows what is accepted and is undone."""
        widget = pn.widgets.TextInput(label=self.state.param[name].label, value=str(getattr(self.state, name)),
                                      sizing_mode="stretch_width")

        def on_text(event):
            text = event.new.strip()
            try:
                value = convert(text)
                if convert is float and not np.isfinite(value):
                    raise ValueError
                self.state.param[name]._validate(value)
            except Exception:
                widget.value = str(getattr(self.state, name))
                self.state.message = f"{self.state.param[name].label}: {text!r} refused; it must be {accepted}."
                return
            if value != getattr(self.state, name):
                self.state.message = ""
                setattr(self.state, name, value)

        widget.param.watch(on_text, "value")
        self.state.param.watch(lambda e: setattr(widget, "value", str(e.new)), name)
        return widget

    # ------------------------------------------------------------------ reactions
    def _on_step(self, event=None):
        self.state.pause()
        self._steps_owed += 1
        self._wake()

    def _on_playing(self, *events):
        playing = self.state.playing
        self.b_play.disabled = playing
        self.b_pause.disabled = not playing
        self._update_status()

    def _mark(self, what: str) -> None:
        self._dirty.add(what)
        self._wake()

    def _run_later(self, fn) -> None:
        """The state's runner: restarts and filter swaps run in the engine thread, in order."""
        self._jobs.append(fn)
        self._mark("status")  # "restarting…"

    def _on_message(self, *events):
        st = self.state
        # Everything shown here may contain user text (URL values): escaped, never rendered as markup.
        lines = [text for text in (self.url_problem, st.message) if text]
        self.message.object = "<br>".join(html.escape(text) for text in lines)
        self.message.visible = bool(lines)
        lines = explanation(st.preset)
        if lines:
            self.explain.object = f"<b>{html.escape(st.preset)}.</b> {html.escape(lines[0])}<br>{html.escape(lines[1])}"
        self.explain.visible = bool(lines)
        info = []
        if "MNMEF" in st.filters and st.mnmef_status:
            info.append(st.mnmef_status)
        if st.tuned_source:
            info.append(f"Baselines' tuned inflation/radius: {st.tuned_source}.")
        self.info.object = "<br>".join(html.escape(s) for s in info)

    # ------------------------------------------------------------------ layout
    def _sync_layout(self):
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
        self.plots.on_ack = self._wake  # the next frame goes as soon as the browser has drawn this one
        self.status.styles = {"font-size": "18px" if lecture else "13px"}
        self._main_pane.object = self.plots.main
        self._side_pane.object = self.plots.side
        if self.plots.diag is not None:
            self._diag_pane.object = self.plots.diag
        self._diag_pane.visible = self.plots.diag is not None

    def _update_status(self):
        self.status.object = self._status_html()

    def _status_html(self) -> str:
        """Cycle, speed and each run's R-RMSE, from the recorder (one consistent snapshot, whatever the
        engine thread is doing)."""
        st, rec = self.state, self.state.recorder
        title = rec.system.title if rec is not None else st.sys.title
        shown = self.plots.sent_upto if self.plots is not None and np.isfinite(self.plots.sent_upto) else st.cycle
        if st.restarting or self._jobs:
            running = "restarting…"
        elif st.playing:
            running = f"{st.cycles_per_second:.1f} cycles/s"
        else:  # "paused" once the last cycle computed has been drawn: nothing moves after it
            settled = self._work is None and not self._steps_owed and (self.plots is None or not self.plots.pending())
            running = "paused" if settled else "pausing…"
        parts = [f"<b>{html.escape(title)}</b>, N={st.experiment.N if st.experiment else st.N}",
                 f"<b>cycle <span id='daviz-cycle'>{int(shown)}</span></b>",
                 f"<span id='daviz-running'>{running}</span>"]
        for label, rr, win, status in (rec.summary() if rec is not None else []):
            name = f"<span style='color:{RUNS[label].color}'>■</span> {html.escape(label)}"
            if status:
                parts.append(f"{name} <span class='bad'>{status}</span>")
                continue
            text = "–" if not np.isfinite(rr) else f"{rr:.3f}"
            if np.isfinite(win) and rec.last_cycle > rec.window:
                text += f" <span class='win'>(last {rec.window}: {win:.3f})</span>"
            parts.append(f"{name} {text}")
        return "<span id='daviz-status'>" + " &nbsp;·&nbsp; ".join(parts) + "</span>"

    # ------------------------------------------------------------------ the session loop
    def _wake(self) -> None:
        """Run the loop soon on the event loop (callable from any thread), instead of at the next look."""
        doc = self._doc
        if doc is None or self._woken or self.state.closed:
            return
        self._woken = True
        with set_curdoc(doc):
            pn.state.execute(self._loop_woken, schedule=True)

    def _loop_woken(self) -> None:
        self._woken = False
        self._loop()

    def _loop(self):
        """One look: start engine work off the event loop, redo what changed, push a frame if the
        browser has drawn the last one. Takes well under a millisecond when nothing is due."""
        st = self.state
        if st.closed:
            return
        if self._connection_lost():
            self._cleanup(None)
            return
        finished = self._work is not None and self._work.done()
        if finished:
            exc = self._work.exception()
            self._work = None
            if exc is not None:
                log.error("engine work failed", exc_info=exc)
                st.pause()
                st.message = f"update failed: {exc}"
        if self._work is None and not self._jobs and st.mnmef_arrived():
            st.request_restart()  # the weights arrived: rebuild with MNMEF
        if self._work is None:
            self._work = self._next_work()
            if self._work is not None:
                self._work.add_done_callback(lambda f: self._wake())
        with pn.io.hold(self._doc):
            if self._dirty:
                self._redo(self._dirty.copy())
            if self.plots is not None and self.plots.pending() and self.plots.ready():
                if self.plots.push_frame():
                    self.frames += 1
                self._update_status()
            elif finished:
                self._update_status()

    def _next_work(self) -> Future | None:
        st = self.state
        if self._jobs:
            return ENGINE.submit(self._jobs.popleft())
        if st.restarting:
            return None
        if self._steps_owed:
            self._steps_owed -= 1
            return ENGINE.submit(st.advance, 1)
        n = st.cycles_due()
        return ENGINE.submit(st.advance, n, True) if n > 0 else None

    def _redo(self, what: set) -> None:
        self._dirty -= what
        if "layout" in what:
            self._sync_layout()
        if what & {"layout", "status"}:
            self._update_status()
        if self.plots is None or self.state.recorder is None:
            return
        if "series" in what:
            self.plots.refresh_series()
        if "localization" in what:
            self.plots.refresh_localization()

    def _connection_lost(self) -> bool:
        """True once the browser that had this session has gone (tab closed, network lost)."""
        session = getattr(getattr(self._doc, "session_context", None), "_session", None)
        if session is None:
            return False
        if session.connection_count > 0:
            self._was_connected = True
            return False
        return self._was_connected or session.destroyed

    def start(self):
        """Start the session loop once the page has loaded; stop and free everything when it closes."""
        self._doc = pn.state.curdoc
        if self._callback is None:
            self._callback = pn.state.add_periodic_callback(self._loop, period=LOOP_MS, start=False)
            # A background callback does not flag the session busy: otherwise the template's busy
            # indicator would spin for as long as the app plays.
            if hasattr(self._callback, "_background"):
                self._callback._background = True
            pn.state.onload(self._callback.start)
            pn.state.on_session_destroyed(self._cleanup)
        return self

    def _cleanup(self, session_context):
        """The session ended or its connection went: stop at once, release the experiment."""
        if self._callback is not None:
            try:
                self._callback.stop()
            except Exception:  # noqa: BLE001 (already stopped by Panel)
                pass
            self._callback = None
        self.state.close()
        self.plots = None
        session = getattr(getattr(self._doc, "session_context", None), "_session", None)
        if session is not None and not session.destroyed:
            session.request_expiration()  # let Bokeh discard the document at its next sweep
        self._doc = None

    # ------------------------------------------------------------------ download
    def _download(self):
        st = self.state
        if st.recorder is None:
            st.message = "nothing to download: no experiment is running"
            return None
        settings = {**st.settings(), "cycle": st.cycle, "window": st.window, "code_version": _code_version(),
                    "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "runs": [s.label for s in st.runs], "mnmef": st.mnmef_status}
        return io.BytesIO(st.recorder.to_npz(settings))

    # ------------------------------------------------------------------ page
    def sidebar(self):
        buttons = pn.Row(self.b_play, self.b_pause, self.b_step, self.b_reset, margin=(5, 0))
        filter_help = pn.pane.HTML(
            "<small>" + "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(v.help)}" for k, v in RUNS.items())
            + "</small>",
            margin=(0, 10))
        return [
            buttons, self.w_speed, self.w_preset, pn.Row(self.w_lecture, self.w_diag, sizing_mode="stretch_width"),
            pn.layout.Divider(margin=(2, 0)),
            self.w_system, self.w_N, pn.Row(self.w_sigma, self.w_seed, sizing_mode="stretch_width"),
            pn.pane.Markdown("**Localization** (EnKF, LETKF)", margin=(0, 10)), self.w_loc, self.w_radius,
            pn.pane.Markdown("**Inflation** (baselines)", margin=(0, 10)), self.w_infl_mode, self.w_infl,
            pn.layout.Divider(margin=(2, 0)),
            pn.pane.Markdown("**Filters**", margin=(0, 10)), self.w_filters, filter_help,
            pn.layout.Divider(margin=(2, 0)),
            self.w_component, self.download,
        ]

    def main(self):
        return [pn.Column(self.status, self.info, self.explain, self.message, self._plots_area,
                          sizing_mode="stretch_width")]

    def template(self):
        # BootstrapTemplate: everything it needs is served locally (FastListTemplate fetches a
        # Google font, which fails offline and shows up as a console error).
        return pn.template.BootstrapTemplate(
            title="daviz · ensemble data assimilation explorer",
            sidebar=self.sidebar(), main=self.main(), sidebar_width=300,
            header_background="#1f4e79",
        )

    def __panel__(self):
        return pn.Row(pn.Column(*self.sidebar(), width=300), pn.Column(*self.main(), sizing_mode="stretch_width"))


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
