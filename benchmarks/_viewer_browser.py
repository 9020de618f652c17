"""The browser side of benchmarks/viewer.py (see there): Debian's headless Chromium under
selenium with _viewer_inject.js in every page, the first chart of a run page, the runs page,
and live latency (tracked → in an open run page).
"""

from __future__ import annotations

import statistics
import time
from array import array
from bisect import bisect_left
from pathlib import Path
from typing import Any

import msgspec

import _common as C
from harness import chromium

CLIENT = str(C.HERE / "_viewer_client.py")

INJECT = (C.HERE / "_viewer_inject.js").read_text()


class Spread(msgspec.Struct):
    min: float
    p50: float
    p90: float
    p99: float
    max: float


class PageLoad(msgspec.Struct, kw_only=True):
    """One load of a run page, ms after `driver.get` was called."""

    first_draw_ms: float
    polled_ms: float
    get_returned_ms: float
    nav_start_ms: float
    html_ms: float
    dcl_ms: float
    run_api_ms: float
    series_api_ms: float


class Live(msgspec.Struct, kw_only=True):
    """Tracked -> in an open run page: latency from the client's clock to the page's."""

    n: int
    client: dict[str, Any]
    rate: float
    data: Spread
    arrive: Spread
    draw: Spread
    missing_data: int
    missing_draw: int
    complete: bool
    steps_ok: str
    messages: int
    draws: int
    handler_ms: Spread
    msg_kb_median: float
    clock_offset_ms: float
    clock_rtt_ms: float
    daemon_cpu_s: float
    waited_after_flush_s: float



def make_browser() -> Any:
    driver = chromium(**{"goog:loggingPrefs": {"browser": "ALL"}})
    driver.set_script_timeout(60)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": INJECT})
    return driver


def console(driver: Any, sink: list[str], where: str) -> None:
    """Browser console entries at WARNING or above (uncaught errors included)."""
    try:
        for e in driver.get_log("browser"):
            if e.get("level") in ("SEVERE", "WARNING"):
                sink.append(f"{where}: {e['level']} {e['message'][:300]}")
    except Exception as e:  # the log is a nicety
        sink.append(f"{where}: (console log unavailable: {e})")


def poll(pred: Any, timeout: float, every: float = 0.005, what: str = "condition") -> Any:
    return C.wait_for(pred, timeout, every, what)  # polled more often by default


def snap(driver: Any) -> dict[str, list[Any]]:
    return driver.execute_script("return window.__mb ? window.__mb.snap() : {}") or {}


