"""The sidebar: buttons, and a widget for each setting, linked to the session's parameters."""
from __future__ import annotations

import html

import panel as pn

from .runs import RUNS
from .settings import ACCEPTED, ExplorerSettings


class Controls:
    """Widgets made from the parameters (Panel keeps the two in step) and the buttons."""

    def __init__(self, state, view, play, pause, step, reset, download):
        """`view` has the layout toggles (lecture, diagnostics); the other arguments are what the buttons do."""
        self.state = state
        p, W = state.param, pn.widgets
        self.system = W.Select.from_param(p.system, sizing_mode="stretch_width")
        self.preset = W.Select.from_param(p.preset, sizing_mode="stretch_width")
        self.N = W.IntSlider.from_param(p.N, sizing_mode="stretch_width")
        # σ_y and seed are typed: a text box that refuses bad values visibly (a numeric box would
        # silently clamp them, or drop the dot of "2.5" into 25).
        self.sigma_y = self._typed_input("sigma_y", float)
        self.seed = self._typed_input("seed", int)
        self.localization = W.RadioButtonGroup.from_param(p.localization, sizing_mode="stretch_width")
        self.radius = W.FloatSlider.from_param(p.radius, sizing_mode="stretch_width")
        self.inflation_mode = W.RadioButtonGroup.from_param(p.inflation_mode, sizing_mode="stretch_width")
        self.inflation = W.FloatSlider.from_param(p.inflation, sizing_mode="stretch_width")
        self.filters = W.CheckBoxGroup.from_param(p.filters, inline=False)
        self.speed = W.IntSlider.from_param(p.speed, sizing_mode="stretch_width")
        self.component = W.IntSlider.from_param(p.component, sizing_mode="stretch_width")
        self.lecture = W.Toggle.from_param(view.param.lecture, label="Lecture mode", sizing_mode="stretch_width")
        self.diagnostics = W.Toggle.from_param(view.param.diagnostics, label="Diagnostics",
                                               sizing_mode="stretch_width")
        self.play = self._button("Play", "primary", play)
        self.pause = self._button("Pause", "default", pause)
        self.step = self._button("Step", "default", step)
        self.reset = self._button("Reset", "warning", reset)
        self.download = W.FileDownload(callback=download, filename="daviz_run.npz", label="Download this run (.npz)",
                                       color="light", sizing_mode="stretch_width")
        state.param.watch(self._on_playing, "playing")
        self._on_playing()

    @staticmethod
    def _button(label: str, color: str, action):
        button = pn.widgets.Button(label=label, color=color, width=60, margin=(5, 2))
        button.on_click(lambda event: action())
        return button

    def _on_playing(self, *events) -> None:
        playing = self.state.playing
        self.play.disabled = playing
        self.pause.disabled = not playing

    def _typed_input(self, name: str, convert):
        """A text box bound to a parameter; a refused value says what is accepted and is undone."""
        state = self.state
        widget = pn.widgets.TextInput(label=state.param[name].label, value=str(getattr(state, name)),
                                      sizing_mode="stretch_width")

        def on_text(event):
            text = event.new.strip()
            try:
                value = convert(text)
            except ValueError:
                value = None
            if value is None or not ExplorerSettings.accepts(name, value):
                widget.value = str(getattr(state, name))
                state.message = f"{state.param[name].label}: {text!r} refused; it must be {ACCEPTED[name]}."
                return
            if value != getattr(state, name):
                state.message = ""
                setattr(state, name, value)

        widget.param.watch(on_text, "value")
        state.param.watch(lambda e: setattr(widget, "value", str(e.new)), name)
        return widget

    def sidebar(self) -> list:
        buttons = pn.Row(self.play, self.pause, self.step, self.reset, margin=(5, 0))
        filter_help = pn.pane.HTML(
            "<small>" + "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(v.help)}" for k, v in RUNS.items())
            + "</small>",
            margin=(0, 10))
        return [
            buttons, self.speed, self.preset, pn.Row(self.lecture, self.diagnostics, sizing_mode="stretch_width"),
            pn.layout.Divider(margin=(2, 0)),
            self.system, self.N, pn.Row(self.sigma_y, self.seed, sizing_mode="stretch_width"),
            pn.pane.Markdown("**Localization** (EnKF, LETKF)", margin=(0, 10)), self.localization, self.radius,
            pn.pane.Markdown("**Inflation** (baselines)", margin=(0, 10)), self.inflation_mode, self.inflation,
            pn.layout.Divider(margin=(2, 0)),
            pn.pane.Markdown("**Filters**", margin=(0, 10)), self.filters, filter_help,
            pn.layout.Divider(margin=(2, 0)),
            self.component, self.download,
        ]
