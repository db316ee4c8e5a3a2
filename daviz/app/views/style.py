"""How every figure of the explorer looks: fonts and line widths (normal or lecture hall), legends,
figures without tools, and axis ends that move only in round steps."""
from __future__ import annotations

import math

import numpy as np
from bokeh.models import Legend
from bokeh.plotting import figure


class Style:
    """Font sizes and line widths for the normal and the lecture-hall layout."""

    def __init__(self, lecture: bool):
        self.font = "15px" if lecture else "11px"
        self.title = "17px" if lecture else "12px"
        self.line = 3.0 if lecture else 1.6
        self.scale = 1.35 if lecture else 1.0

    def apply(self, p, x_label: str | None = None, y_label: str | None = None) -> None:
        if p.title is not None:
            p.title.text_font_size = self.title
            p.title.text_font_style = "bold"
        p.axis.major_label_text_font_size = self.font
        p.axis.axis_label_text_font_size = self.font
        p.axis.axis_label_text_font_style = "normal"
        if x_label:
            p.xaxis.axis_label = x_label
        if y_label:
            p.yaxis.axis_label = y_label
        p.grid.grid_line_alpha = 0.3
        p.outline_line_color = "#bbbbbb"
        p.min_border_left = 50

    def legend(self, items, location="top_left", columns: int | None = None) -> Legend:
        """A legend (click an entry to hide its curve); below a plot it runs in rows of up to 4 entries."""
        return Legend(items=items, label_text_font_size=self.font, spacing=2, padding=3, margin=2,
                      glyph_height=12, glyph_width=16, location=location, click_policy="hide",
                      background_fill_alpha=0.85, ncols=columns or min(len(items), 4), label_standoff=3)


def plain_figure(title, height, **kw):
    """A figure without tools or toolbar that fills the width (every line plot of the explorer)."""
    return figure(title=title, height=height, sizing_mode="stretch_width", tools="", toolbar_location=None,
                  min_width=240, **kw)


def nice_ceiling(x: float) -> float:
    """1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k at or above x."""
    if not np.isfinite(x) or x <= 0:
        return 1.0
    e = 10.0 ** math.floor(math.log10(x))
    return next(m * e for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * e >= x * (1 - 1e-12))


def fit_end(axis_range, top: float) -> None:
    """Set a range's end to the round value at or above `top`, only when it changes (each change is a
    message to the browser)."""
    end = nice_ceiling(top)
    if abs(axis_range.end - end) > 1e-9:
        axis_range.end = end
