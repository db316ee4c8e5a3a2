"""Diagnostics in the style of DART_LAB: spread vs RMSE of the mean per cycle, and per run the rank
histogram of the truth among the members over the window, at observed and at unobserved sites."""
from __future__ import annotations

import numpy as np
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, Div, Range1d

from ..frames import send_lines
from ..runs import RUNS
from .style import fit_end, plain_figure

HOW_TO_READ = ("<small>Rank histograms over the window: flat = calibrated ensemble; U-shaped = too little spread; "
               "dome = too much. Spread ≈ RMSE means the ensemble knows its own error.</small>")


class DiagnosticsView:
    def __init__(self, rec, style, x_range):
        self.labels, self.N, self.style, self.x_range = list(rec.runs), rec.N, style, x_range

    def build(self, rec):
        st, N = self.style, self.N
        self.source = ColumnDataSource(data=self._columns(rec, 0))
        self.y_range = Range1d(0, 1.0)
        p = plain_figure("Spread (dashed) vs RMSE of the mean (solid), per cycle", int(200 * st.scale),
                         x_range=self.x_range, y_range=self.y_range)
        items = []
        for i, label in enumerate(self.labels):
            c = RUNS[label].color
            a = p.line(x="t", y=f"e{i}", source=self.source, line_color=c, line_width=st.line)
            b = p.line(x="t", y=f"s{i}", source=self.source, line_color=c, line_width=st.line, line_dash="dashed")
            items.append((label, [a, b]))
        st.apply(p, x_label="cycle", y_label="RMSE, spread")
        p.add_layout(st.legend(items), "below")
        figs = [Div(text=HOW_TO_READ, sizing_mode="stretch_width"), p]
        self.ranks = {}  # label → (source, figure)
        for label in self.labels:
            src = ColumnDataSource(data={"rank": np.arange(N + 1), "observed": np.zeros(N + 1),
                                         "unobserved": np.zeros(N + 1)})
            q = plain_figure(f"{label}: rank of the truth among the members", int(150 * st.scale),
                             x_range=Range1d(-0.5, N + 0.5), y_range=Range1d(0, 0.5))
            a = q.vbar(x="rank", top="observed", source=src, width=0.8, fill_color=RUNS[label].color,
                       line_color=None, fill_alpha=0.9)
            b = q.vbar(x="rank", top="unobserved", source=src, width=0.4, fill_color="#333333", line_color=None,
                       fill_alpha=0.6)
            st.apply(q, x_label="rank (0 … N)", y_label="fraction")
            q.add_layout(st.legend([("observed sites", [a]), ("unobserved sites", [b])], location="top_center"),
                         "center")
            self.ranks[label] = (src, q)
            figs.append(q)
        return column(figs, sizing_mode="stretch_width")

    def update(self, rec, k: int, full: bool) -> int:
        """Add the newest k cycles of spread and error; redraw the histograms. Returns the bytes streamed."""
        sent = send_lines(self.source, self._columns(rec, k), full, rec.window)
        spread_top = 0.0
        for label in self.labels:
            r = rec.runs[label]
            vals = np.concatenate([r.rmse.ordered(), r.spread_rms.ordered()])
            if not r.status and np.isfinite(vals).any():  # runs off track do not set the scale
                spread_top = max(spread_top, float(np.nanmax(vals)))
            src, fig = self.ranks[label]
            hist = {}
            for key, observed in (("observed", True), ("unobserved", False)):
                h = rec.rank_histogram(label, observed).astype(float)
                hist[key] = h / h.sum() if h.sum() > 0 else h
            top = max(0.05, float(max(hist["observed"].max(initial=0), hist["unobserved"].max(initial=0))))
            src.data = {"rank": np.arange(self.N + 1), **hist}
            fit_end(fig.y_range, top * 1.1)
        fit_end(self.y_range, 1.1 * (spread_top or 1.0))
        return sent

    def _columns(self, rec, k: int) -> dict:
        data = {"t": rec.cycles.last(k)}
        for i, label in enumerate(self.labels):
            data[f"e{i}"] = rec.runs[label].rmse.last(k)
            data[f"s{i}"] = rec.runs[label].spread_rms.last(k)
        return data
