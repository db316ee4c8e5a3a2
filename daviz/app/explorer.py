"""The explorer's view: widgets from the state's parameters, a Panel template, the periodic tick.

One `Explorer` per browser session (app.py builds it inside the served script, which Panel runs
once per session), so every session owns its experiment and random streams. The tick runs the
numerical step in a worker thread (`asyncio.to_thread`), never overlaps itself, and pushes all
source updates inside one `pn.io.hold()` so the browser gets one message per tick.
"""
from __future__ import annotations

import asyncio
import html
import logging

import numpy as np
import panel as pn
import param

from .plots import ExplorerPlots
from .presets import NO_PRESET, explanation
from .state import RUNS, ExplorerState

log = logging.getLogger(__name__)

# At most 4 pushes per second; faster speeds run several cycles per push. Each push carries every
# Hovmöller image (~700 KB with five filters): at 10 pushes/s a slow browser falls behind, its queue of
# frames grows and clicks (Pause) wait behind it. 250 ms keeps the page responsive.
TICK_MS = 250

CSS = """
.daviz-status {font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px;}
.daviz-status .div {color: #b00020; font-weight: 600;}
"""


class Explorer(pn.viewable.Viewer):
    """Ensemble data assimilation explorer: controls in the sidebar, live plots in the main area."""

    def __init__(self, **params):
        state_params = {k: params.pop(k) for k in list(params) if k in ExplorerState.param}
        super().__init__(**params)
        self.state = ExplorerState(**state_params)
        self._ticking = False
        self._callback = None
        self.ticks = 0
        self._build_widgets()
        self.plots = ExplorerPlots(self.state)
        self._main_pane = pn.pane.Bokeh(self.plots.main, sizing_mode="fixed")
        self._side_pane = pn.pane.Bokeh(self.plots.side, sizing_mode="fixed")
        self.state.param.watch(self._on_restart, "restarts")
        self.state.param.watch(self._on_message, ["message", "mnmef_status", "preset", "tuned_source"])
        self.state.param.watch(lambda *e: self.refresh(), ["component", "localization", "radius"])
        self.state.param.watch(self._on_playing, "playing")
        self._on_message()
        self._on_playing()
        self.refresh()

    # ------------------------------------------------------------------ widgets
    def _build_widgets(self):
        p = self.state.param
        W = pn.widgets
        self.w_system = W.Select.from_param(p.system, sizing_mode="stretch_width")
        self.w_preset = W.Select.from_param(p.preset, sizing_mode="stretch_width")
        self.w_N = W.IntSlider.from_param(p.N, sizing_mode="stretch_width")
        self.w_sigma = W.FloatInput.from_param(p.sigma_y, step=0.1, start=0.05, end=10.0,
                                             sizing_mode="stretch_width")
        self.w_seed = W.IntInput.from_param(p.seed, sizing_mode="stretch_width")
        self.w_loc = W.RadioButtonGroup.from_param(p.localization, sizing_mode="stretch_width")
        self.w_radius = W.FloatSlider.from_param(p.radius, sizing_mode="stretch_width")
        self.w_infl_mode = W.RadioButtonGroup.from_param(p.inflation_mode, sizing_mode="stretch_width")
        self.w_infl = W.FloatSlider.from_param(p.inflation, sizing_mode="stretch_width")
        self.w_filters = W.CheckBoxGroup.from_param(p.filters, inline=False)
        self.w_speed = W.IntSlider.from_param(p.speed, sizing_mode="stretch_width")
        self.w_component = W.IntSlider.from_param(p.component, sizing_mode="stretch_width")
        self.b_play = W.Button(label="Play", color="primary", width=58, margin=(5, 3))
        self.b_pause = W.Button(label="Pause", color="default", width=58, margin=(5, 3))
        self.b_step = W.Button(label="Step", color="default", width=58, margin=(5, 3))
        self.b_reset = W.Button(label="Reset", color="warning", width=58, margin=(5, 3))
        self.b_play.on_click(lambda e: self.state.play())
        self.b_pause.on_click(lambda e: self.state.pause())
        self.b_step.on_click(self._on_step)
        self.b_reset.on_click(lambda e: self.state.reset())

        self.status = pn.pane.HTML("", css_classes=["daviz-status"], sizing_mode="stretch_width",
                                   stylesheets=[CSS], margin=(0, 10))
        self.message = pn.pane.Alert("", alert_type="warning", visible=False, sizing_mode="stretch_width",
                                     margin=(2, 10))
        self.explain = pn.pane.Alert("", alert_type="info", visible=False, sizing_mode="stretch_width",
                                     margin=(2, 10))
        self.info = pn.pane.Markdown("", sizing_mode="stretch_width", styles={"font-size": "12px"}, margin=(0, 10))

    def _on_step(self, event=None):
        self.state.step(1)
        self.refresh()

    def _on_playing(self, *events):
        playing = self.state.playing
        self.b_play.disabled = playing
        self.b_pause.disabled = not playing

    def _on_restart(self, *events):
        self.refresh()

    def _on_message(self, *events):
        st = self.state
        self.message.object = html.escape(st.message)
        self.message.visible = bool(st.message)
        lines = explanation(st.preset)
        if lines:
            self.explain.object = f"<b>{html.escape(st.preset)}.</b> {html.escape(lines[0])}<br>{html.escape(lines[1])}"
        self.explain.visible = bool(lines)
        info = [st.mnmef_status or ("MNMEF not selected." if "MNMEF" not in st.filters else "")]
        if st.tuned_source:
            info.append(f"Tuned inflation/radius: {st.tuned_source}.")
        self.info.object = "  \n".join(html.escape(s) for s in info if s)

    # ------------------------------------------------------------------ refresh / tick
    def refresh(self):
        """Push the state into the plots; rebuild the figures when the system or the runs changed."""
        st = self.state
        if st.closed or st.busy:
            return
        with pn.io.hold():
            if ExplorerPlots.layout_key(st) != self.plots.key:
                self.plots = ExplorerPlots(st)
                self._main_pane.object = self.plots.main
                self._side_pane.object = self.plots.side
            else:
                self.plots.update()
            self.status.object = self._status_html()

    def _status_html(self) -> str:
        st = self.state
        title = st.built_system.title if st.built_for else st.sys.title
        parts = [f"<b>{html.escape(title)}</b>, N={st.experiment.N if st.experiment else st.N}",
                 f"<b>cycle <span id='daviz-cycle'>{st.cycle}</span></b>",
                 f"{st.cycles_per_second:.1f} cycles/s" if st.playing else "paused"]
        rr, dead = st.current_rrmse(), st.diverged()
        for s in st.runs:
            color = self.plots.colors.get(s.label, "#000")
            name = f"<span style='color:{color}'>■</span> {html.escape(s.label)}"
            if dead.get(s.label):
                parts.append(f"{name} <span class='div'>diverged</span>")
            else:
                v = rr.get(s.label, np.nan)
                parts.append(f"{name} {'–' if not np.isfinite(v) else f'{v:.3f}'}")
        return "<span id='daviz-status'>" + " &nbsp;·&nbsp; ".join(parts) + "</span>"

    async def _tick(self):
        if self._ticking or self.state.closed:
            return
        n = self.state.cycles_due()
        if n <= 0:
            return
        self._ticking = True
        try:
            done = await asyncio.to_thread(self.state.advance, n)
            if done:
                self.ticks += 1
                self.refresh()
        except Exception as exc:  # never let a tick kill the session
            log.exception("tick failed")
            self.state.pause()
            self.state.message = f"update failed: {exc}"
        finally:
            self._ticking = False

    def start(self):
        """Start the periodic tick for the current session and clean up when it ends."""
        if self._callback is None:
            self._callback = pn.state.add_periodic_callback(self._tick, period=TICK_MS, start=False)
            # A background callback does not flag the session busy: otherwise the template's busy
            # spinner would spin for as long as the app plays (Panel 1.9 has no public switch).
            if hasattr(self._callback, "_background"):
                self._callback._background = True
            self._callback.start()
            pn.state.on_session_destroyed(self._cleanup)
        return self

    def _cleanup(self, session_context):
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        self.state.close()

    # ------------------------------------------------------------------ layout
    def sidebar(self):
        buttons = pn.Row(self.b_play, self.b_pause, self.b_step, self.b_reset, margin=(5, 0))
        filter_help = pn.pane.HTML(
            "<small>" + "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(v.help)}" for k, v in RUNS.items()
                                   if k in ("MNMEF", "LETKF (no localization)", "LETKF (no inflation)")) + "</small>",
            margin=(0, 10))
        return [
            buttons,
            self.w_speed,
            self.w_preset,
            pn.layout.Divider(margin=(2, 0)),
            self.w_system, self.w_N, self.w_sigma, self.w_seed,
            pn.pane.Markdown("**Filters**", margin=(0, 10)), self.w_filters, filter_help,
            pn.layout.Divider(margin=(2, 0)),
            pn.pane.Markdown("**Localization** (EnKF, LETKF)", margin=(0, 10)), self.w_loc, self.w_radius,
            pn.pane.Markdown("**Inflation** (baselines)", margin=(0, 10)), self.w_infl_mode, self.w_infl,
            pn.layout.Divider(margin=(2, 0)),
            self.w_component,
            self.info,
        ]

    def main(self):
        return [pn.Column(self.status, self.explain, self.message,
                          pn.Row(self._main_pane, self._side_pane), sizing_mode="stretch_width")]

    def template(self):
        # BootstrapTemplate: everything it needs is served locally (FastListTemplate fetches a
        # Google font, which fails offline and shows up as a console error).
        return pn.template.BootstrapTemplate(
            title="daviz · ensemble data assimilation explorer",
            sidebar=self.sidebar(), main=self.main(), sidebar_width=290,
            header_background="#1f4e79",
        )

    def __panel__(self):
        return pn.Column(pn.Row(pn.Column(*self.sidebar(), width=300), pn.Column(*self.main())))


