"""The figures of one layout (system, runs, lecture mode, diagnostics) and the frames that keep them live.

`ExplorerPlots` lays the views (views/) out in a main area, a side column and, with diagnostics, a
third column, and then sends frames: only the columns recorded since the last frame, the next one
only once the browser has drawn the last (frames.py has the wire format and the browser side). Every
range is a `Range1d` the server sets (never a DataRange1d the browser would compute and echo back),
and all time axes share one range so the panels scroll together. Each run keeps its colour from
runs.py on every plot.
"""
from __future__ import annotations

import math
import time

import numpy as np
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, CustomJS, Range1d

from .frames import APPLY_FRAME_JS
from .views.diagnostics import DiagnosticsView
from .views.hovmoller import HovmollerView
from .views.localization import LocalizationView
from .views.rrmse import RrmseView
from .views.series import SeriesView
from .views.style import Style

ACK_TIMEOUT = 5.0  # seconds without an acknowledgement before the next frame goes anyway
L63_NAMES = ("x", "y", "z")


class ExplorerPlots:
    """All figures of one explorer session for one layout; `push_frame` keeps them live."""

    def __init__(self, state, lecture: bool = False, diagnostics: bool = False, first_seq: int = 0):
        self.state = state
        rec = state.recorder  # read once: a restart on the engine thread swaps it whole
        self.key = self.layout_key(rec, lecture, diagnostics)
        self.sys = rec.system
        self.dim = self.sys.dim
        self.lecture = lecture
        self.W = state.window
        self.x_range = Range1d(-self.W + 0.5, 0.5)
        style = Style(lecture)
        self.hovmoller = None
        if self.sys.periodic:
            self.hovmoller = HovmollerView(self.sys, list(rec.runs), style, self.x_range, self.W, lecture)
            self.main = self.hovmoller.build()
            self.series = [SeriesView(rec, self._site_title, lambda: self.state.component, self.sys.field_limits,
                                      int(200 * style.scale), style, self.x_range, legend=True)]
        else:  # Lorenz '63: one trace per component instead of images
            self.series = [SeriesView(rec, lambda c=c: self._trace_title(c), lambda c=c: c,
                                      self.sys.component_limits[c], int(170 * style.scale), style, self.x_range,
                                      legend=(c == self.dim - 1)) for c in range(self.dim)]
            self.main = column([s.build(rec) for s in self.series], sizing_mode="stretch_width")
        self.rrmse = RrmseView(rec, style, self.x_range)
        self.localization = LocalizationView(state, rec, style)
        side = [self.rrmse.build(rec)]
        if self.sys.periodic:
            side.append(self.series[0].build(rec))
        side.append(self.localization.build(rec))
        self.side = column(side, sizing_mode="stretch_width")
        self.diagnostics = diagnostics
        diagnostics_view = DiagnosticsView(rec, style, self.x_range) if diagnostics else None
        self.diag = diagnostics_view.build(rec) if diagnostics else None
        # The views that take the new cycles of each frame (the localization plot is redrawn whole).
        self.lines = [*self.series, self.rrmse] + ([diagnostics_view] if diagnostics else [])
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

    @property
    def images(self) -> list:
        return self.hovmoller.images if self.hovmoller is not None else []

    @property
    def window_boxes(self) -> list:
        """(run, box) shading the variational runs' windows on the site plots."""
        return [box for view in self.series for box in view.window_boxes]

    def _site_title(self) -> str:
        c = min(self.state.component, self.dim - 1)
        seen = "observed" if c in set(self.sys.obs_idx.tolist()) else "not observed"
        return f"Site {c} ({seen}): truth, observations, mean ± 1.96·std"

    def _trace_title(self, c: int) -> str:
        seen = "observed" if c in set(self.sys.obs_idx.tolist()) else "not observed"
        return f"Lorenz '63 {L63_NAMES[c]} ({seen}): truth, observations, mean ± 1.96·std"

    # ------------------------------------------------------------------ frames
    def _frame_source(self):
        self.frame = ColumnDataSource(data={"seq": [], "k": [], "last": []})
        images = self.images
        callback = CustomJS(args=dict(frame=self.frame, targets=[i.source for i in images],
                                      rows=[self.dim] * len(images), lo=[i.lo for i in images],
                                      hi=[i.hi for i in images], W=self.W),
                            code=APPLY_FRAME_JS)
        self.frame.js_on_change("data", callback)
        self.frame.on_change("tags", self._on_ack)  # the browser sets tags = [seq] once it has drawn a frame
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
        rec = self.state.recorder
        if rec is None or self.layout_key(rec, self.lecture, self.diagnostics) != self.key:
            return 0  # a restart changed the runs: the loop rebuilds the figures first
        with rec.lock:
            full = rec is not self.shown or not np.isfinite(self.sent_upto)
            k = self.W if full else rec.new_columns(int(self.sent_upto))
            if k <= 0:
                return 0
            last = rec.last_cycle
            codes = self.hovmoller.update(rec, k) if self.hovmoller is not None else {}
            self.seq += 1
            self.frame.data = {"seq": [self.seq], "k": [k], "last": [float(last)], **codes}
            sent = sum(c[0].nbytes for c in codes.values())
            sent += sum(view.update(rec, k, full) for view in self.lines)
            self.localization.update(rec)
        self.sent_at = time.monotonic()
        self.sent_upto = last
        self.shown = rec
        self.x_range.update(start=last - self.W + 0.5, end=last + 0.5)
        self.sent_bytes = sent
        return k

    def refresh_series(self) -> None:
        """Re-send the site time series whole (the shown site changed)."""
        rec = self.state.recorder
        if rec is None:
            return
        with rec.lock:
            for view in self.series:
                view.refresh(rec)

    def refresh_localization(self) -> None:
        """Redraw the localization plot (the radius or the localization mode changed)."""
        rec = self.state.recorder
        if rec is not None:
            self.localization.update(rec)
