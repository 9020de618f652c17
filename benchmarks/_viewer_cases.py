"""benchmarks/viewer.py's five parts in order (`measure`) and what they return; ingest with a
live page (or its bare event stream) open. The browser's side is in _viewer_browser.py, the
HTTP side in _viewer_api.py.
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
from _viewer_api import Api, StreamSink, Timed, bulk_runs_spool, caught_up, timed_requests
from _viewer_browser import (
    CLIENT,
    Live,
    PageLoad,
    console,
    first_chart,
    live_latency,
    make_browser,
    poll,
    runs_page,
    snap,
)

API_TARGET_MS = 300.0
FIRST_CHART_TARGET_MS = 1000.0
LIVE_P99_TARGET_MS = 1000.0
INGEST_TARGET = 0.95  # with a live page / without
MODES = {"none": "about:blank",
         "stream": "about:blank; the run's event stream read by a socket",
         "page": "the run's page open, live"}
PAGE_STALL_S = 8.0  # after an ingest round: give up on the page once its count stood this long

# -- helpers -----------------------------------------------------------------------------------


class IngestRound(msgspec.Struct, kw_only=True):
    """Ingest from 2 clients with the browser on about:blank, the event stream, or the page."""

    mode: str
    page: bool
    run_id: str
    journal_eps: float
    runlog_eps: float
    client_loop_s: float
    daemon_cpu_s: float
    browser_cpu_s: float
    flush_ok: bool
    events_delta: int
    rss_kb: tuple[int, int]
    lost: int
    stream_mib: float = float("nan")
    stream_done_after_flush_s: float = float("nan")
    page_all_after_flush_s: float = float("nan")
    page_points: int = 0
    page_max_msg_kb: float = 0.0
    page_errors: int = 0
    page_bcpu_s: float = float("nan")


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


def ingest_round(d: C.Daemon, driver: Any, base: str, api: Api, total: int, run_id: str,
                 mode: str, warnings: list[str]) -> dict[str, Any]:
    """mode: "none" (browser on about:blank), "stream" (a StreamSink on the run's events, the
    browser on about:blank), "page" (the browser on the run's page)."""
    per = total // 2
    names = ["c0", "c1"]
    page = mode == "page"
    sink = None
    driver.get("about:blank")
    if mode == "stream":
        sink = StreamSink(api.port, api.token, run_id)
        poll(lambda: d.status()["ui"]["live_streams"] >= 1, 30, 0.02, what="live stream")
    if page:
        driver.get(base + "runs/" + run_id)
        poll(lambda: driver.execute_script(
            "return window.__mb.es.some((e) => e.readyState === 1)"), 30, what="stream open")
        poll(lambda: d.status()["ui"]["live_streams"] >= 1, 30, 0.02, what="live stream")
    procs = [d.start_client(CLIENT, ["burst", str(per), nm], run_id) for nm in names]
    try:
        base_st = d.status()
        assert d.proc is not None
        bpid = driver.service.process.pid
        cpu0, bcpu0 = C.cpu_seconds(d.proc.pid), C.tree_cpu(bpid)
        C.send(procs, "go\n")
        outs = C.read_ready(procs)
    except BaseException:
        C.kill_all(procs)
        if sink is not None:
            sink.close()
        raise
    t_first = min(o["t_first"] for o in outs)
    t_flushed = max(o["t_flushed"] for o in outs)
    t_applied, st = d.wait_applied(base_st["events_total"] + per * 2, timeout=300, every=0.01)
    cpu1, bcpu1 = C.cpu_seconds(d.proc.pid), C.tree_cpu(bpid)
    res: dict[str, Any] = {
        "mode": mode, "page": page, "run_id": run_id,
        "journal_eps": per * 2 / (t_flushed - t_first),
        "runlog_eps": per * 2 / (t_applied - t_first),
        "client_loop_s": max(o["t_loop"] - o["t_first"] for o in outs),
        "daemon_cpu_s": cpu1 - cpu0, "browser_cpu_s": bcpu1 - bcpu0,
        "flush_ok": all(o["flush_ok"] for o in outs),
        "events_delta": st["events_total"] - base_st["events_total"]}
    res["rss_kb"] = d.rss_kb()
    if sink is not None:
        while time.monotonic() - sink.last < 2.0:  # the stream idle for 2 s: it is all sent
            time.sleep(0.05)
        res["stream_mib"] = sink.bytes / 2**20
        res["stream_done_after_flush_s"] = sink.last - t_flushed
        sink.close()
    if page:
        # until the page has every point, or its count has not moved for PAGE_STALL_S
        want = {f"{run_id}|{nm}/loss": per for nm in names}
        count, moved = -1, time.monotonic()
        res["page_all_after_flush_s"] = float("nan")
        while time.monotonic() - moved < PAGE_STALL_S:
            got = snap(driver)
            now = sum(got.get(k, [0])[0] for k in want)
            if all(got.get(k, [0])[0] >= v for k, v in want.items()):
                res["page_all_after_flush_s"] = time.monotonic() - t_flushed
                break
            if now != count:
                count, moved = now, time.monotonic()
            time.sleep(0.05)
        got = snap(driver)
        res["page_points"] = sum(got.get(k, [0])[0] for k in want)
        res["page_max_msg_kb"] = driver.execute_script(
            "return Math.max(0, ...window.__mb.msgs.map((m) => m[2])) / 1024")
        res["page_errors"] = driver.execute_script("return window.__mb.errors.length")
        res["page_bcpu_s"] = C.tree_cpu(bpid) - bcpu0
        console(driver, warnings, f"ingest page {run_id}")
    series = {(s["step_name"], s["key"]): s["points"] for s in api.json(f"/api/runs/{run_id}")
              ["series"]}
    res["lost"] = sum(per - series.get((nm, "loss"), 0) for nm in names)
    return res


# -- main --------------------------------------------------------------------------------------


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