URL_PARAMS = {"system": str, "N": int, "sigma_y": float, "seed": int, "speed": int, "preset": str,
              "filters": lambda v: [f.strip() for f in v.split(",") if f.strip()]}


def url_settings() -> tuple[dict, str]:
    """Settings from the page's query string (e.g. `?system=ks&N=10&speed=30&filters=EnKF,LETKF`).

    Returns (params, problem): unusable values are dropped and named in `problem`, never raised.
    """
    args = getattr(pn.state, "session_args", None) or {}
    params, bad = {}, []
    for key, conv in URL_PARAMS.items():
        if key not in args:
            continue
        raw = args[key][0].decode() if isinstance(args[key][0], bytes) else str(args[key][0])
        try:
            value = conv(raw)
            if key == "system":
                from .state import SYSTEMS
                value = SYSTEMS.get(value, value)
            ExplorerState.param[key]._validate(value)
            params[key] = value
        except Exception:
            bad.append(f"{key}={raw}")
    return params, ("ignored URL settings: " + ", ".join(bad)) if bad else ""


def create_app(**params):
    """A new explorer for the current session, its tick started, laid out in the template.

    Keyword arguments and the page's query string (see `url_settings`) set the initial state.
    """
    from_url, problem = url_settings()
    explorer = Explorer(**{**from_url, **params})
    if problem:
        explorer.state.message = problem
    explorer.start()
    template = explorer.template()
    template.explorer = explorer  # handy for debugging: pn.state.cache is not used for sessions
    return template
