"""Running R-RMSE per run; runs that diverged or lost track do not set the axis."""
from __future__ import annotations

import numpy as np
from bokeh.models import ColumnDataSource, Range1d

from ..frames import send_lines
from ..runs import RUNS
from .style import fit_end, plain_figure


class RrmseView:
    def __init__(self, rec, style, x_range):
        self.labels, self.style, self.x_range = list(rec.runs), style, x_range

    def build(self, rec):
        st = self.style
        self.source = ColumnDataSource(data=self._columns(rec, 0))
        self.y_range = Range1d(0, 1.0)
        p = plain_figure("Running R-RMSE (lower is better)", int(200 * st.scale), x_range=self.x_range,
                         y_range=self.y_range)
        items = [(label, [p.line(x="t", y=f"r{i}", source=self.source, line_color=RUNS[label].color,
                                 line_width=st.line)]) for i, label in enumerate(self.labels)]
        st.apply(p, x_label="cycle", y_label="R-RMSE")
        p.add_layout(st.legend(items), "below")
        self.figure = p
        return p

    def update(self, rec, k: int, full: bool) -> int:
        """Add the newest k cycles (all of the window when `full`); returns the bytes sent."""
        sent = send_lines(self.source, self._columns(rec, k), full, rec.window)
        on_track = [rec.runs[label].rrmse.ordered() for label in self.labels if not rec.runs[label].status]
        top = max((float(np.nanmax(v)) for v in on_track if np.isfinite(v).any()), default=1.0)
        fit_end(self.y_range, 1.1 * min(top, 5.0))
        return sent

    def _columns(self, rec, k: int) -> dict:
        data = {"t": rec.cycles.last(k)}
        for i, label in enumerate(self.labels):
            data[f"r{i}"] = rec.runs[label].rrmse.last(k)
        return data
