"""The explorer's wire format: Hovmöller columns as 8-bit colour codes applied in the browser, and the
new points of the line plots.

A frame carries only the columns recorded since the previous frame, quantised to the 255 levels a
256-colour map can show (code 255 = missing: NaN, or a diverged filter), so a push at one cycle per
frame is ~d bytes per image instead of a whole float32 window. The browser shifts each image left
by k columns in place, writes the decoded new ones, redraws, and acknowledges the frame after it has
painted it; the server sends the next frame only after that acknowledgement (flow control), so no
backlog can build up between server and browser and a click is never queued behind frames.
"""
from __future__ import annotations

import numpy as np

MISSING = 255
TOP = 254  # codes 0..254 span [lo, hi]


def quantize(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """uint8 codes: lo -> 0, hi -> 254 (values outside are clipped), NaN/inf -> 255."""
    v = np.asarray(values, dtype=np.float64)
    codes = np.clip(np.rint((v - lo) * (TOP / (hi - lo))), 0, TOP)
    return np.where(np.isfinite(v), codes, MISSING).astype(np.uint8)


def send_lines(source, data: dict, full: bool, window: int) -> int:
    """Points of a line plot: the whole window when `full` (a new experiment or layout), else only the
    new ones, streamed (the browser drops what falls out of the window). Returns the bytes sent."""
    if full:
        source.data = data
    else:
        source.stream(data, rollover=window)
    return sum(np.asarray(column).nbytes for column in data.values())


def dequantize(codes: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """What the browser draws for `codes` (the inverse of `quantize` up to half a level)."""
    codes = np.asarray(codes)
    values = lo + codes.astype(np.float32) * np.float32((hi - lo) / TOP)
    return np.where(codes == MISSING, np.float32(np.nan), values).astype(np.float32)


# Runs in the browser when the server replaces the frame source's data (a Bokeh CustomJS; args:
# frame, targets (image sources), rows/lo/hi (per target), W (window length)). It mutates the image
# arrays in place and emits `change` without setting a property, so nothing is echoed back except
# the acknowledgement (`frame.tags = [seq]`), which is the point.
APPLY_FRAME_JS = """
const d = frame.data;
if (!d.seq || d.seq.length === 0) { return; }
const t0 = performance.now();
const seq = d.seq[0], k = d.k[0], last = d.last[0];
const kk = Math.min(k, W);
for (let i = 0; i < targets.length; i++) {
  const column = d['c' + i];
  if (!column || column.length === 0) { continue; }
  const block = column[0], src = targets[i], nrows = rows[i];
  const step = (hi[i] - lo[i]) / 254, base_value = lo[i];
  let img = src.data.image[0];
  if (img.length !== nrows * W) {
    img = new img.constructor(nrows * W, [nrows, W]);
    img.fill(NaN);
    src.data.image[0] = img;
  }
  for (let r = 0; r < nrows; r++) {
    const base = r * W, from = r * k + (k - kk), to = base + W - kk;
    if (kk < W) { img.copyWithin(base, base + kk, base + W); }
    for (let j = 0; j < kk; j++) {
      const c = block[from + j];
      img[to + j] = (c === 255) ? NaN : base_value + c * step;
    }
  }
  src.data.x[0] = last - W + 0.5;
  src.data.dw[0] = W;
  src.change.emit();
}
// Acknowledge after the browser has painted this frame (rAF runs before the paint, the timeout after it).
// window.__daviz_draw_ms: how long the browser took for the last frame (read by the benchmark).
requestAnimationFrame(() => setTimeout(() => {
  window.__daviz_draw_ms = performance.now() - t0;
  frame.tags = [seq];
}, 0));
"""
