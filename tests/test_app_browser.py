"""End to end: `panel serve app.py` in a subprocess, driven by real headless Chromium (Playwright).

Needs playwright (python) and a Chromium at /usr/bin/chromium (or DAVIZ_CHROMIUM); skipped otherwise.
Waits on conditions, never fixed sleeps, except where a test checks that something does *not* change
for a while. Bounds on time are generous (a busy CI machine must not fail them); the speed targets
live in benchmarks/bench_app_browser.py.
"""
from __future__ import annotations

import os
import shutil
import time
import urllib.parse

import numpy as np
import pytest

from app_driver import (CHROMIUM, PAUSED, PLAY_ENABLED, RESET, ROOT, STEPPED, click_and_time, cpu_load, cycle_of,
                        frame_seq, launch_chromium, open_page, served_app, status_of, wait_until)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
sync_api = pytest.importorskip("playwright.sync_api")
if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)

SERVER_ARGS = ["--check-unused-sessions", "1000", "--unused-session-lifetime", "1000"]
ALL_RUNS = "EnKF,ESRF,LETKF,IEnKF,MNMEF,LETKF (no localization),LETKF (no inflation)"


@pytest.fixture(scope="module")
def server():
    log = ROOT / ".pytest_cache" / "app_server.log"
    log.parent.mkdir(exist_ok=True)
    with served_app(log, SERVER_ARGS) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture(autouse=True)
def close_pages_left_open(browser):
    """A test that fails mid-way leaves its tab playing; close it so the next test starts on an idle server."""
    yield
    for context in list(browser.contexts):
        context.close()


def image_rows(page) -> list[int]:
    """Rows (sites) of every Hovmöller image of the current layout (the images the newest frame source
    writes into) as the browser holds them."""
    return page.evaluate("""() => { let frame = null, seq = -1;
      for (const d of Bokeh.documents) for (const m of d.all_models)
        if (m.data != null && m.data.seq !== undefined && (m.tags[0] ?? 0) > seq) { frame = m; seq = m.tags[0] ?? 0; }
      if (frame === null) return [];
      const args = frame.js_property_callbacks['change:data'][0].args;
      const targets = args instanceof Map ? args.get('targets') : args.targets;
      return targets.map(src => src.data.image[0].shape[0]); }""")


