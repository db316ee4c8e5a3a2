"""Regenerate the README's screenshots of the explorer (a deliberate step: tests never write docs/).

    python scripts/screenshots.py            # writes docs/explorer_1920x1080.png, _1366x768.png, _1024x768_lecture.png

Serves app.py, opens it in headless Chromium at three screen sizes, plays until the window is
full, pauses and takes the picture of what fits on the screen.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from app_driver import CHROMIUM, CHROMIUM_ARGS, cycle_of, open_page, served_app, status_of, wait_until  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
SHOTS = [  # (file, viewport, query, buttons to press first)
    ("explorer_1920x1080.png", (1920, 1080), "?system=l96&N=20&speed=30", []),
    ("explorer_1366x768.png", (1366, 768), "?system=ks&N=20&speed=30&filters=EnKF,LETKF,MNMEF", []),
    ("explorer_1024x768_lecture.png", (1024, 768), "?system=l96&N=10&speed=30&filters=LETKF,MNMEF", ["Lecture mode"]),
    ("explorer_diagnostics.png", (1920, 1080), "?system=l96&N=20&speed=30&filters=EnKF,LETKF,MNMEF",
     ["Diagnostics"]),
]


def main() -> None:
    from playwright.sync_api import sync_playwright

    DOCS.mkdir(exist_ok=True)
    with served_app() as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for name, viewport, query, buttons in SHOTS:
            page = open_page(browser, server["url"] + query, viewport=viewport)
            for label in buttons:
                page.get_by_role("button", name=label).click()
            page.get_by_role("button", name="Play").click()
            wait_until(lambda: cycle_of(page) >= 260, 600, "a full window of cycles")
            page.get_by_role("button", name="Pause").click()
            wait_until(lambda: "paused" in status_of(page), 60, "the pause")
            time.sleep(1.0)  # the last frame's paint
            page.screenshot(path=str(DOCS / name))
            print(f"wrote docs/{name}")
            page.context.close()
        browser.close()


if __name__ == "__main__":
    main()