def first_chart(driver: Any, url: str, loads: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(loads):
        driver.get("about:blank")
        t_get = time.time()
        driver.get(url)
        t_ret = time.time()
        seen = poll(lambda: driver.execute_script(
            "const c = window.magnusCharts && Object.values(window.magnusCharts)"
            ".find((c) => c.plot); return c && window.__mb.firstDraw"),
            timeout=60, what="the first chart drawn")
        t_seen = time.time()
        perf = driver.execute_script("""
            const nav = performance.getEntriesByType('navigation')[0] || {};
            const res = performance.getEntriesByType('resource').map(
                (r) => [r.name.replace(location.origin, ''), r.startTime, r.responseEnd]);
            return {origin: performance.timeOrigin, dcl: nav.domContentLoadedEventEnd,
                    load: nav.loadEventEnd, html: nav.responseEnd, res: res,
                    charts: Object.keys(window.magnusCharts || {}).length};""")
        origin = perf["origin"]
        ends = [e for name, _, e in perf["res"] if "/series" in name]

        out.append({"first_draw_ms": seen - t_get * 1000,
                    "polled_ms": (t_seen - t_get) * 1000,
                    "get_returned_ms": (t_ret - t_get) * 1000,
                    "nav_start_ms": origin - t_get * 1000,
                    "html_ms": origin + perf["html"] - t_get * 1000,
                    "dcl_ms": origin + perf["dcl"] - t_get * 1000,
                    "run_api_ms": min((origin + e - t_get * 1000 for n, _, e in perf["res"]
                                       if n.startswith("/api/runs/big") and "/series" not in n),
                                      default=float("nan")),
                    "series_api_ms": origin + max(ends) - t_get * 1000 if ends
                    else float("nan"),
                    "charts": perf["charts"]})
    return out


def runs_page(driver: Any, base: str, n_runs: int) -> dict[str, float]:
    driver.get("about:blank")
    t_get = time.time()
    driver.get(base)
    want = f"{n_runs} of {n_runs} runs"
    poll(lambda: driver.execute_script(
        "const e = document.getElementById('count'); return e && e.textContent") == want,
        timeout=120, every=0.01, what=want)
    shown = (time.time() - t_get) * 1000
    api_end = driver.execute_script(
        "const e = performance.getEntriesByType('resource').filter("
        "(r) => r.name.endsWith('/api/runs'))[0];"
        "return e ? performance.timeOrigin + e.responseEnd : null;")
    return {"shown_ms": shown,
            "api_ms": api_end - t_get * 1000 if api_end else float("nan")}


def live_latency(d: C.Daemon, driver: Any, base: str, root: Path, rate: float,
                 seconds: float) -> dict[str, Any]:
    times_path = str(root / "lat-times.f64")
    p = d.start_client(CLIENT, ["steady", str(rate), str(seconds), times_path], "lat")
    try:
        driver.get("about:blank")
        driver.get(base + "runs/lat")
        poll(lambda: (s := snap(driver).get("lat|main/loss")) and s[1] == 0, 30,
             what="step 0 in the page")
        poll(lambda: driver.execute_script("return window.__mb.draws.length"), 30,
             what="step 0 drawn")
        poll(lambda: driver.execute_script(
            "return window.__mb.es.some((e) => e.readyState === 1)"), 30, what="stream open")
        driver.execute_script("window.__mb.msgs = []; window.__mb.draws = [];")
        clock = []  # Python time.time() vs the page's Date.now(), bracketed by the round trip
        for _ in range(5):
            a = time.time()
            b = driver.execute_script("return Date.now()") / 1000
            c = time.time()
            clock.append((b - (a + c) / 2, c - a))
        assert d.proc is not None
        cpu0 = C.cpu_seconds(d.proc.pid)
        C.send([p], "go\n")
        res = C.read_ready([p], timeout=seconds + 120)[0]
    finally:
        C.kill_all([p])
    res["stderr"] = res["stderr"][-300:]
    n = res["n"]
    t_flushed_wall = time.time()
    try:
        poll(lambda: (s := snap(driver).get("lat|main/loss")) and s[1] >= n, 60, 0.05,
             what=f"step {n} in the page")
        complete = True
    except TimeoutError:
        complete = False
    cpu1 = C.cpu_seconds(d.proc.pid)
    msgs = driver.execute_script("return window.__mb.msgs")
    draws = driver.execute_script("return window.__mb.draws")
    steps_ok = driver.execute_script(
        "const d = window.magnusCharts['main/loss'].runs['lat'];"
        "if (d.steps.length !== arguments[0] + 1) return 'points ' + d.steps.length;"
        "for (let i = 0; i < d.steps.length; i++) if (d.steps[i] !== i) return 'step ' + i;"
        "return 'ok';", n)
    times = array("d")
    with open(times_path, "rb") as f:
        times.frombytes(f.read())
    assert len(times) == n, (len(times), n)
    # page records: (time ms, last step present)
    data_rec = [(m[1], m[3]["lat|main/loss"][1]) for m in msgs if "lat|main/loss" in m[3]]
    arrive_rec = [(m[0], m[3]["lat|main/loss"][1]) for m in msgs if "lat|main/loss" in m[3]]
    draw_rec = [(t, last) for t, _, last in draws if last is not None]

    def latencies(rec: list[tuple[float, int]]) -> tuple[list[float], int]:
        rec = sorted(rec)
        best, lasts, ts = -1, [], []
        for t, last in rec:  # running max of the step present, with its first time
            if last > best:
                best = last
                lasts.append(last)
                ts.append(t)
        out, missing = [], 0
        for i in range(1, n + 1):
            k = bisect_left(lasts, i)
            if k == len(lasts):
                missing += 1
                continue
            out.append(ts[k] - times[i - 1] * 1000)
        return sorted(out), missing

    lat_data, miss_data = latencies(data_rec)
    lat_arrive, _ = latencies(arrive_rec)
    lat_draw, miss_draw = latencies(draw_rec)
    handler_ms = sorted(m[1] - m[0] for m in msgs)
    sizes = [m[2] for m in msgs]
    offs = sorted(clock, key=lambda x: x[1])[0]

    return {"n": n, "client": res, "rate": n / (res["t_last"] - res["t_first"]),
            "data": C.spread(lat_data), "arrive": C.spread(lat_arrive), "draw": C.spread(lat_draw),
            "missing_data": miss_data, "missing_draw": miss_draw, "complete": complete,
            "steps_ok": steps_ok, "messages": len(msgs), "draws": len(draws),
            "handler_ms": C.spread(handler_ms),
            "msg_kb_median": statistics.median(sizes) / 1024 if sizes else float("nan"),
            "clock_offset_ms": offs[0] * 1000, "clock_rtt_ms": offs[1] * 1000,
            "daemon_cpu_s": cpu1 - cpu0, "waited_after_flush_s": time.time() - t_flushed_wall}


