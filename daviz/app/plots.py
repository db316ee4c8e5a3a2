"""Raw Bokeh figures and sources for the explorer's hot path (no panel import here).

`ExplorerPlots` builds, for one (system, set of runs), every figure and ColumnDataSource once and
then only replaces source data (`update`). Hovmöller images are float32 (d, W) arrays swapped in
whole (`source.data = …`), which measured far faster than HoloViews re-rendering or
`ColumnDataSource.stream` of image rows. Colour mappers are fixed per system and every time axis
shares one Range1d, so the panels scroll together.
"""
from __future__ import annotations

import numpy as np
from bokeh.layouts import column, gridplot
from bokeh.models import (ColorBar, ColumnDataSource, Div, Legend, LinearColorMapper, Range1d)
from bokeh.palettes import Inferno256, Viridis256
from bokeh.plotting import figure

from .state import ERROR_LIMITS, FIELD_LIMITS, ExplorerState

RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")
TRUTH_COLOR = "#222222"
OBS_COLOR = "#e6550d"
FONT = "10px"


def _style(p, show_x: bool = True, show_y: bool = True) -> None:
    p.title.text_font_size = "11px"
    p.title.text_font_style = "normal"
    p.xaxis.visible = show_x
    p.yaxis.visible = show_y
    p.axis.major_label_text_font_size = FONT
    p.axis.axis_label_text_font_size = FONT
    p.axis.axis_label_text_font_style = "normal"
    p.grid.visible = False
    p.min_border_left = 4
    p.min_border_right = 4
    p.min_border_top = 2
    p.min_border_bottom = 2
    p.outline_line_color = "#bbbbbb"
    p.toolbar.logo = None


