"""Raw Bokeh figures for the explorer and the frames that keep them live (no panel import here).

`ExplorerPlots` builds every figure once per layout (system, runs, lecture mode, diagnostics) and
then sends frames: only the columns recorded since the last frame (see frames.py for the wire
format and the browser side). Every range is a `Range1d` the server sets (never a DataRange1d the
browser would compute and echo back), colour limits are fixed per system, and all time axes share
one range so the panels scroll together. Each filter keeps its colour from runs.py on every plot.
"""
from __future__ import annotations

import math
import time

import numpy as np
from bokeh.layouts import column, gridplot
from bokeh.layouts import row as bokeh_row
from bokeh.models import (BoxAnnotation, ColorBar, ColumnDataSource, CustomJS, Div, Legend, LinearColorMapper,
                          Range1d)
from bokeh.palettes import Inferno256, Viridis256
from bokeh.plotting import figure

from .frames import APPLY_FRAME_JS, quantize
from .runs import OBS_COLOR, RUNS, TRUTH_COLOR

# Colour limits are fixed per system (System.field_limits, .error_limit: about the 0.5 / 99.5 percentiles of
# the attractor), so frames stay comparable over time and between filters; |error| and spread share one scale.
WINDOW_METHODS = ("4dvar", "nida", "nida-4dvar")  # runs that assimilate whole windows (window shaded)
ACK_TIMEOUT = 5.0  # seconds without an acknowledgement before the next frame goes anyway


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


def _nice_ceiling(x: float) -> float:
    """1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k at or above x."""
    if not np.isfinite(x) or x <= 0:
        return 1.0
    e = 10.0 ** math.floor(math.log10(x))
    return next(m * e for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * e >= x * (1 - 1e-12))


