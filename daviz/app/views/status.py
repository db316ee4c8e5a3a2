"""The text above the plots: the status line, then notes (MNMEF's weights, the tuned settings' source,
the preset's explanation, warnings).

HTML panes, not Markdown: user text (URL values) is escaped and shown as typed; a Markdown pane would
turn "[text](url)" into a link and "![x](url)" into a remote image.
"""
from __future__ import annotations

import html

import numpy as np
import panel as pn

from ..mnmef_weights import MnmefPhase
from ..presets import explanation
from ..runs import RUNS

CSS = """
.daviz-status {font-family: ui-monospace, SFMono-Regular, Menlo, monospace; line-height: 1.6;}
.daviz-status .bad {color: #b00020; font-weight: 600;}
.daviz-status .win {color: #555;}
.daviz-status .slow {color: #8a4b00; font-weight: 600;}
"""
ALERT_CSS = ":host(.daviz-alert) {{background: {bg}; color: {fg}; border: 1px solid {border}; border-radius: 6px; " \
            "padding: 4px 12px; font-size: 14px;}}"


class StatusLine:
    """System, N, the cycle the browser shows, whether it runs, and each run's R-RMSE or trouble."""

    def __init__(self):
        self.pane = pn.pane.HTML("", css_classes=["daviz-status"], sizing_mode="stretch_width",
                                 stylesheets=[CSS], margin=(0, 10), styles={"font-size": "13px"})

    def build(self):
        return self.pane

    def set_lecture(self, lecture: bool) -> None:
        self.pane.styles = {"font-size": "18px" if lecture else "13px"}

    def update(self, state, shown_cycle: int, running: str) -> None:
        self.pane.object = self.html(state, shown_cycle, running)

    @staticmethod
    def html(state, shown_cycle: int, running: str) -> str:
        """From the recorder: one consistent snapshot, whatever the engine thread is doing."""
        rec = state.recorder
        title = rec.system.title if rec is not None else state.sys.title
        parts = [f"<b>{html.escape(title)}</b>, N={state.experiment.N if state.experiment else state.N}",
                 f"<b>cycle <span id='daviz-cycle'>{int(shown_cycle)}</span></b>",
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


def speed_text(reached: float, asked: int, behind: bool, server_busy: bool) -> str:
    """'9.8 cycles/s' while the speed asked is kept; otherwise what is reached of it and why:
    '7.5 of 10 cycles/s (server busy)' when other sessions share the engine, else the filters' own cost."""
    if not behind:
        return f"{reached:.1f} cycles/s"
    why = "server busy" if server_busy else "as fast as these filters run here"
    return f"{reached:.1f} of {asked} cycles/s <span class='slow'>({why})</span>"


def _alert(bg: str, fg: str, border: str):
    return pn.pane.HTML("", visible=False, sizing_mode="stretch_width", margin=(2, 10),
                        stylesheets=[ALERT_CSS.format(bg=bg, fg=fg, border=border)], css_classes=["daviz-alert"])


class Notes:
    """What the page knows about MNMEF and the tuned settings, the preset's two lines, the warnings."""

    def __init__(self):
        self.info = pn.pane.HTML("", sizing_mode="stretch_width", styles={"font-size": "12px"}, margin=(0, 10))
        self.explain = _alert(bg="#cff4fc", fg="#055160", border="#b6effb")
        self.message = _alert(bg="#fff3cd", fg="#664d03", border="#ffecb5")

    def build(self) -> list:
        return [self.info, self.explain, self.message]

    def update(self, state, url_problem: str = "") -> None:
        # Everything shown here may contain user text (URL values): escaped, never rendered as markup.
        lines = [text for text in (url_problem, state.message) if text]
        self.message.object = "<br>".join(html.escape(text) for text in lines)
        self.message.visible = bool(lines)
        lines = explanation(state.preset)
        if lines:
            self.explain.object = (f"<b>{html.escape(state.preset)}.</b> {html.escape(lines[0])}<br>"
                                   f"{html.escape(lines[1])}")
        self.explain.visible = bool(lines)
        info = []
        if "MNMEF" in state.filters and state.mnmef.phase is not MnmefPhase.OFF:
            info.append(state.mnmef.text)
        if state.tuned_source:
            info.append(f"Baselines' tuned inflation/radius: {state.tuned_source}.")
        self.info.object = "<br>".join(html.escape(s) for s in info)
