"""Part 5 of benchmarks/viewer.py (see there): ingest from 2 clients with the browser on
about:blank, on about:blank with the run's event stream read by a bare socket, or on the run's
page following it live.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

import _common as C
from _viewer_api import Api, StreamSink
from _viewer_browser import console, poll, snap

INGEST = str(C.HERE / "_ingest_client.py")

MODES = {"none": "about:blank",
         "stream": "about:blank; the run's event stream read by a socket",
         "page": "the run's page open, live"}
PAGE_STALL_S = 8.0  # after an ingest round: give up on the page once its count stood this long


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
    procs = [d.start_client(INGEST, [str(per), nm], run_id) for nm in names]
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
