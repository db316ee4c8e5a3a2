"""deploy/nginx-daviz.conf as committed, tried on loopback: nginx in front of two `panel serve app.py`
servers (the "machines"), browsers through nginx. Each browser sticks to one server (its page and its
websocket reach the server that built its session), browsers are spread over the servers, and a
page plays. Skipped where nginx or Chromium is missing (.ci/run installs both)."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import urllib.request

import pytest

from app_driver import CHROMIUM, ROOT, cycle_of, free_port, launch_chromium, served_app, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
sync_api = pytest.importorskip("playwright.sync_api")
if not os.path.exists(NGINX):
    pytest.skip("no nginx", allow_module_level=True)
if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)

CONF = ROOT / "deploy" / "nginx-daviz.conf"
SERVER_ARGS = ["--check-unused-sessions", "1000", "--unused-session-lifetime", "1000", "--use-xheaders"]


@contextlib.contextmanager
def nginx(tmp_path, listen: int, backends: list[int]):
    """nginx running the committed config, with its ports replaced by these; the access log says which
    server each request went to, under which sticky key."""
    conf = CONF.read_text().replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    conf = re.sub(r"    server 127\.0\.0\.1:500[78];\n", "", conf)
    conf = conf.replace("hash $daviz_sticky consistent;",
                        "hash $daviz_sticky consistent;\n" + "".join(f"    server 127.0.0.1:{b};\n" for b in backends))
    assert conf.count("server 127.0.0.1:") == len(backends)
    (tmp_path / "daviz.conf").write_text(conf)
    (tmp_path / "nginx.conf").write_text(
        f"daemon off; worker_processes 1; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\n"
        "events {}\nhttp {\n"
        "  log_format sticky '$upstream_addr $daviz_sticky $request_uri';\n"
        f"  access_log {tmp_path}/access.log sticky;\n"
        f"  client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;\n"
        f"  include {tmp_path}/daviz.conf;\n}}\n")
    subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], check=True,
                   capture_output=True)
    proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")])
    try:
        wait_until(lambda: (tmp_path / "nginx.pid").exists(), 30, "nginx to start")
        yield f"http://127.0.0.1:{listen}/app"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _requests(tmp_path) -> list[tuple[str, str, str]]:
    """(server, sticky key, uri) of every request nginx has logged (a websocket once it has closed)."""
    return [tuple(line.split(" ", 2)) for line in (tmp_path / "access.log").read_text().splitlines()]


def test_nginx_keeps_each_browser_on_one_server_and_spreads_browsers(tmp_path):
    listen = free_port()
    origin = (f"127.0.0.1:{listen}",)
    with served_app(None, SERVER_ARGS, origins=origin) as a, served_app(None, SERVER_ARGS, origins=origin) as b, \
            nginx(tmp_path, listen, [a["port"], b["port"]]) as url, sync_api.sync_playwright() as p:
        servers = {f"127.0.0.1:{a['port']}", f"127.0.0.1:{b['port']}"}
        # Twelve first visits (no cookie yet), as twelve laptops behind one address: both servers get some
        # (all twelve on one server by chance: 1 in 2048). A page nobody connects to costs nothing.
        for _ in range(12):
            with urllib.request.urlopen(url, timeout=60) as response:
                assert "daviz_server=" in response.headers["Set-Cookie"]
        assert {server for server, _, _ in _requests(tmp_path)} == servers
        # Three browsers: each one's page, static files and websocket all reach one server, and they play.
        browser = launch_chromium(p)
        pages = []
        for i in range(3):
            page = browser.new_context().new_page()
            page.goto(url + f"?filters=EnKF&N=10&speed=20&seed={i}")
            page.get_by_role("button", name="Play").click()
            pages.append(page)
        wait_until(lambda: all(cycle_of(page) >= 10 for page in pages), 120, "the pages behind nginx to play")
        browser.close()  # the websockets close and are logged
        wait_until(lambda: sum("/app/ws" in uri for _, _, uri in _requests(tmp_path)) == 3, 30, "three websockets")
        by_browser: dict[str, set] = {}
        for server, key, uri in _requests(tmp_path)[12:]:
            by_browser.setdefault(key, set()).add(server)
        assert len(by_browser) == 3 and all(len(s) == 1 for s in by_browser.values()), by_browser
