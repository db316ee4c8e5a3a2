"""Localization weight vs distance (the paper's Fig. 10): Gaspari–Cohn at the radius in use against
MNMEF's learned g_θ, mean ± std over recent cycles."""
from __future__ import annotations

import numpy as np
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, Div, Range1d

from ..runs import RUNS
from .style import fit_end, plain_figure

WHY_ABOVE_ONE = (
    "<small>Gaspari–Cohn tapers the <i>covariance</i> and stays ≤ 1. MNMEF's g_θ (in [0, 2]) multiplies "
    "its learned gain as a whole, so it may exceed 1 near the observation. Warm-started weights begin as "
    "Gaspari–Cohn at the tuned radius: where the curves part is what training learned.</small>")


class LocalizationView:
    """Reads the session for the Gaspari–Cohn radius and the distances MNMEF's weights refer to."""

    def __init__(self, state, rec, style):
        self.state, self.style, self.dim = state, style, rec.dim
        self.mnmef_labels = [label for label in rec.runs if RUNS[label].base == "mnmef"]
        self.figure = None  # no figure without spatial structure

    def build(self, rec):
        st = self.style
        if not rec.system.periodic:
            return Div(text="<i>Lorenz '63 has no spatial structure: nothing to localize.</i>",
                       styles={"font-size": st.font})
        half = self.dim // 2
        self.y_range = Range1d(-0.05, 1.1)
        p = plain_figure("Localization weight vs distance", int(210 * st.scale), x_range=Range1d(-0.5, half + 0.5),
                         y_range=self.y_range)
        self.gc_source = ColumnDataSource(data={"x": [], "y": []})
        gc = p.line(x="x", y="y", source=self.gc_source, line_color="#555555", line_dash="dashed",
                    line_width=st.line)
        items = [("Gaspari–Cohn (radius shown in title)", [gc])]
        self.sources = {}
        for label in self.mnmef_labels:
            src = ColumnDataSource(data={"x": [], "m": [], "lo": [], "hi": []})
            c = RUNS[label].color
            band = p.varea(x="x", y1="lo", y2="hi", source=src, fill_color=c, fill_alpha=0.25)
            line = p.line(x="x", y="m", source=src, line_color=c, line_width=st.line)
            p.scatter(x="x", y="m", source=src, color=c, size=4 * st.scale)
            items.append((f"{label} learned g_θ (mean ± std)", [band, line]))
            self.sources[label] = src
        st.apply(p, x_label="distance (sites)", y_label="weight")
        p.add_layout(st.legend(items, columns=1), "below")
        self.figure = p
        note = Div(text=WHY_ABOVE_ONE, sizing_mode="stretch_width", styles={"font-size": st.font})
        return column([p, note], sizing_mode="stretch_width")

    def update(self, rec) -> None:
        """Gaspari–Cohn at the radius in use and the recent g_θ (small: redrawn whole)."""
        if self.figure is None:
            return
        state = self.state
        dist = np.arange(self.dim // 2 + 1, dtype=float)
        gc = state.gaspari_cohn_curve(dist)
        if list(self.gc_source.data["y"]) != list(gc):
            self.gc_source.data = {"x": dist, "y": gc}
        title = f"Localization weight vs distance (Gaspari–Cohn radius {state.gc_radius():g})"
        if not self.mnmef_labels:
            title += "; add MNMEF to see g_θ"
        if self.figure.title.text != title:
            self.figure.title.text = title
        top = 1.05
        for label, src in self.sources.items():
            summary = rec.localization_summary(label)
            if summary is None:
                continue
            m, s = summary
            x = state.localization_distances(label, len(m))
            src.data = {"x": x, "m": m, "lo": m - s, "hi": m + s}
            top = max(top, float(np.max(m + s)))
        fit_end(self.y_range, top * 1.05)
