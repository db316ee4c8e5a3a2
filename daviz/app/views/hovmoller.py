"""Hovmöller images (site × cycle): truth, observations and, per run, mean, |mean − truth| and spread.

The images are filled in the browser (frames.py): `update` only encodes the columns recorded since
the last frame as 8-bit colour codes. Colour limits are fixed per system (System.field_limits,
.error_limit: about the 0.5 / 99.5 percentiles of the attractor), so frames stay comparable over time
and between filters; |error| and spread share one scale.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from bokeh.layouts import column, gridplot
from bokeh.layouts import row as bokeh_row
from bokeh.models import ColorBar, ColumnDataSource, Div, LinearColorMapper, Range1d
from bokeh.palettes import Inferno256, Viridis256
from bokeh.plotting import figure

from ..frames import quantize
from ..runs import RUNS


@dataclass
class Image:
    """One image the frames write into: its source, what it shows (recorder, k → (d, k)) and its colour limits."""

    source: ColumnDataSource
    read: Callable
    lo: float
    hi: float


class HovmollerView:
    """The grid of images of one layout, colour bars above it."""

    def __init__(self, system, labels, style, x_range, window: int, lecture: bool):
        self.sys, self.labels, self.style, self.x_range, self.W = system, labels, style, x_range, window
        self.dim = system.dim
        self.lecture = lecture
        self.images: list[Image] = []

    def update(self, rec, k: int) -> dict:
        """The newest k columns of every image as colour codes, keyed as the frame carries them."""
        return {f"c{i}": [quantize(image.read(rec, k), image.lo, image.hi)] for i, image in enumerate(self.images)}

    def build(self):
        d = self.dim
        lo, hi = self.sys.field_limits
        elo, ehi = 0.0, self.sys.error_limit
        field_map = LinearColorMapper(palette=Viridis256, low=lo, high=hi, nan_color=(0, 0, 0, 0))
        err_map = LinearColorMapper(palette=Inferno256, low=elo, high=ehi, nan_color=(0, 0, 0, 0))
        y_range = Range1d(-0.5, d - 0.5)
        h = int((80 if self.sys.name == "l96" else 128) * self.style.scale)  # KS: one pixel per site
        every = max(1, d // self.sys.obs_dim)
        field = dict(mapper=field_map, lo=lo, hi=hi, y_range=y_range, height=h)
        error = dict(mapper=err_map, lo=elo, hi=ehi, y_range=y_range, height=h)
        # Colour bars sit in a strip above, so every column's panels have equal frames. Titles and axes
        # are few (column headers once, the filter's name on its row): the browser pays CSS look-ups for
        # every text on every frame (measured: most of its paint time with 17 titled panels).
        rows = [[self._image("Truth", lambda rec, k: rec.truth.last(k), first_column=True, **field),
                 self._image(f"Observations (every {every}th site)", lambda rec, k: rec.obs.last(k),
                             first_column=False, **field)]]
        if not self.lecture:
            rows[0].append(None)
        headers = ["ensemble mean", "|mean − truth|"] + ([] if self.lecture else ["spread (std)"])
        rows.append([Div(text=f"<b>{text}</b>", styles={"font-size": self.style.title, "margin-left": "50px"
                                                         if i == 0 else "6px"}, sizing_mode="stretch_width")
                     for i, text in enumerate(headers)])
        for label in self.labels:
            row = [self._image(label, lambda rec, k, label=label: rec.runs[label].mean.last(k),
                               first_column=True, **field),
                   self._image(None, lambda rec, k, label=label: rec.runs[label].error.last(k),
                               first_column=False, **error)]
            row[0].title.text_color = RUNS[label].color
            if not self.lecture:
                row.append(self._image(None, lambda rec, k, label=label: rec.runs[label].spread.last(k),
                                       first_column=False, **error))
            rows.append(row)
        for p in rows[-1]:
            p.xaxis.visible = True
            p.xaxis.axis_label = "cycle"
        bars = self._colorbar_strip([(field_map, "state (truth, observations, mean)"),
                                     (err_map, "|mean − truth|" + ("" if self.lecture else " and spread"))])
        return column([bars, gridplot(rows, toolbar_location=None, sizing_mode="stretch_width")],
                      sizing_mode="stretch_width")

    def _image(self, title, read, mapper, lo, hi, y_range, height, first_column: bool):
        st, d = self.style, self.dim
        src = ColumnDataSource(data=dict(image=[np.full((1, 1), np.nan, np.float32)], x=[-self.W + 0.5],
                                         y=[-0.5], dw=[float(self.W)], dh=[float(d)]))
        p = figure(title=title, x_range=self.x_range, y_range=y_range, frame_height=height,
                   sizing_mode="stretch_width", tools="", toolbar_location=None, min_width=120)
        p.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=mapper)
        st.apply(p, y_label="site" if first_column else None)
        p.yaxis.ticker = [0, d // 4, d // 2, 3 * d // 4, d - 1]
        p.xaxis.ticker.desired_num_ticks = 4  # narrow panels: few, readable cycle labels
        # Sites are read off column 1 and cycles off the bottom row (set in build): every axis label
        # costs the browser CSS look-ups on each frame (measured: most of its paint time).
        p.yaxis.visible = first_column
        p.xaxis.visible = False
        p.min_border_left = 50 if first_column else 6
        p.min_border_bottom = 4
        if title is None:  # no title: the same space above the frame as the titled panels of the row
            p.min_border_top = int(st.title.rstrip("px")) + 10
        p.background_fill_color = "#eeeeee"
        p.grid.visible = False
        self.images.append(Image(src, read, lo, hi))
        return p

    def _colorbar_strip(self, bars):
        """Horizontal colour bars [(mapper, title), …] in a strip above the grid: bars inside the grid
        would take width from some columns, and Bokeh aligns frames column by column."""
        st = self.style
        figs = []
        for mapper, title in bars:
            p = figure(height=int(58 * st.scale), sizing_mode="stretch_width", tools="", toolbar_location=None,
                       min_width=120, outline_line_color=None, x_range=Range1d(0, 1), y_range=Range1d(0, 1))
            p.axis.visible = False
            p.grid.visible = False
            p.min_border_left, p.min_border_right, p.min_border_top, p.min_border_bottom = 50, 20, 0, 0
            p.add_layout(ColorBar(color_mapper=mapper, orientation="horizontal", height=10, title=title,
                                  title_text_font_size=st.font, title_text_font_style="normal",
                                  major_label_text_font_size=st.font, padding=2, title_standoff=3,
                                  location=(0, 0)), "above")
            figs.append(p)
        return bokeh_row(figs, sizing_mode="stretch_width")