def truth_image(page) -> bytes:
    """The truth Hovmöller's pixels (PNG bytes of its canvas, as drawn). The layout is rebuilt once when
    MNMEF's weights finish loading in the background (it joins by a restart), which can replace the canvas
    between finding it and taking its picture: then the new one is found and taken."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return page.locator("canvas").nth(TRUTH_CANVAS).screenshot(timeout=10_000)
        except sync_api.Error as exc:
            if "not attached" not in str(exc) or time.monotonic() > deadline:
                raise


TRUTH_CANVAS = 4  # Bokeh draws each plot on two canvases; the two colour-bar strips come first


def test_play_pause_step_switch_system(server, browser, tmp_path):
    errors: list[str] = []
    page = open_page(browser, server["url"] + "?speed=40", errors, min_canvases=10)
    wait_until(lambda: frame_seq(page) >= 1, 60, "the first frame")
    assert cycle_of(page) == 0
    before = truth_image(page)

    page.get_by_role("button", name="Play").click()
    wait_until(lambda: cycle_of(page) >= 10, 60, "the cycle counter to reach 10")
    assert "cycles/s" in status_of(page)
    wait_until(lambda: truth_image(page) != before, 30, "the truth Hovmöller image to change")
    c1, f1 = cycle_of(page), frame_seq(page)
    frame = truth_image(page)
    wait_until(lambda: cycle_of(page) >= c1 + 10, 30, "ten more cycles")
    wait_until(lambda: truth_image(page) != frame, 30, "the image to scroll on")
    assert frame_seq(page) > f1, "the browser acknowledges the frames it draws"
    page.screenshot(path=str(tmp_path / "l96.png"), full_page=True)

    # Pause stops the counter; Step advances exactly one.
    page.get_by_role("button", name="Pause").click()
    sync_api.expect(page.get_by_role("button", name="Play")).to_be_enabled(timeout=10_000)
    wait_until(lambda: "paused" in status_of(page), 10, "the status to say paused")
    paused = cycle_of(page)
    time.sleep(1.0)  # checking that nothing happens needs a little time
    assert cycle_of(page) == paused
    page.get_by_role("button", name="Step").click()
    wait_until(lambda: cycle_of(page) == paused + 1, 10, "Step to advance one cycle")

    # Switch the system: the experiment restarts from cycle 0 and the plots rebuild for 128 sites.
    select = page.locator("select", has=page.locator("option", has_text="Kuramoto"))
    select.select_option(label="Kuramoto–Sivashinsky")
    wait_until(lambda: "Kuramoto" in status_of(page) and cycle_of(page) == 0, 60,
               "the restart after switching system")
    wait_until(lambda: "system=ks" in page.url, 10, "the URL to follow the settings")
    page.get_by_role("button", name="Play").click()
    wait_until(lambda: cycle_of(page) >= 5, 60, "the KS experiment to advance")
    rows = image_rows(page)
    assert rows and all(r == 128 for r in rows), rows  # every KS image holds 128 sites

    # Lorenz '63 shows traces instead of images.
    select.select_option(label="Lorenz '63")
    wait_until(lambda: "Lorenz '63" in status_of(page), 60, "the switch to Lorenz '63")
    start = cycle_of(page)
    wait_until(lambda: cycle_of(page) >= start + 3, 60, "the Lorenz '63 experiment to advance")
    assert image_rows(page) == []
    assert not errors, errors
    page.context.close()


def test_controls_answer_under_load(server, browser):
    """All seven filters at full speed with two CPU-bound processes beside the server: Pause, Step,
    Reset and a preset change are answered (the old design never answered Pause within 120 s)."""
    with cpu_load(2):
        page = open_page(browser, server["url"] + f"?speed=60&filters={urllib.parse.quote(ALL_RUNS)}",
                         min_canvases=10)
        page.get_by_role("button", name="Play").click()
        wait_until(lambda: frame_seq(page) >= 3, 120, "three frames drawn")
        ms = click_and_time(page, "Pause", PLAY_ENABLED, timeout_ms=20_000)
        assert 0 <= ms < 20_000, f"Pause not answered ({ms:.0f} ms)"
        time.sleep(1.0)  # the cycle that was running when Pause came is drawn, then nothing moves
        ms = click_and_time(page, "Step", STEPPED, timeout_ms=20_000)
        assert 0 <= ms < 20_000, f"Step not answered ({ms:.0f} ms)"
        page.get_by_role("button", name="Play").click()
        wait_until(lambda: cycle_of(page) >= 20, 120, "playing again")
        ms = click_and_time(page, "Reset", RESET, timeout_ms=30_000)
        assert 0 <= ms < 30_000, f"Reset not answered ({ms:.0f} ms)"
        preset = page.locator("select", has=page.locator("option", has_text="Why inflation"))
        preset.select_option(label="Why inflation")
        wait_until(lambda: "LETKF (no inflation)" in status_of(page) and "ESRF" not in status_of(page), 30,
                   "the preset to apply")
        page.context.close()


def test_bad_urls_render_a_message_and_inject_nothing(server, browser):
    cases = {
        "sigma_y=0": "sigma_y=0", "sigma_y=nan": "sigma_y=nan", "sigma_y=20": "sigma_y=20",
        "seed=-1": "seed=-1", "filters=": "EnKF",  # an empty value is ignored: the default filters run
        "system=l63&sigma_y=0.5&filters=MNMEF": "MNMEF",
        "seed=" + urllib.parse.quote("[Session expired, log in again](https://evil.example/login)"): "Session expired",
        "seed=" + urllib.parse.quote("![x](http://127.0.0.2:9/track.png)"): "track.png",
    }
    for query, shown in cases.items():
        errors: list[str] = []
        requests: list[str] = []
        context = browser.new_context(viewport={"width": 1366, "height": 768})
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server["url"] + "?" + query)
        page.get_by_role("button", name="Play").wait_for(timeout=90_000)
        wait_until(lambda: page.get_by_text(shown).count() > 0, 60, f"a message naming {shown!r} for ?{query}")
        links = page.evaluate("""() => { const out = []; const stack = [document];
          while (stack.length) { const r = stack.pop();
            for (const el of r.querySelectorAll('a[href], img')) out.push(el.outerHTML);
            for (const el of r.querySelectorAll('*')) if (el.shadowRoot) stack.push(el.shadowRoot); }
          return out; }""")
        assert not [x for x in links if "evil.example" in x or "track.png" in x], links
        hosts = {urllib.parse.urlsplit(u).hostname for u in requests}
        assert not hosts & {"127.0.0.2", "evil.example"}, requests  # no remote image was fetched
        assert not errors, (query, errors)
        context.close()


def test_corrupt_weights_folder_keeps_the_page(browser, tmp_path):
    (tmp_path / "l96_sigma1.0_N10.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "l96_sigma1.0_N10.json").write_text("[1, 2, 3]")
    with served_app(None, SERVER_ARGS, env={"DAVIZ_PRETRAINED_DIR": str(tmp_path)}) as srv:
        page = open_page(browser, srv["url"] + "?filters=MNMEF,EnKF&N=10", min_canvases=4)
        wait_until(lambda: page.get_by_text("MNMEF unavailable").count() > 0, 60, "the MNMEF message")
        page.get_by_role("button", name="Play").click()
        wait_until(lambda: cycle_of(page) >= 3, 60, "EnKF to run without MNMEF")
        page.goto(srv["url"] + "?filters=MNMEF")
        page.get_by_role("button", name="Play").wait_for(timeout=60_000)
        wait_until(lambda: page.get_by_text("MNMEF unavailable").count() > 0, 60, "the message, MNMEF alone")
        page.context.close()


def test_diagnostics_lecture_mode_and_download(server, browser, tmp_path):
    page = open_page(browser, server["url"] + "?filters=EnKF,LETKF&N=10&speed=30", min_canvases=4)
    n_canvas = page.locator("canvas").count()
    page.get_by_role("button", name="Diagnostics").click()
    wait_until(lambda: page.locator("canvas").count() >= n_canvas + 3, 30, "the diagnostics plots")
    page.get_by_role("button", name="Play").click()
    wait_until(lambda: cycle_of(page) >= 30, 60, "30 cycles")
    page.get_by_role("button", name="Pause").click()
    sync_api.expect(page.get_by_role("button", name="Play")).to_be_enabled(timeout=10_000)
    with page.expect_download(timeout=30_000) as info:
        page.get_by_role("button", name="Download this run (.npz)").click()
    path = tmp_path / "run.npz"
    info.value.save_as(path)
    data = np.load(path)
    shown = cycle_of(page)
    assert data["cycle"][-1] >= shown - 1 and data["truth"].shape[1] == 40
    assert {"EnKF__mean", "LETKF__spread"} <= set(data.files) and "code_version" in str(data["settings"])
    page.get_by_role("button", name="Lecture mode").click()
    # Lecture mode: truth and observations, then mean and |error| per filter (no spread column).
    wait_until(lambda: len(image_rows(page)) == 2 + 2 * 2, 30, "the lecture layout")
    page.context.close()


def test_sessions_are_independent_and_freed(server, browser):
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process(server["proc"].pid)
    rss = []
    for round_ in range(3):
        pages = [open_page(browser, server["url"] + f"?filters=EnKF,LETKF&N=10&speed={s}&seed={i}")
                 for i, s in enumerate((8, 12, 16, 20))]
        for page in pages:
            page.get_by_role("button", name="Play").click()
        wait_until(lambda: all(cycle_of(p) >= 30 for p in pages), 90, "all four sessions to run 30 cycles")
        if round_ == 0:
            pages[0].get_by_role("button", name="Pause").click()
            sync_api.expect(pages[0].get_by_role("button", name="Play")).to_be_enabled(timeout=10_000)
            time.sleep(1.0)
            frozen = cycle_of(pages[0])
            others = [cycle_of(p) for p in pages[1:]]
            wait_until(lambda: all(cycle_of(p) >= c + 30 for p, c in zip(pages[1:], others)), 90,
                       "the other three sessions to keep going")
            assert cycle_of(pages[0]) == frozen, "pausing one session must not move or stop the others"
        for page in pages:
            page.context.close()
        # Closed tabs stop at once: the server goes back to idle (no session keeps computing).
        wait_until(lambda: proc.cpu_percent(interval=2.0) < 15.0, 60, "the server to go idle after the tabs closed")
        rss.append(proc.memory_info().rss)
    assert rss[2] - rss[0] < 150e6, f"server RSS grew {(rss[2] - rss[0]) / 1e6:.0f} MB over two more rounds"


def test_server_stops_promptly_on_sigterm_while_sessions_play(browser):
    with served_app(None, SERVER_ARGS) as srv:
        pages = [open_page(browser, srv["url"] + f"?speed=60&seed={i}") for i in range(2)]
        for page in pages:
            page.get_by_role("button", name="Play").click()
        wait_until(lambda: all(cycle_of(p) >= 10 for p in pages), 120, "both sessions to play")
        proc = srv["proc"]
        proc.terminate()
        start = time.monotonic()
        try:
            proc.wait(timeout=15)
        except Exception:
            pytest.fail("panel serve did not exit within 15 s of SIGTERM while sessions were playing")
        assert time.monotonic() - start < 15
        for page in pages:
            page.context.close()


@pytest.mark.parametrize("preset, runs", [
    ("Why score filters need a latent space", ("LETKF", "EnSF", "Latent-EnSF")),
    ("Filters vs smoothers", ("LETKF", "4D-Var", "Neural Incremental DA")),
])
def test_presets_of_the_score_and_variational_methods_play(server, browser, preset, runs):
    errors: list[str] = []
    page = open_page(browser, server["url"] + "?speed=20", errors, min_canvases=4)
    select = page.locator("select", has=page.locator("option", has_text=preset))
    select.select_option(label=preset)
    wait_until(lambda: all(r in status_of(page) for r in runs) and "MNMEF" not in status_of(page), 60,
               f"the preset {preset!r} to apply")
    page.get_by_role("button", name="Play").click()
    wait_until(lambda: cycle_of(page) >= 12, 120, "the preset's filters to run")
    text = status_of(page)
    assert "diverged" not in text, text
    assert len(image_rows(page)) == 2 + 3 * len(runs)
    assert not errors, errors
    page.context.close()


def test_reset_while_paused_always_settles(server, browser):
    """Panel 1.9.4 could leave the last update of a Reset while paused unsent, and the page stayed at
    "cycle 0 · pausing…" (about one Reset in eight on a busy machine; daviz/app/panel_writes.py)."""
    page = open_page(browser, server["url"] + "?speed=30", min_canvases=10)
    for attempt in range(12):
        page.get_by_role("button", name="Play").click()
        start = cycle_of(page)
        wait_until(lambda: cycle_of(page) >= start + 5, 60, "five cycles")
        page.get_by_role("button", name="Pause").click()
        wait_until(lambda: "paused" in status_of(page), 30, "the page to say paused")
        ms = click_and_time(page, "Reset", f"window.__daviz_cycle() === 0 && {PAUSED}", timeout_ms=20_000)
        assert ms >= 0, f"Reset {attempt + 1} while paused: the page stays at {status_of(page)!r}"
    page.context.close()


def test_a_full_server_says_so_and_takes_the_next_page_once_one_closes(browser):
    with served_app(None, SERVER_ARGS, env={"DAVIZ_MAX_SESSIONS": "1"}) as srv:
        first = open_page(browser, srv["url"] + "?speed=20&filters=EnKF&N=10")
        first.get_by_role("button", name="Play").click()
        wait_until(lambda: cycle_of(first) >= 5, 60, "the first session to play")
        full = browser.new_context().new_page()
        full.goto(srv["url"])
        full.get_by_text("The server is full").wait_for(timeout=60_000)
        assert full.get_by_text("1 of 1 sessions in use").count() == 1
        assert full.get_by_role("button", name="Play").count() == 0  # no explorer, nothing computed
        full.context.close()
        first.context.close()  # its slot is free once the server sees the tab gone
        wait_until(lambda: _plays(browser, srv["url"] + "?speed=20&filters=EnKF&N=10"), 60,
                   "a new page to get the free slot and play")


def _plays(browser, url: str) -> bool:
    """Open url; True if it is the explorer and it plays (False, tab closed, if the server is still full)."""
    page = browser.new_context().new_page()
    page.goto(url)
    page.get_by_text("The server is full").or_(page.get_by_role("button", name="Play")).first.wait_for(timeout=60_000)
    if page.get_by_text("The server is full").count():
        page.context.close()
        return False
    page.get_by_role("button", name="Play").click()
    wait_until(lambda: cycle_of(page) >= 5, 60, "the new session to play")
    page.context.close()
    return True


def test_two_sessions_play_under_num_procs_2(browser):
    """`panel serve --num-procs 2`: each page plays, whichever process its HTML and its websocket reach,
    and its styles come from the server (not a CDN this machine may not reach)."""
    with served_app(None, [*SERVER_ARGS, "--num-procs", "2"]) as srv:
        errors: list[str] = []
        pages = [open_page(browser, srv["url"] + f"?speed=20&filters=EnKF,LETKF&N=10&seed={i}", errors)
                 for i in range(2)]
        for page in pages:
            page.get_by_role("button", name="Play").click()
        wait_until(lambda: all(cycle_of(p) >= 10 for p in pages), 120, "both sessions to play")
        counts = [cycle_of(p) for p in pages]
        wait_until(lambda: all(cycle_of(p) >= c + 10 for p, c in zip(pages, counts)), 120, "both to go on playing")
        assert not errors, errors
        for page in pages:
            page.context.close()