class ExplorerPlots:
    """All figures of one explorer session; rebuilt by the view when system or runs change."""

    def __init__(self, state: ExplorerState, image_width: int = 200, image_height: int = 72,
                 side_width: int = 300):
        self.state = state
        self.key = self.layout_key(state)
        self.system, labels = state.built_for
        self.labels = list(labels)
        self.colors = {label: RUN_COLORS[i % len(RUN_COLORS)] for i, label in enumerate(self.labels)}
        self.sys = sys_ = state.built_system
        self.has_space = bool(sys_.periodic)
        self.dim = sys_.dim
        W = state.window
        self.x_range = Range1d(-W + 0.5, 0.5)
        self.image_sources: list[tuple[ColumnDataSource, callable]] = []
        self.series: list[tuple[ColumnDataSource, callable]] = []
        if self.has_space:
            self.main = self._hovmoller_grid(image_width, image_height)
        else:
            self.main = self._trace_column(3 * image_width + 60)
        self.side = self._side_column(side_width)
        self.update()

    @staticmethod
    def layout_key(state: ExplorerState) -> tuple:
        """Figures depend only on the system and the runs; anything else just swaps data."""
        return state.built_for

    # ------------------------------------------------------------------ Hovmöller images
    def _hovmoller_grid(self, fw: int, fh: int):
        st = self.state
        d = self.dim
        lo, hi = FIELD_LIMITS[self.system]
        elo, ehi = ERROR_LIMITS[self.system]
        field_map = LinearColorMapper(palette=Viridis256, low=lo, high=hi, nan_color=(0, 0, 0, 0))
        err_map = LinearColorMapper(palette=Inferno256, low=elo, high=ehi, nan_color=(0, 0, 0, 0))
        y_range = Range1d(-0.5, d - 0.5)

        def image(title, getter, mapper, show_x=False, bar=None):
            src = ColumnDataSource(data=dict(image=[np.zeros((d, 1), np.float32)], x=[0.0], y=[-0.5],
                                             dw=[1.0], dh=[float(d)]))
            p = figure(title=title, x_range=self.x_range, y_range=y_range, frame_width=fw, frame_height=fh,
                       tools="", toolbar_location=None)
            p.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=mapper)
            _style(p, show_x=show_x)
            p.yaxis.ticker = [0, d // 2, d - 1]
            p.background_fill_color = "#f4f4f4"
            if bar is not None:
                cb = ColorBar(color_mapper=mapper, width=8, title=bar, title_text_font_size=FONT,
                              title_text_font_style="normal", major_label_text_font_size=FONT, padding=3)
                p.add_layout(cb, "right")
            self.image_sources.append((src, getter))
            return p

        rows = [[image("Truth (space × cycle)", lambda: st.truth_buf, field_map, bar="state"),
                 image(f"Observations (every {max(1, d // self.sys.obs_dim)}th site, with noise)",
                       lambda: st.obs_buf, field_map),
                 None]]
        for i, label in enumerate(self.labels):
            last = i == len(self.labels) - 1
            b = lambda label=label: st.buffers[label]  # noqa: E731
            rows.append([
                image(f"{label}: ensemble mean", lambda b=b: b().mean, field_map, show_x=last),
                image(f"{label}: |mean − truth|", lambda b=b: b().error, err_map, show_x=last),
                image(f"{label}: spread (std)", lambda b=b: b().spread, err_map, show_x=last,
                      bar="|error|, spread" if i == 0 else None),
            ])
        if self.labels:
            for p in rows[-1]:
                p.xaxis.axis_label = "cycle"
        return gridplot(rows, toolbar_location=None)

    # ------------------------------------------------------------------ time series (Fig. 3)
    def _series_figure(self, title_fn, comp_fn, width, height, show_x=True, legend=False):
        st = self.state
        cols = {"t": [], "truth": [], "obs": []}
        for i in range(len(self.labels)):
            cols.update({f"m{i}": [], f"lo{i}": [], f"hi{i}": []})
        src = ColumnDataSource(data=cols)
        p = figure(title=title_fn(), x_range=self.x_range, frame_width=width, frame_height=height,
                   tools="", toolbar_location=None)
        items = []
        for i, label in enumerate(self.labels):
            c = self.colors[label]
            band = p.varea(x="t", y1=f"lo{i}", y2=f"hi{i}", source=src, fill_color=c, fill_alpha=0.18)
            line = p.line(x="t", y=f"m{i}", source=src, line_color=c, line_width=1.5)
            items.append((label, [band, line]))
        truth = p.line(x="t", y="truth", source=src, line_color=TRUTH_COLOR, line_width=1.6, line_dash="solid")
        obs = p.scatter(x="t", y="obs", source=src, marker="x", size=5, line_color=OBS_COLOR)
        items = [("truth", [truth]), ("observation", [obs])] + items
        _style(p, show_x=show_x)
        if legend:
            leg = Legend(items=items, label_text_font_size=FONT, spacing=0, padding=2, margin=2,
                         glyph_height=10, glyph_width=14, click_policy="hide", location="top_left",
                         orientation="vertical", background_fill_alpha=0.6)
            p.add_layout(leg, "right")

        def getter():
            k = min(max(int(comp_fn()), 0), self.dim - 1)
            data = {"t": st.cycles, "truth": st.truth_buf[k], "obs": st.obs_buf[k]}
            for i, label in enumerate(self.labels):
                b = st.buffers[label]
                m, s = b.mean[k], b.spread[k]
                data.update({f"m{i}": m, f"lo{i}": m - 1.96 * s, f"hi{i}": m + 1.96 * s})
            return data

        self.series.append((src, getter, p, title_fn))
        return p

    def _component_title(self) -> str:
        k = min(self.state.component, self.dim - 1)
        seen = "observed" if k in set(self.sys.obs_idx.tolist()) else "not observed"
        return f"Component {k} ({seen}): truth, obs, mean ± 1.96·std"

    def _trace_column(self, width):
        st = self.state
        names = ("x", "y", "z")
        figs = []
        for k in range(self.dim):
            def title(k=k):
                seen = "observed" if k in set(self.sys.obs_idx.tolist()) else "not observed"
                return f"Lorenz '63 {names[k]} ({seen}): truth, obs, mean ± 1.96·std"
            figs.append(self._series_figure(title, lambda k=k: k, width, 150, show_x=(k == self.dim - 1),
                                            legend=(k == 0)))
        figs[-1].xaxis.axis_label = "cycle"
        return column(figs)

    # ------------------------------------------------------------------ side column
    def _side_column(self, width):
        st = self.state
        # running R-RMSE
        self.rmse_source = ColumnDataSource(data={"t": [], **{f"r{i}": [] for i in range(len(self.labels))}})
        p = figure(title="Running R-RMSE (lower is better)", x_range=self.x_range, frame_width=width,
                   frame_height=150, tools="", toolbar_location=None)
        items = []
        for i, label in enumerate(self.labels):
            r = p.line(x="t", y=f"r{i}", source=self.rmse_source, line_color=self.colors[label], line_width=2)
            items.append((label, [r]))
        _style(p)
        p.y_range.start = 0
        p.add_layout(Legend(items=items, label_text_font_size=FONT, spacing=0, padding=2, margin=2,
                            glyph_height=10, glyph_width=14, location="top_left", background_fill_alpha=0.6,
                            click_policy="hide"), "center")
        self.rmse_fig = p
        figs = [p]
        if self.has_space:
            figs.append(self._series_figure(self._component_title, lambda: self.state.component, width, 150,
                                            legend=False))
        figs.append(self._localization_figure(width))
        return column(figs)

    def _localization_figure(self, width):
        st = self.state
        self.mnmef_labels = [s.label for s in st.runs if s.base == "mnmef"]
        if not self.has_space:
            p = Div(text="<i>Lorenz '63 has no spatial structure: no localization to show.</i>",
                    width=width, styles={"font-size": "12px"})
            self.loc_fig = None
            return p
        p = figure(title="Localization weight vs distance", frame_width=width, frame_height=140, tools="",
                   toolbar_location=None, x_range=Range1d(-0.5, self.dim // 2 + 0.5))
        self.gc_source = ColumnDataSource(data={"x": [], "y": []})
        gc = p.line(x="x", y="y", source=self.gc_source, line_color="#555555", line_dash="dashed", line_width=2)
        items = [("Gaspari–Cohn", [gc])]
        self.loc_sources = {}
        for label in self.mnmef_labels:
            src = ColumnDataSource(data={"x": [], "m": [], "lo": [], "hi": []})
            band = p.varea(x="x", y1="lo", y2="hi", source=src, fill_color=self.colors[label], fill_alpha=0.25)
            line = p.line(x="x", y="m", source=src, line_color=self.colors[label], line_width=2)
            p.scatter(x="x", y="m", source=src, color=self.colors[label], size=3)
            items.append((f"{label} g_θ (mean ± std)", [band, line]))
            self.loc_sources[label] = src
        _style(p)
        p.xaxis.axis_label = "distance (grid points)"
        p.add_layout(Legend(items=items, label_text_font_size=FONT, spacing=0, padding=2, margin=2,
                            glyph_height=10, glyph_width=14, location="top_right", background_fill_alpha=0.6),
                     "center")
        self.loc_fig = p
        return p

    # ------------------------------------------------------------------ the hot path
    def update(self) -> None:
        """Push the state's buffers into every source (call inside pn.io.hold() when served)."""
        st = self.state
        if not st.buffers or any(label not in st.buffers for label in self.labels):
            return
        W = st.window
        t_end = float(st.cycles[-1])
        x0 = t_end - W + 0.5
        for src, getter in self.image_sources:
            src.data = {"image": [np.ascontiguousarray(getter(), dtype=np.float32)], "x": [x0], "y": [-0.5],
                        "dw": [float(W)], "dh": [float(self.dim)]}
        self.x_range.update(start=x0, end=t_end + 0.5)
        for src, getter, p, title_fn in self.series:
            src.data = getter()
            title = title_fn()
            if p.title.text != title:
                p.title.text = title
        data = {"t": st.cycles}
        for i, label in enumerate(self.labels):
            data[f"r{i}"] = st.buffers[label].rrmse
        self.rmse_source.data = data
        if self.loc_fig is not None:
            dist = np.arange(self.dim // 2 + 1, dtype=float)
            gc = st.gaspari_cohn_curve(dist)
            r = st.gc_radius()
            if list(self.gc_source.data["y"]) != list(gc):
                self.gc_source.data = {"x": dist, "y": gc}
            title = (f"Localization vs distance: Gaspari–Cohn at radius {r:g}"
                     + ("" if self.mnmef_labels else " (MNMEF not running)"))
            if self.loc_fig.title.text != title:
                self.loc_fig.title.text = title
            for label, src in self.loc_sources.items():
                res = st.learned_localization(label)
                if res is not None:
                    x, m, s = res
                    src.data = {"x": x, "m": m, "lo": m - s, "hi": m + s}
