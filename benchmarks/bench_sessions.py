"""How many explorer sessions one server holds: 1, 2, 4, 8, 16 pages playing at once in headless Chromium.

    python benchmarks/bench_sessions.py [--counts 1,2,4,8,16] [--seconds 20] [--speed 10] [--num-procs 1]
                                        [--server-cpus 0]

Serves app.py (`panel serve`, on a free loopback port, optionally with --num-procs) and, for each
count, opens that many pages at once in Debian's headless Chromium, all with the explorer's default
settings (Lorenz '96, N=20, the default filters EnKF, ESRF, LETKF, IEnKF, MNMEF) at --speed cycles/s,
as a class opening the same link would. Measured inside each page, while all of them play:
- cycles/s: the cycle counter the page shows, sampled every 200 ms over --seconds (min / median /
  max over the pages), and the longest time any page's counter stood still ("frozen" if >= 5 s);
- Pause: ms from the click to Play enabled, and to the status line saying "paused" (the last cycle
  computed drawn), for every page in turn while the others play; the worst over the pages;
- CPU (cores busy over the window, from psutil): the server's processes, the browsers', and the rest
  of the machine (other users' jobs).
In a lecture hall the browsers run on the students' laptops; here they run beside the server, and a
page's browser costs several times what its session costs the server (every frame redraws ~15
plots). So the server is pinned to --server-cpus (default: CPU 0, one core: one process's engine and
event loop share one GIL anyway) and the browsers to the other CPUs, and "sessions per core" is the
sessions the server's cores held.
Then: the most sessions with every page at >= 5 cycles/s, every Pause shown <= 1 s and none frozen.
The server's session cap is lifted for the run (DAVIZ_MAX_SESSIONS).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import psutil

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from app_driver import (FIND_JS, PAUSED, PLAY_ENABLED, click_and_time, launch_chromium, served_app,  # noqa: E402
                        wait_until)

TARGET_CPS, TARGET_PAUSE_MS, FROZEN_S = 5.0, 1000.0, 5.0


class CpuMeter:
    """CPU seconds of process groups between `start` and `stop`, as cores busy over that wall time."""

    def __init__(self, groups: dict):
        self.groups = groups  # name -> function returning the psutil.Processes of that group now

    @staticmethod
    def _seconds(procs) -> float:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def start(self) -> None:
        self._procs = {name: list(get()) for name, get in self.groups.items()}
        self._t0 = time.monotonic()
        self._cpu0 = {name: self._seconds(procs) for name, procs in self._procs.items()}
        self._machine0 = psutil.cpu_times()

    def stop(self) -> dict:
        wall = time.monotonic() - self._t0
        out = {name: (self._seconds(procs) - self._cpu0[name]) / wall for name, procs in self._procs.items()}
        m0, m1 = self._machine0, psutil.cpu_times()
        busy = sum(getattr(m1, f) - getattr(m0, f) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
        out["other"] = max(0.0, busy / wall - sum(out.values()))
        return out


def tree(pid: int) -> list:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def open_pages(browser, url: str, count: int) -> list:
    """`count` pages opened together (a class following one link), each with its controls shown."""
    pages = []
    for _ in range(count):
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.goto(url, wait_until="commit", timeout=120_000)
        pages.append(page)
    for page in pages:
        page.get_by_role("button", name="Play").wait_for(timeout=180_000)
        page.evaluate(FIND_JS)
    return pages


def cycles(page) -> int:
    return int(page.evaluate("() => window.__daviz_cycle()"))


def page_rate(samples: list) -> tuple[float, float]:
    """(cycles/s over the samples, longest time the counter stood still in s)."""
    (t0, c0), (t1, c1) = samples[0], samples[-1]
    longest, since = 0.0, t0
    last = c0
    for t, c in samples:
        if c != last:
            longest, since, last = max(longest, t - since), t, c
    longest = max(longest, t1 - since)
    return (c1 - c0) / ((t1 - t0) / 1e3), longest / 1e3


def browser_processes(server_pid: int) -> list:
    """Our own children other than the server: Playwright's driver and Chromium's processes."""
    server = {p.pid for p in tree(server_pid)}
    return [p for p in tree(os.getpid())[1:] if p.pid not in server]


def pin(procs, cpus: set[int]) -> None:
    """Every thread of procs onto cpus (affinity is per thread; threads made later inherit it)."""
    for p in procs:
        try:
            for thread in p.threads():
                os.sched_setaffinity(thread.id, cpus)
        except (psutil.Error, OSError):
            pass


def measure(browser, server: dict, count: int, speed: int, seconds: float) -> dict:
    server_pid = server["proc"].pid
    pages = open_pages(browser, f"{server['url']}?speed={speed}", count)
    for page in pages:
        page.evaluate("() => window.__daviz_button('Play').click()")
    wait_until(lambda: all(cycles(p) >= 3 for p in pages), 180, f"all {count} pages to play")
    meter = CpuMeter({"server": lambda: tree(server_pid), "browsers": lambda: browser_processes(server_pid)})
    for page in pages:
        page.evaluate("() => window.__daviz_sample(200)")
    meter.start()
    time.sleep(seconds)
    cpu = meter.stop()
    rates = [page_rate(page.evaluate("() => window.__daviz_samples")) for page in pages]
    pause_enabled, pause_shown = [], []
    for page in pages:  # each page in turn, while the others play on
        t_enabled = click_and_time(page, "Pause", PLAY_ENABLED, timeout_ms=30_000)
        t_shown = float(page.evaluate(f"async () => await window.__daviz_wait(() => {PAUSED}, 30000)"))
        pause_enabled.append(t_enabled)
        pause_shown.append(t_enabled + t_shown if t_enabled >= 0 and t_shown >= 0 else -1.0)
        page.evaluate("() => window.__daviz_button('Play').click()")
    for page in pages:
        page.context.close()
    wait_until(lambda: psutil.Process(server_pid).cpu_percent(interval=1.0) < 15.0, 60, "the server to go idle")
    cps = [r for r, _ in rates]
    return {"count": count, "cps": cps, "stall": max(s for _, s in rates), "pause_enabled": pause_enabled,
            "pause_shown": pause_shown, "cpu": cpu}


def worst(values: list[float]) -> float:
    return float("inf") if any(v < 0 for v in values) else max(values)


def passes(row: dict) -> bool:
    return min(row["cps"]) >= TARGET_CPS and worst(row["pause_shown"]) <= TARGET_PAUSE_MS and row["stall"] < FROZEN_S


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", default="1,2,4,8,16")
    ap.add_argument("--seconds", type=float, default=20.0, help="playing time over which cycles/s is measured")
    ap.add_argument("--speed", type=int, default=10, help="cycles/s every page asks for")
    ap.add_argument("--num-procs", type=int, default=1, help="panel serve --num-procs")
    ap.add_argument("--server-cpus", default="0", help="CPUs the server runs on (the browsers get the others)")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    from playwright.sync_api import sync_playwright

    all_cpus = set(os.sched_getaffinity(0))
    server_cpus = {int(c) for c in args.server_cpus.split(",")} & all_cpus or all_cpus
    browser_cpus = all_cpus - server_cpus or all_cpus
    rows = []
    extra = ["--num-procs", str(args.num_procs)] if args.num_procs != 1 else []
    env = {"DAVIZ_MAX_SESSIONS": str(10 * max(counts))}
    with served_app(None, extra, env=env) as server:
        os.sched_setaffinity(0, browser_cpus)  # what this process starts from now on (Chromium) runs there
        with sync_playwright() as p:
            run(p, server, counts, args, server_cpus, rows)
    report(rows, counts, args, server_cpus, browser_cpus)


def run(p, server: dict, counts: list[int], args, server_cpus: set[int], rows: list) -> None:
    """Warm the server up, pin it, then measure every count (printing each row as it comes)."""
    browser = launch_chromium(p)
    for page in open_pages(browser, server["url"], max(1, args.num_procs)):  # warm-up: imports, MNMEF weights
        page.evaluate("() => window.__daviz_button('Play').click()")
        wait_until(lambda: cycles(page) >= 3, 180, "the warm-up page to play")
        page.context.close()
    pin(tree(server["proc"].pid), server_cpus)  # after the warm-up: --num-procs has forked by now
    for count in counts:
        row = measure(browser, server, count, args.speed, args.seconds)
        rows.append(row)
        cps, cpu = row["cps"], row["cpu"]
        print(f"{count:2} sessions: cycles/s {min(cps):5.1f} / {statistics.median(cps):5.1f} / {max(cps):5.1f}  "
              f"stall {row['stall']:4.1f} s  Pause {worst(row['pause_enabled']):6.0f} / "
              f"{worst(row['pause_shown']):6.0f} ms  cores: server {cpu['server']:.2f} browsers "
              f"{cpu['browsers']:.2f} other {cpu['other']:.2f}", flush=True)
    browser.close()


def report(rows: list, counts: list[int], args, server_cpus: set[int], browser_cpus: set[int]) -> None:
    print()
    print(f"L96 N=20, default filters, {args.speed} cycles/s asked, panel serve --num-procs {args.num_procs} on "
          f"CPU {sorted(server_cpus)}, the browsers on CPU {sorted(browser_cpus)} (other jobs anywhere); "
          f"{args.seconds:.0f} s per count.")
    print("cycles/s per session min / median / max; Pause: worst ms to Play enabled / to 'paused' shown; "
          "cores busy over the window.")
    head = (f"{'sessions':>8} {'cycles/s min/med/max':>21} {'stall s':>7} {'Pause ms':>15} {'server':>6} "
            f"{'browsers':>8} {'other':>5} {'ok':>3}")
    print(head)
    print("-" * len(head))
    for row in rows:
        cps, cpu = row["cps"], row["cpu"]
        pause = f"{worst(row['pause_enabled']):>6.0f} / {worst(row['pause_shown']):>6.0f}"
        print(f"{row['count']:>8} {min(cps):>6.1f} / {statistics.median(cps):>5.1f} / {max(cps):>5.1f} "
              f"{row['stall']:>7.1f} {pause:>15} {cpu['server']:>6.2f} {cpu['browsers']:>8.2f} {cpu['other']:>5.2f} "
              f"{'yes' if passes(row) else 'no':>3}")
    good = [row for row in rows if passes(row)]
    print()
    if not good:
        print(f"no count met >= {TARGET_CPS:.0f} cycles/s with Pause <= {TARGET_PAUSE_MS:.0f} ms")
        return
    best = max(good, key=lambda r: r["count"])
    n, server_cores = best["count"], best["cpu"]["server"]
    print(f"most sessions at >= {TARGET_CPS:.0f} cycles/s with Pause <= {TARGET_PAUSE_MS:.0f} ms: {n} "
          f"(largest count tried: {max(counts)})")
    print(f"  = {n / len(server_cpus):.1f} sessions per core given to the server ({len(server_cpus)}; "
          f"it used {server_cores:.2f} cores busy)")


if __name__ == "__main__":
    main()
