"""One site over time (the paper's Fig. 3): truth, observations and each run's mean ± 1.96·std.

The variational runs (4D-Var, NIDA) assimilate whole windows: the window being collected is shaded.
"""
from __future__ import annotations

from bokeh.models import BoxAnnotation, ColumnDataSource, Range1d

from ..frames import send_lines
from ..runs import OBS_COLOR, RUNS, TRUTH_COLOR
from .style import plain_figure

WINDOW_METHODS = ("4dvar", "nida", "nida-4dvar")  # runs that assimilate whole windows (window shaded)


class SeriesView:
    """A band plot of one component; `site()` says which (it may change: `refresh` redraws)."""

    def __init__(self, rec, title, site, y_limits, height: int, style, x_range, legend: bool = False):
        """`title()` and `site()` are asked again on every refresh (the shown site is a setting)."""
        self.labels, self.dim, self.W = list(rec.runs), rec.dim, rec.window
        self.title, self.site, self.y_limits, self.height = title, site, y_limits, height
        self.style, self.x_range, self.legend = style, x_range, legend
        self.window_boxes: list[tuple[str, BoxAnnotation]] = []  # (run, box)

    def build(self, rec):
        st = self.style
        self.source = ColumnDataSource(data=self._columns(rec, 0))
        p = plain_figure(self.title(), self.height, x_range=self.x_range, y_range=Range1d(*self.y_limits))
        items = []
        for i, label in enumerate(self.labels):
            c = RUNS[label].color
            band = p.varea(x="t", y1=f"lo{i}", y2=f"hi{i}", source=self.source, fill_color=c, fill_alpha=0.18)
            line = p.line(x="t", y=f"m{i}", source=self.source, line_color=c, line_width=st.line)
            items.append((label, [band, line]))
        for label in self.labels:
            if RUNS[label].base in WINDOW_METHODS:
                c = RUNS[label].color
                box = BoxAnnotation(left=0, right=0, fill_color=c, fill_alpha=0.12, line_color=c, line_alpha=0.5,
                                    visible=False)
                p.add_layout(box)
                self.window_boxes.append((label, box))
        truth = p.line(x="t", y="truth", source=self.source, line_color=TRUTH_COLOR, line_width=st.line)
        obs = p.scatter(x="t", y="obs", source=self.source, marker="x", size=7 * st.scale, line_color=OBS_COLOR,
                        line_width=1.5)
        st.apply(p, x_label="cycle", y_label="value")
        if self.legend:
            p.add_layout(st.legend([("truth", [truth]), ("observation", [obs])] + items), "below")
        self.figure = p
        return p

    def update(self, rec, k: int, full: bool) -> int:
        """Add the newest k cycles (all of the window when `full`); returns the bytes sent."""
        sent = send_lines(self.source, self._columns(rec, k), full, self.W)
        for label, box in self.window_boxes:
            phase = rec.runs[label].window
            if phase is None:
                continue
            done, length = phase
            # The window ends at the next solve: from the last analysis (cycle - done) to L cycles later.
            start = rec.last_cycle - done
            box.update(left=start + 0.5, right=start + length + 0.5, visible=True)
        return sent

    def refresh(self, rec) -> None:
        """Redraw the whole window and the title (the shown site changed)."""
        self.source.data = self._columns(rec, self.W)
        self.figure.title.text = self.title()

    def _columns(self, rec, k: int) -> dict:
        """The last k cycles of the site: truth, observation and each run's mean ± 1.96 std."""
        c = min(max(int(self.site()), 0), self.dim - 1)
        data = {"t": rec.cycles.last(k), "truth": rec.truth.last(k, row=c), "obs": rec.obs.last(k, row=c)}
        for i, label in enumerate(self.labels):
            r = rec.runs[label]
            m, s = r.mean.last(k, row=c), r.spread.last(k, row=c)
            data.update({f"m{i}": m, f"lo{i}": m - 1.96 * s, f"hi{i}": m + 1.96 * s})
        return data