class ExplorerPlots:
    """All figures of one explorer session for one layout; `push_frame` keeps them live."""

    def __init__(self, state, lecture: bool = False, diagnostics: bool = False, first_seq: int = 0):
        self.state = state
        rec = state.recorder  # read once: a restart on the engine thread swaps it whole
        self.key = self.layout_key(rec, lecture, diagnostics)
        self.labels = list(rec.runs)
        self.specs = [RUNS[label] for label in self.labels]
        self.colors = {s.label: s.color for s in self.specs}
        self.sys = rec.system
        self.system = self.sys.name
        self.has_space = bool(self.sys.periodic)
        self.dim = self.sys.dim
        self.lecture, self.diagnostics = lecture, diagnostics
        self.style = Style(lecture)
        self.W = state.window
        self.x_range = Range1d(-self.W + 0.5, 0.5)
        self.images: list[tuple[ColumnDataSource, callable, float, float]] = []  # (source, getter, lo, hi)
        self.series: list[tuple[ColumnDataSource, callable, object, callable]] = []  # (source, columns, fig, title)
        self.window_boxes: list[tuple[str, BoxAnnotation]] = []  # (run, box) on the site-over-time plots
        if self.has_space:
            self.main = self._hovmoller_grid()
        else:
            self.main = self._trace_column()
        self.side = self._side_column()
        self.diag = self._diagnostics_column() if diagnostics else None
        self._frame_source()
        # Flow control: frames are numbered; the browser acknowledges each after painting it.
        self.seq = first_seq
        self.acked = first_seq
        self.sent_at = -math.inf
        self.sent_upto = -math.inf  # cycle of the newest column the browser has
        self.sent_bytes = 0  # payload of the last frame (images + lines), for the benchmark
        self.shown = None  # the recorder (experiment) whose columns the browser has
        self.on_ack = None  # called (on the event loop) when the browser acknowledges a frame

    @staticmethod
    def layout_key(recorder, lecture: bool = False, diagnostics: bool = False) -> tuple:
        """Figures depend only on the system, the runs and the layout mode; anything else is data."""
        return (recorder.system.name, tuple(recorder.runs), recorder.N, lecture, diagnostics)

    # ------------------------------------------------------------------ Hovmöller images
    def _image(self, title, getter, mapper, lo, hi, y_range, height, first_column: bool, bar=None):
        st = self.style
        d = self.dim
        src = ColumnDataSource(data=dict(image=[np.full((1, 1), np.nan, np.float32)], x=[-self.W + 0.5],
                                         y=[-0.5], dw=[float(self.W)], dh=[float(d)]))
        p = figure(title=title, x_range=self.x_range, y_range=y_range, frame_height=height,
                   sizing_mode="stretch_width", tools="", toolbar_location=None, min_width=120)
        p.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=mapper)
        st.apply(p, y_label="site" if first_column else None)
        p.yaxis.ticker = [0, d // 4, d // 2, 3 * d // 4, d - 1]
        p.xaxis.ticker.desired_num_ticks = 4  # narrow panels: few, readable cycle labels
        # Sites are read off column 1 and cycles off the bottom row (set in _hovmoller_grid): every axis
        # label costs the browser CSS look-ups on each frame (measured: most of its paint time).
        p.yaxis.visible = first_column
        p.xaxis.visible = False
        p.min_border_left = 50 if first_column else 6
        p.min_border_bottom = 4
        if title is None:  # no title: the same space above the frame as the titled panels of the row
            p.min_border_top = int(st.title.rstrip("px")) + 10
        p.background_fill_color = "#eeeeee"
        p.grid.visible = False
        if bar is not None:
            p.add_layout(self._colorbar(mapper, bar), "right")
        self.images.append((src, getter, lo, hi))
        return p

    def _colorbar(self, mapper, title: str) -> ColorBar:
        st = self.style
        return ColorBar(color_mapper=mapper, width=10, title=title, title_text_font_size=st.font,
                        title_text_font_style="normal", major_label_text_font_size=st.font, padding=4,
                        title_standoff=4)

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

    def _hovmoller_grid(self):
        state, d = self.state, self.dim
        lo, hi = self.sys.field_limits
        elo, ehi = 0.0, self.sys.error_limit
        field_map = LinearColorMapper(palette=Viridis256, low=lo, high=hi, nan_color=(0, 0, 0, 0))
        err_map = LinearColorMapper(palette=Inferno256, low=elo, high=ehi, nan_color=(0, 0, 0, 0))
        y_range = Range1d(-0.5, d - 0.5)
        h = int((80 if self.system == "l96" else 128) * self.style.scale)  # KS: one pixel per site
        every = max(1, d // self.sys.obs_dim)
        rec = lambda: state.recorder  # noqa: E731  (the recorder is replaced on restart)
        # Colour bars sit in the last column only, so every column's panels have equal frames. Titles and
        # axes are few (column headers once, the filter's name on its row): the browser pays CSS look-ups
        # for every text on every frame (measured: most of its paint time with 17 titled panels).
        rows = [[self._image("Truth", lambda k: rec().truth.last(k), field_map, lo, hi, y_range, h, True),
                 self._image(f"Observations (every {every}th site)", lambda k: rec().obs.last(k), field_map,
                             lo, hi, y_range, h, False)]]
        if not self.lecture:
            rows[0].append(None)
        headers = ["ensemble mean", "|mean − truth|"] + ([] if self.lecture else ["spread (std)"])
        rows.append([Div(text=f"<b>{text}</b>", styles={"font-size": self.style.title, "margin-left": "50px"
                                                         if i == 0 else "6px"}, sizing_mode="stretch_width")
                     for i, text in enumerate(headers)])
        for label in self.labels:
            r = lambda label=label: rec().runs[label]  # noqa: E731
            row = [self._image(label, lambda k, r=r: r().mean.last(k), field_map, lo, hi, y_range, h, True),
                   self._image(None, lambda k, r=r: r().error.last(k), err_map, elo, ehi, y_range, h, False)]
            row[0].title.text_color = RUNS[label].color
            if not self.lecture:
                row.append(self._image(None, lambda k, r=r: r().spread.last(k), err_map,
                                       elo, ehi, y_range, h, False))
            rows.append(row)
        for p in rows[-1]:
            p.xaxis.visible = True
            p.xaxis.axis_label = "cycle"
        bars = self._colorbar_strip([(field_map, "state (truth, observations, mean)"),
                                     (err_map, "|mean − truth|" + ("" if self.lecture else " and spread"))])
        return column([bars, gridplot(rows, toolbar_location=None, sizing_mode="stretch_width")],
                      sizing_mode="stretch_width")

    # ------------------------------------------------------------------ time series (paper Fig. 3)
    def _series_figure(self, title_fn, component_fn, y_limits, height, legend=False):
        state = self.state
        src = ColumnDataSource(data=self._series_columns(component_fn, 0))
        p = figure(title=title_fn(), x_range=self.x_range, y_range=Range1d(*y_limits), height=height,
                   sizing_mode="stretch_width", tools="", toolbar_location=None, min_width=240)
        items = []
        for i, label in enumerate(self.labels):
            c = self.colors[label]
            band = p.varea(x="t", y1=f"lo{i}", y2=f"hi{i}", source=src, fill_color=c, fill_alpha=0.18)
            line = p.line(x="t", y=f"m{i}", source=src, line_color=c, line_width=self.style.line)
            items.append((label, [band, line]))
        for label in self.labels:  # variational methods: shade the window being collected
            if RUNS[label].base in WINDOW_METHODS:
                box = BoxAnnotation(left=0, right=0, fill_color=self.colors[label], fill_alpha=0.12,
                                    line_color=self.colors[label], line_alpha=0.5, visible=False)
                p.add_layout(box)
                self.window_boxes.append((label, box))
        truth = p.line(x="t", y="truth", source=src, line_color=TRUTH_COLOR, line_width=self.style.line)
        obs = p.scatter(x="t", y="obs", source=src, marker="x", size=7 * self.style.scale, line_color=OBS_COLOR,
                        line_width=1.5)
        self.style.apply(p, x_label="cycle", y_label="value")
        if legend:
            p.add_layout(self.style.legend([("truth", [truth]), ("observation", [obs])] + items), "below")
        self.series.append((src, component_fn, p, title_fn))
        del state
        return p

    def _series_columns(self, component_fn, k: int) -> dict:
        """The last k cycles of one component: truth, observation and each run's mean ± 1.96 std."""
        rec = self.state.recorder
        c = min(max(int(component_fn()), 0), self.dim - 1)
        data = {"t": rec.cycles.last(k), "truth": rec.truth.data[c].take(self._idx(rec, k)),
                "obs": rec.obs.data[c].take(self._idx(rec, k))}
        for i, label in enumerate(self.labels):
            r = rec.runs[label]
            m, s = r.mean.data[c].take(self._idx(rec, k)), r.spread.data[c].take(self._idx(rec, k))
            data.update({f"m{i}": m, f"lo{i}": m - 1.96 * s, f"hi{i}": m + 1.96 * s})
        return data

    @staticmethod
    def _idx(rec, k: int) -> np.ndarray:
        return (rec.cycles.pos - k + np.arange(k)) % rec.window

    def _component_title(self) -> str:
        c = min(self.state.component, self.dim - 1)
        seen = "observed" if c in set(self.sys.obs_idx.tolist()) else "not observed"
        return f"Site {c} ({seen}): truth, observations, mean ± 1.96·std"

    def _trace_column(self):
        names = ("x", "y", "z")
        figs = []
        for c in range(self.dim):
            def title(c=c):
                seen = "observed" if c in set(self.sys.obs_idx.tolist()) else "not observed"
                return f"Lorenz '63 {names[c]} ({seen}): truth, observations, mean ± 1.96·std"
            figs.append(self._series_figure(title, lambda c=c: c, self.sys.component_limits[c], int(170 * self.style.scale),
                                            legend=(c == self.dim - 1)))
        return column(figs, sizing_mode="stretch_width")

    # ------------------------------------------------------------------ side column
    def _side_column(self):
        st = self.style
        self.rmse_source = ColumnDataSource(data=self._rmse_columns(0))
        self.rmse_range = Range1d(0, 1.0)
        p = figure(title="Running R-RMSE (lower is better)", x_range=self.x_range, y_range=self.rmse_range,
                   height=int(200 * st.scale), sizing_mode="stretch_width", tools="", toolbar_location=None,
                   min_width=240)
        items = [(label, [p.line(x="t", y=f"r{i}", source=self.rmse_source, line_color=self.colors[label],
                                 line_width=st.line)]) for i, label in enumerate(self.labels)]
        st.apply(p, x_label="cycle", y_label="R-RMSE")
        p.add_layout(st.legend(items), "below")
        self.rmse_fig = p
        figs = [p]
        if self.has_space:
            lo, hi = self.sys.field_limits
            figs.append(self._series_figure(self._component_title, lambda: self.state.component, (lo, hi),
                                            int(200 * st.scale), legend=True))
        figs.append(self._localization_figure())
        return column(figs, sizing_mode="stretch_width")

    def _rmse_columns(self, k: int) -> dict:
        rec = self.state.recorder
        data = {"t": rec.cycles.last(k)}
        for i, label in enumerate(self.labels):
            data[f"r{i}"] = rec.runs[label].rrmse.last(k)
        return data

    def _localization_figure(self):
        self.mnmef_labels = [s.label for s in self.specs if s.base == "mnmef"]
        st = self.style
        if not self.has_space:
            self.loc_fig = None
            return Div(text="<i>Lorenz '63 has no spatial structure: nothing to localize.</i>",
                       styles={"font-size": st.font})
        half = self.dim // 2
        self.loc_range = Range1d(-0.05, 1.1)
        p = figure(title="Localization weight vs distance", height=int(210 * st.scale), sizing_mode="stretch_width",
                   tools="", toolbar_location=None, x_range=Range1d(-0.5, half + 0.5), y_range=self.loc_range,
                   min_width=240)
        self.gc_source = ColumnDataSource(data={"x": [], "y": []})
        gc = p.line(x="x", y="y", source=self.gc_source, line_color="#555555", line_dash="dashed",
                    line_width=st.line)
        items = [("Gaspari–Cohn (radius shown in title)", [gc])]
        self.loc_sources = {}
        for label in self.mnmef_labels:
            src = ColumnDataSource(data={"x": [], "m": [], "lo": [], "hi": []})
            c = self.colors[label]
            band = p.varea(x="x", y1="lo", y2="hi", source=src, fill_color=c, fill_alpha=0.25)
            line = p.line(x="x", y="m", source=src, line_color=c, line_width=st.line)
            p.scatter(x="x", y="m", source=src, color=c, size=4 * st.scale)
            items.append((f"{label} learned g_θ (mean ± std)", [band, line]))
            self.loc_sources[label] = src
        st.apply(p, x_label="distance (sites)", y_label="weight")
        p.add_layout(st.legend(items, columns=1), "below")
        self.loc_fig = p
        self.loc_note = Div(text=(
            "<small>Gaspari–Cohn tapers the <i>covariance</i> and stays ≤ 1. MNMEF's g_θ = 2·softmax over the "
            "distances multiplies its learned gain correction instead, so its scale is free and it may exceed 1 "
            "near the observation; compare the <i>shape</i>: how fast the weight falls with distance.</small>"),
            sizing_mode="stretch_width", styles={"font-size": st.font})
        return column([p, self.loc_note], sizing_mode="stretch_width")

    # ------------------------------------------------------------------ diagnostics (DART_LAB-style)
    def _diagnostics_column(self):
        st = self.style
        N = self.state.recorder.N
        self.rank_sources = {}
        figs = []
        self.spread_source = ColumnDataSource(data=self._spread_columns(0))
        self.spread_range = Range1d(0, 1.0)
        p = figure(title="Spread (dashed) vs RMSE of the mean (solid), per cycle", x_range=self.x_range,
                   y_range=self.spread_range, height=int(200 * st.scale), sizing_mode="stretch_width", tools="",
                   toolbar_location=None, min_width=240)
        items = []
        for i, label in enumerate(self.labels):
            c = self.colors[label]
            a = p.line(x="t", y=f"e{i}", source=self.spread_source, line_color=c, line_width=st.line)
            b = p.line(x="t", y=f"s{i}", source=self.spread_source, line_color=c, line_width=st.line,
                       line_dash="dashed")
            items.append((label, [a, b]))
        st.apply(p, x_label="cycle", y_label="RMSE, spread")
        p.add_layout(st.legend(items), "below")
        self.spread_fig = p
        figs.append(p)
        for label in self.labels:
            src = ColumnDataSource(data={"rank": np.arange(N + 1), "observed": np.zeros(N + 1),
                                         "unobserved": np.zeros(N + 1)})
            q = figure(title=f"{label}: rank of the truth among the members", height=int(150 * st.scale),
                       sizing_mode="stretch_width", tools="", toolbar_location=None, min_width=240,
                       x_range=Range1d(-0.5, N + 0.5), y_range=Range1d(0, 0.5))
            a = q.vbar(x="rank", top="observed", source=src, width=0.8, fill_color=self.colors[label],
                       line_color=None, fill_alpha=0.9)
            b = q.vbar(x="rank", top="unobserved", source=src, width=0.4, fill_color="#333333", line_color=None,
                       fill_alpha=0.6)
            st.apply(q, x_label="rank (0 … N)", y_label="fraction")
            q.add_layout(st.legend([("observed sites", [a]), ("unobserved sites", [b])], location="top_center"),
                         "center")
            self.rank_sources[label] = (src, q)
            figs.append(q)
        figs.insert(0, Div(text=("<small>Rank histograms over the window: flat = calibrated ensemble; U-shaped = "
                                 "too little spread; dome = too much. Spread ≈ RMSE means the ensemble knows its "
                                 "own error.</small>"), sizing_mode="stretch_width"))
        return column(figs, sizing_mode="stretch_width")

    def _spread_columns(self, k: int) -> dict:
        rec = self.state.recorder
        data = {"t": rec.cycles.last(k)}
        for i, label in enumerate(self.labels):
            data[f"e{i}"] = rec.runs[label].rmse.last(k)
            data[f"s{i}"] = rec.runs[label].spread_rms.last(k)
        return data

    # ------------------------------------------------------------------ frames
    def _frame_source(self):
        self.frame = ColumnDataSource(data={"seq": [], "k": [], "last": []})
        callback = CustomJS(args=dict(frame=self.frame, targets=[s for s, *_ in self.images],
                                      rows=[self.dim] * len(self.images), lo=[lo for _, _, lo, _ in self.images],
                                      hi=[hi for *_, hi in self.images], W=self.W),
                            code=APPLY_FRAME_JS)
        self.frame.js_on_change("data", callback)
        self.frame.on_change("tags", self._on_ack)
        self.main.tags = [self.frame]  # a model reachable from the layout, so it is in the document

    def _on_ack(self, attr, old, new) -> None:
        if new:
            try:
                self.acked = max(self.acked, int(new[0]))
            except (TypeError, ValueError):
                return
            if self.on_ack is not None:
                self.on_ack()

    def ready(self, now: float | None = None) -> bool:
        """Whether the browser has drawn the last frame (or it is overdue): the next may go."""
        now = time.monotonic() if now is None else now
        return self.acked >= self.seq or now - self.sent_at > ACK_TIMEOUT

    def pending(self) -> bool:
        """Whether cycles were recorded that the browser does not have yet."""
        rec = self.state.recorder
        return rec is not None and (rec is not self.shown or rec.last_cycle > self.sent_upto)

    def push_frame(self) -> int:
        """Send the columns recorded since the last frame; returns the number of cycles sent."""
        state = self.state
        rec = state.recorder
        if rec is None or self.layout_key(rec, self.lecture, self.diagnostics) != self.key:
            return 0  # a restart changed the runs: the loop rebuilds the figures first
        with rec.lock:
            full = rec is not self.shown or not np.isfinite(self.sent_upto)
            k = self.W if full else rec.new_columns(int(self.sent_upto))
            if k <= 0:
                return 0
            last = rec.last_cycle
            frame = {"seq": [self.seq + 1], "k": [k], "last": [float(last)]}
            for i, (_, getter, lo, hi) in enumerate(self.images):
                frame[f"c{i}"] = [quantize(getter(k), lo, hi)]
            lines = [(src, self._series_columns(fn, k)) for src, fn, *_ in self.series]
            lines.append((self.rmse_source, self._rmse_columns(k)))
            if self.diag is not None:
                lines.append((self.spread_source, self._spread_columns(k)))
            self._update_small_plots(rec)
        self.seq += 1
        self.sent_at = time.monotonic()
        self.sent_upto = last
        self.shown = rec
        self.frame.data = frame
        for src, data in lines:
            if full:
                src.data = data
            else:
                src.stream(data, rollover=self.W)
        self.x_range.update(start=last - self.W + 0.5, end=last + 0.5)
        self.sent_bytes = sum(v[0].nbytes for key, v in frame.items() if key.startswith("c")) + sum(
            sum(np.asarray(col).nbytes for col in data.values()) for _, data in lines)
        return k

    def refresh_series(self) -> None:
        """Re-send the component time series whole (the shown component changed)."""
        rec = self.state.recorder
        if rec is None:
            return
        with rec.lock:
            for src, fn, p, title_fn in self.series:
                src.data = self._series_columns(fn, self.W)
                p.title.text = title_fn()

    def _update_small_plots(self, rec) -> None:
        """R-RMSE axis, learned localization, diagnostics, windows: small, recomputed from the window."""
        state = self.state
        for label, box in self.window_boxes:
            phase = rec.runs[label].window
            if phase is None:
                continue
            done, length = phase
            # The window ends at the next solve: from the last analysis (cycle - done) to L cycles later.
            start = rec.last_cycle - done
            box.update(left=start + 0.5, right=start + length + 0.5, visible=True)
        finite = [rec.runs[label].rrmse.ordered() for label in self.labels
                  if not state.run_status(label)]  # off-track runs do not set the scale
        top = max((float(np.nanmax(v)) for v in finite if np.isfinite(v).any()), default=1.0)
        end = _nice_ceiling(1.1 * min(top, 5.0))
        if abs(self.rmse_range.end - end) > 1e-9:
            self.rmse_range.end = end
        if self.loc_fig is not None:
            self._update_localization(rec)
        if self.diag is not None:
            self._update_diagnostics(rec)

    def _update_localization(self, rec) -> None:
        state = self.state
        dist = np.arange(self.dim // 2 + 1, dtype=float)
        gc = state.gaspari_cohn_curve(dist)
        if list(self.gc_source.data["y"]) != list(gc):
            self.gc_source.data = {"x": dist, "y": gc}
        r = state.gc_radius()
        title = f"Localization weight vs distance (Gaspari–Cohn radius {r:g})"
        if not self.mnmef_labels:
            title += "; add MNMEF to see g_θ"
        if self.loc_fig.title.text != title:
            self.loc_fig.title.text = title
        top = 1.05
        for label, src in self.loc_sources.items():
            summary = rec.localization_summary(label)
            if summary is None:
                continue
            m, s = summary
            x = state.localization_distances(label, len(m))
            src.data = {"x": x, "m": m, "lo": m - s, "hi": m + s}
            top = max(top, float(np.max(m + s)))
        end = _nice_ceiling(top * 1.05)
        if abs(self.loc_range.end - end) > 1e-9:
            self.loc_range.end = end

    def _update_diagnostics(self, rec) -> None:
        state = self.state
        N = rec.N
        spread_top = 0.0
        for label in self.labels:
            r = rec.runs[label]
            vals = np.concatenate([r.rmse.ordered(), r.spread_rms.ordered()])
            if not state.run_status(label) and np.isfinite(vals).any():
                spread_top = max(spread_top, float(np.nanmax(vals)))
            src, fig = self.rank_sources[label]
            hist = {}
            for key, observed in (("observed", True), ("unobserved", False)):
                h = rec.rank_histogram(label, observed).astype(float)
                hist[key] = h / h.sum() if h.sum() > 0 else h
            top = max(0.05, float(max(hist["observed"].max(initial=0), hist["unobserved"].max(initial=0))))
            src.data = {"rank": np.arange(N + 1), **hist}
            end = _nice_ceiling(top * 1.1)
            if abs(fig.y_range.end - end) > 1e-9:
                fig.y_range.end = end
        end = _nice_ceiling(1.1 * (spread_top or 1.0))
        if abs(self.spread_range.end - end) > 1e-9:
            self.spread_range.end = end
