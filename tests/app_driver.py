"""Drive the served explorer in a real headless Chromium (Playwright): used by the browser tests and
by benchmarks/bench_app_browser.py. Not a test module itself.

Latencies are measured inside the page (performance.now() from the click to the moment the page
shows the server's answer), so Playwright's own polling does not count.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("DAVIZ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync"]

# Elements live inside Bokeh/Panel shadow roots: search them all.
FIND_JS = """() => {
window.__daviz_find = (pred) => {
  const stack = [document];
  while (stack.length) {
    const root = stack.pop();
    for (const el of root.querySelectorAll('*')) {
      if (pred(el)) return el;
      if (el.shadowRoot) stack.push(el.shadowRoot);
    }
  }
  return null;
};
window.__daviz_button = (label) => window.__daviz_find(el => el.tagName === 'BUTTON' && el.textContent.trim() === label);
window.__daviz_cycle = () => { const el = window.__daviz_find(el => el.id === 'daviz-cycle'); return el ? parseInt(el.textContent) : -1; };
window.__daviz_running = () => { const el = window.__daviz_find(el => el.id === 'daviz-running'); return el ? el.textContent : ''; };
window.__daviz_samples = [];
window.__daviz_sample = (every_ms) => {  // (ms, cycle shown) every every_ms, kept in the page
  clearInterval(window.__daviz_sampler);
  window.__daviz_samples = [];
  window.__daviz_sampler = setInterval(() => window.__daviz_samples.push([performance.now(), window.__daviz_cycle()]), every_ms);
};
window.__daviz_frame = () => {  // frame numbers go on across layouts: the newest is the largest
  let seq = -1;
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.data != null && m.data.seq !== undefined) seq = Math.max(seq, m.tags.length ? m.tags[0] : 0);
  return seq;
};
window.__daviz_wait = async (cond, timeout_ms) => {
  const t0 = performance.now();
  while (!cond()) {
    if (performance.now() - t0 > timeout_ms) return -1;
    await new Promise(r => setTimeout(r, 5));
  }
  return performance.now() - t0;
};
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll `condition` until it returns a truthy value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if last:
                return last
        except Exception as exc:  # element not there yet
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def launch_chromium(playwright, **kwargs):
    """Debian's headless Chromium through Playwright (Playwright's own browser download cannot work here)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, **kwargs)


@contextlib.contextmanager
def served_app(log_path: Path | None = None, extra_args=(), env=None, port: int | None = None,
               origins: tuple[str, ...] = ()):
    """`panel serve app.py` on a free port (or `port`); yields {'url', 'proc', 'port'}; stops it (SIGTERM) at
    the end. `origins`: further hosts the websocket may come from (a load balancer in front)."""
    port = port or free_port()
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    allowed = [arg for origin in (f"127.0.0.1:{port}", *origins) for arg in ("--allow-websocket-origin", origin)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "panel", "serve", "app.py", "--port", str(port), "--address", "127.0.0.1",
         *allowed, *extra_args],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, process_group=0,  # one group: --num-procs forks
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})})

    def up():  # the port accepts connections (a GET of /app would start a whole session)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True

    try:
        wait_until(up, 90, "panel serve to answer")
        yield {"url": f"http://127.0.0.1:{port}/app", "proc": proc, "port": port}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stop_group(proc.pid)  # the processes --num-procs forked outlive their parent
        if log_path:
            log.close()


def stop_group(pgid: int, timeout: float = 15) -> None:
    """SIGTERM to what is left of a process group, SIGKILL after `timeout` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def open_page(browser, url: str, errors: list | None = None, viewport=(1440, 900), min_canvases: int = 4,
              ws_bytes: list | None = None):
    """A new page at `url`, loaded and drawn; `ws_bytes` collects the size of every websocket message received."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    if ws_bytes is not None:
        page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: ws_bytes.append(len(payload))))
    if errors is not None:
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(url)
    page.get_by_role("button", name="Play").wait_for(timeout=90_000)
    page.evaluate(FIND_JS)
    if min_canvases:
        wait_until(lambda: page.locator("canvas").count() >= min_canvases, 90, "the plots to draw")
    return page


def cycle_of(page) -> int:
    return int(page.locator("#daviz-cycle").inner_text(timeout=10_000))


def status_of(page) -> str:
    return page.locator("#daviz-status").inner_text(timeout=10_000)


def frame_seq(page) -> int:
    """The number of the last frame the page acknowledged (drew)."""
    return int(page.evaluate("() => window.__daviz_frame()"))


def click_and_time(page, button: str, answered_js: str, timeout_ms: int = 60_000) -> float:
    """Click `button` in the page and return the ms until `answered_js` (a JS expression) holds; -1 if never."""
    return float(page.evaluate(f"""async () => {{
      const before = window.__daviz_cycle();
      const b = window.__daviz_button({button!r});
      b.click();
      return await window.__daviz_wait(() => {answered_js}, {timeout_ms});
    }}"""))


PLAY_ENABLED = "(() => { const p = window.__daviz_button('Play'); return p && !p.disabled; })()"
PAUSED = "window.__daviz_running() === 'paused'"  # the status line: the last cycle computed is drawn
STEPPED = "window.__daviz_cycle() === before + 1"
# Reset while playing goes on playing from cycle 0: the first status the page shows may already be a
# few cycles on (on a fast machine it never shows 0), so "answered" means the count went back.
RESET = "(() => { const c = window.__daviz_cycle(); return c >= 0 && c < before; })()"


def _burn():  # a CPU-bound process, as another user's job would be
    while True:
        pass


@contextlib.contextmanager
def cpu_load(processes: int = 2):
    """`processes` CPU-bound processes beside the app while the block runs."""
    procs = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
            p.join()
