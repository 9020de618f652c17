"""benchmarks/viewer.py's five parts in order (`measure`), and what they return (`ViewerRun`).
The browser's side is in _viewer_browser.py, the HTTP side in _viewer_api.py, part 5 (ingest
with a live page) in _viewer_ingest.py.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

import _common as C
from _viewer_api import Api, Timed, caught_up, timed_requests
from _viewer_browser import (
    CLIENT,
    Live,
    PageLoad,
    console,
    first_chart,
    live_latency,
    make_browser,
    runs_page,
)
from _viewer_ingest import MODES, IngestRound, ingest_round
from harness import bulk_runs_spool

API_TARGET_MS = 300.0
FIRST_CHART_TARGET_MS = 1000.0
LIVE_P99_TARGET_MS = 1000.0
INGEST_TARGET = 0.95  # with a live page / without
class ViewerRun(msgspec.Struct, kw_only=True):
    """Everything viewer.py measured (`measure` fills a dict; `msgspec.convert` checks it)."""

    spool_ingest_s: float
    runs: Timed
    big_client: dict[str, Any]
    big_wait_s: float
    series: Timed
    run: Timed
    runs_page: dict[str, float]
    loads: list[PageLoad]
    live: Live
    ingest: list[IngestRound]
    status_ui: dict[str, Any] | None = None
    daemon_exit: int
    log_problems: list[str]
    log_exceptions: dict[str, tuple[int, str]]


def measure(args: Any, d: C.Daemon, root: Path, R: dict[str, Any],
            rss: list[tuple[str, int, int]], warnings: list[str]) -> None:
    """Steps 1-5 of viewer.py, results into R, memory readings into rss."""
    driver = None
    big = None
    try:
        # 1. ten thousand runs, from a spool file ingested at start
        spool = d.data / "spool"
        spool.mkdir(parents=True)
        (spool / "bulk.spool").write_bytes(bulk_runs_spool(args.runs))
        t0 = time.monotonic()
        d.start()
        C.wait_for(lambda: not list(spool.glob("*.spool")) and caught_up(d, 3 * args.runs),
                   300, 0.05, "the spooled runs in the run log")
        R["spool_ingest_s"] = time.monotonic() - t0
        url = subprocess.run([C.MAGNUSD, "ui", "--print-url"], env=d.env, capture_output=True,
                             text=True, check=True, timeout=30).stdout.strip()
        base, token = url.split("?token=")
        port = int(base.rstrip("/").rsplit(":", 1)[1])
        api = Api(port, token)
        rss.append(("after the spooled runs were applied", *d.rss_kb()))
        print(f"{args.runs:,} runs applied in {R['spool_ingest_s']:.1f} s; /api/runs ...",
              file=sys.stderr)

        def runs_ok(body: Any) -> None:
            assert len(body) == args.runs, len(body)
            assert all(r["status"] == "SUCCESS" and r["last_step"] == 1 for r in body)

        R["runs"] = timed_requests(api, "/api/runs", args.requests, runs_ok)
        rss.append((f"after /api/runs ×{args.requests + 1}", *d.rss_kb()))

        # 2. a million-point series
        print(f"a {args.points:,}-point run ...", file=sys.stderr)
        big = subprocess.Popen([C.PY, CLIENT, "big", str(args.points)],
                               env=d.client_env(MAGNUS_RUN_ID="big"), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        R["big_client"] = C.read_ready([big])[0]
        t0 = time.monotonic()
        C.wait_for(lambda: any(s["points"] == args.points for s in
                               api.json("/api/runs/big")["series"]), 300, 0.2,
                   "the big series written")
        R["big_wait_s"] = time.monotonic() - t0
        spike_at = (7 * args.points) // 9

        def series_ok(body: Any) -> None:
            assert body["points"] == args.points and len(body["values"]) <= 2000
            assert body["downsampled"] and max(body["values"]) == 1000.0
            assert body["steps"][body["values"].index(1000.0)] == spike_at

        R["series"] = timed_requests(
            api, "/api/runs/big/series?key=loss&step_name=main&max_points=2000", args.requests,
            series_ok)

        def run_ok(body: Any) -> None:
            assert body["series"][0]["points"] == args.points

        R["run"] = timed_requests(api, "/api/runs/big", args.requests, run_ok)
        rss.append(("after the series and run requests", *d.rss_kb()))

        # 3. the browser: first chart, and the runs page
        print("browser: first chart ...", file=sys.stderr)
        driver = make_browser()
        driver.get(url)  # sets the cookie
        R["runs_page"] = runs_page(driver, base, args.runs + 1)
        console(driver, warnings, "runs page")
        R["loads"] = first_chart(driver, base + "runs/big", args.loads)
        console(driver, warnings, "run page big")
        rss.append(("after the page loads", *d.rss_kb()))

        # 4. live latency
        print(f"live latency, {args.rate:,.0f} events/s for {args.seconds:.0f} s ...",
              file=sys.stderr)
        R["live"] = live_latency(d, driver, base, root, args.rate, args.seconds)
        console(driver, warnings, "live page lat")
        rss.append(("after the live-latency run", *d.rss_kb()))

        # 5. ingest with and without a live page, alternating
        R["ingest"] = []
        for r in range(args.rounds):
            for mode in MODES:
                rid = f"ing{r}-{mode}"
                print(f"ingest round {r + 1}, {MODES[mode]} ...", file=sys.stderr)
                R["ingest"].append(ingest_round(d, driver, base, api, args.events, rid, mode,
                                                warnings))
        driver.get("about:blank")
        rss.append(("after the ingest rounds (end)", *d.rss_kb()))
        R["status_ui"] = d.status()["ui"]
    finally:
        C.kill_all([big])
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()

