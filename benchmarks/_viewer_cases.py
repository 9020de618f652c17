"""The measurements of benchmarks/viewer.py (see there): the viewer's API, a real browser
(Debian's Chromium under selenium) on the run and runs pages, live latency, and ingest with a
live page open.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from array import array
from bisect import bisect_left
from pathlib import Path
from typing import Any

import msgspec

import _common as C

CLIENT = str(C.HERE / "_viewer_client.py")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
API_TARGET_MS = 300.0
FIRST_CHART_TARGET_MS = 1000.0
LIVE_P99_TARGET_MS = 1000.0
INGEST_TARGET = 0.95  # with a live page / without
MODES = {"none": "about:blank",
         "stream": "about:blank; the run's event stream read by a socket",
         "page": "the run's page open, live"}
PAGE_STALL_S = 8.0  # after an ingest round: give up on the page once its count stood this long

# Injected before the page's scripts: wraps EventSource (record after the page's own onmessage
# handler) and uPlot (record in each chart's draw hook). Everything in window.__mb.
INJECT = r"""
(() => {
  if (window.__mb) return;
  const M = (window.__mb = {msgs: [], draws: [], firstDraw: null, errors: [], es: [],
                            record: true});
  addEventListener("error", (e) => M.errors.push("error: " + e.message));
  addEventListener("unhandledrejection",
                   (e) => M.errors.push("unhandled rejection: " + String(e.reason)));
  M.snap = () => {  // "run|step/key" -> [points, last step] of the page's chart data
    const out = {}, cs = window.magnusCharts;
    if (cs) for (const name in cs) {
      const runs = cs[name].runs;
      for (const id in runs) {
        const s = runs[id].steps;
        out[id + "|" + name] = [s.length, s.length ? s[s.length - 1] : null];
      }
    }
    return out;
  };
  const RealES = window.EventSource;
  function ES(url, cfg) {
    const es = new RealES(url, cfg);
    let handler = null;
    Object.defineProperty(es, "onmessage", {configurable: true, get: () => handler,
                                            set: (f) => { handler = f; }});
    es.addEventListener("message", (e) => {
      const t1 = Date.now();
      try { if (handler) handler.call(es, e); }
      finally { if (M.record) M.msgs.push([t1, Date.now(), e.data.length, M.snap()]); }
    });
    M.es.push(es);
    return es;
  }
  ES.prototype = RealES.prototype;
  ES.CONNECTING = 0; ES.OPEN = 1; ES.CLOSED = 2;
  window.EventSource = ES;
  let wrapped = null;
  Object.defineProperty(window, "uPlot", {configurable: true, enumerable: true,
    get: () => wrapped,
    set: (real) => { wrapped = new Proxy(real, {construct(target, args) {
      const [opts, data] = args;
      const x = data && data[0], n = x ? x.length : 0, last = n ? x[n - 1] : null;
      const hooks = Object.assign({}, opts.hooks);
      hooks.draw = [...(hooks.draw || []), () => {
        const now = Date.now();
        if (M.firstDraw === null) M.firstDraw = now;
        if (M.record) M.draws.push([now, n, last]);
      }];
      return Reflect.construct(target, [Object.assign({}, opts, {hooks}), ...args.slice(1)]);
    }}); }});
})();
"""


# -- helpers -----------------------------------------------------------------------------------


class Timed(msgspec.Struct):
    """Requests of one API path, ms: the first (cold) alone, then n more."""

    first: float
    median: float
    p99: float
    max: float
    bytes: int
    n: int


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


class IngestRound(msgspec.Struct, kw_only=True):
    """Ingest from 2 clients with the browser on about:blank, the event stream, or the page."""

    mode: str
    page: bool
    run_id: str
    journal_eps: float
    runlog_eps: float
    client_loop_s: float
    release_to_first_ms: float
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


class Api:
    """GETs over one keep-alive connection, timed from the request sent to the last byte."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path: str) -> tuple[float, int, Any, int]:
        """(ms, status, decoded JSON, body bytes)."""
        sep = "&" if "?" in path else "?"
        for attempt in (1, 2):  # uvicorn closes a connection idle for 5 s: then a new one
            t0 = time.perf_counter()
            try:
                self.conn.request("GET", f"{path}{sep}token={self.token}")
                r = self.conn.getresponse()
                body = r.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                if attempt == 2:
                    raise
        ms = (time.perf_counter() - t0) * 1000
        return ms, r.status, json.loads(body), len(body)

    def json(self, path: str) -> Any:
        _, status, body, _ = self.get(path)
        if status != 200:
            raise RuntimeError(f"{path}: {status} {body}")
        return body


def timed_requests(api: Api, path: str, n: int, check: Any) -> dict[str, Any]:
    ms0, st, body, size = api.get(path)
    if st != 200:
        raise RuntimeError(f"{path}: {st} {str(body)[:200]}")
    check(body)
    times = []
    for _ in range(n):
        ms, st, body, size = api.get(path)
        if st != 200:
            raise RuntimeError(f"{path}: {st}")
        times.append(ms)
    check(body)
    s = sorted(times)
    return {"first": ms0, "median": statistics.median(s), "p99": C.percentile(s, 99),
            "max": s[-1], "bytes": size, "n": n}


def bulk_runs_spool(n: int) -> bytes:
    """n runs of one step each (start, one point, end), as a client's spool file holds them."""
    from magnus import _protocol as proto

    frames = []
    for i in range(n):
        run, tag = f"bulk{i:05d}", "even" if i % 2 == 0 else "odd"
        frames.append(proto.frame(proto.StepMark(f"c{i}", 1, run, tag, "main", "start",
                                                 1.7e9 + i, "", f"a{i}", "h", 1, 0, None)))
        frames.append(proto.frame(proto.Batch(f"c{i}", 2, run, tag, "main",
                                              [(1, 1.7e9 + i, {"x": i})])))
        frames.append(proto.frame(proto.StepMark(f"c{i}", 3, run, tag, "main", "end",
                                                 1.7e9 + i + 1, "SUCCESS", f"a{i}", "h", 1)))
    return b"".join(frames)


def caught_up(d: C.Daemon, min_seq: int) -> bool:
    st = d.status()
    return bool(st["journal"]["last_seq"] >= min_seq
                and st["runlog"]["applied_seq"] == st["journal"]["last_seq"])


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of pid's descendants alive now (the browser under chromedriver)."""
    return sum(x for p in descendants(pid) if (x := C.cpu_seconds(p)) == x)


def client_env(d: C.Daemon, run_id: str) -> dict[str, str]:
    e = d.env
    e["MAGNUS_RUN_ID"] = run_id
    return e


def start_client(d: C.Daemon, run_id: str, *args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([C.PY, CLIENT, *args], env=client_env(d, run_id), text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()  # our own child, by pid
        raise RuntimeError(f"client not ready: {line!r} {p.communicate()[1][-2000:]}")
    return p


def finish_client(p: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"client exited {p.returncode}: {err[-2000:]}")
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if err.strip():
        res["stderr"] = err.strip()[-300:]
    return res


def make_browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM or ""
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
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


def ms(x: float) -> str:
    return "–" if x != x else f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f}"


# -- the parts ---------------------------------------------------------------------------------


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
    p = start_client(d, "lat", "steady", str(rate), str(seconds), times_path)
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
        cpu0 = C.cpu_seconds(d.proc.pid) if d.proc else float("nan")
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
        res = finish_client(p, timeout=seconds + 120)
    except BaseException:
        if p.poll() is None:
            p.kill()  # our own child, by pid
        raise
    n = res["n"]
    t_flushed_wall = time.time()
    try:
        poll(lambda: (s := snap(driver).get("lat|main/loss")) and s[1] >= n, 60, 0.05,
             what=f"step {n} in the page")
        complete = True
    except TimeoutError:
        complete = False
    cpu1 = C.cpu_seconds(d.proc.pid) if d.proc else float("nan")
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

    def stats(v: list[float]) -> dict[str, float]:
        return {"p50": C.percentile(v, 50), "p90": C.percentile(v, 90),
                "p99": C.percentile(v, 99), "max": v[-1] if v else float("nan"),
                "min": v[0] if v else float("nan")}

    return {"n": n, "client": res, "rate": n / (res["t_last"] - res["t_first"]),
            "data": stats(lat_data), "arrive": stats(lat_arrive), "draw": stats(lat_draw),
            "missing_data": miss_data, "missing_draw": miss_draw, "complete": complete,
            "steps_ok": steps_ok, "messages": len(msgs), "draws": len(draws),
            "handler_ms": stats(handler_ms),
            "msg_kb_median": statistics.median(sizes) / 1024 if sizes else float("nan"),
            "clock_offset_ms": offs[0] * 1000, "clock_rtt_ms": offs[1] * 1000,
            "daemon_cpu_s": cpu1 - cpu0, "waited_after_flush_s": time.time() - t_flushed_wall}


class StreamSink(threading.Thread):
    """Reads `/api/events?run_id=RUN` on a bare socket and throws it away (counting bytes and
    the time of the last one): the daemon's side of a live page, without a browser."""

    def __init__(self, port: int, token: str, run_id: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(f"GET /api/events?run_id={run_id}&token={token} HTTP/1.1\r\n"
                          f"Host: 127.0.0.1:{port}\r\n\r\n".encode())
        self.bytes = 0
        self.last = time.monotonic()
        self.start()

    def run(self) -> None:
        buf = bytearray(1 << 20)
        try:
            while n := self.sock.recv_into(buf):
                self.bytes += n
                self.last = time.monotonic()
        except OSError:
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.join(10)


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
    procs = [start_client(d, run_id, "burst", str(per), nm) for nm in names]
    try:
        base_st = d.status()
        assert d.proc is not None
        bpid = driver.service.process.pid
        cpu0, bcpu0 = C.cpu_seconds(d.proc.pid), tree_cpu(bpid)
        t_release = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [finish_client(p) for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.kill()  # our own child, by pid
        if sink is not None:
            sink.close()
        raise
    t_first = min(o["t_first"] for o in outs)
    t_flushed = max(o["t_flushed"] for o in outs)
    t_applied, st = d.wait_applied(base_st["events_total"] + per * 2, timeout=300, every=0.01)
    cpu1, bcpu1 = C.cpu_seconds(d.proc.pid), tree_cpu(bpid)
    res: dict[str, Any] = {
        "mode": mode, "page": page, "run_id": run_id,
        "journal_eps": per * 2 / (t_flushed - t_first),
        "runlog_eps": per * 2 / (t_applied - t_first),
        "client_loop_s": max(o["t_loop"] - o["t_first"] for o in outs),
        "release_to_first_ms": (t_first - t_release) * 1000,
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
        res["page_bcpu_s"] = tree_cpu(bpid) - bcpu0
        console(driver, warnings, f"ingest page {run_id}")
    series = {(s["step_name"], s["key"]): s["points"] for s in api.json(f"/api/runs/{run_id}")
              ["series"]}
    res["lost"] = sum(per - series.get((nm, "loss"), 0) for nm in names)
    return res


# -- main --------------------------------------------------------------------------------------


def revision() -> str:
    """The commit, and which of sdk/ daemon/ have uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=C.HERE,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sdk", "daemon"],
                               cwd=C.HERE.parent, capture_output=True, text=True,
                               timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "revision unknown"
    n = len([x for x in dirty if x.strip()])
    return f"working tree at {head}" + (f" with {n} uncommitted file(s) in sdk/ and daemon/"
                                        if n else "")


def log_exceptions(text: str) -> dict[str, tuple[int, str]]:
    """Each distinct exception line ending a traceback in the log: (how many, last frame)."""
    out: dict[str, tuple[int, str]] = {}
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if not ln.startswith("Traceback"):
            continue
        where = ""
        for j in range(i + 1, len(lines)):
            if lines[j].startswith("  File "):
                where = lines[j].strip()
            elif lines[j] and not lines[j].startswith(" "):
                n, _ = out.get(lines[j], (0, ""))
                out[lines[j]] = (n + 1, where)
                break
    return out


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
                               env=client_env(d, "big"), text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        R["big_client"] = finish_client(big)
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
        if big is not None and big.poll() is None:
            big.kill()  # our own child, by pid
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()


def page_cell(x: IngestRound) -> str:
    done = x.page_all_after_flush_s
    when = f"all {x.page_points:,} points +{done:.1f} s" if done == done else \
        f"**stuck at {x.page_points:,} points**"
    return (f"{when}; {x.page_errors} page errors; largest message "
            f"{x.page_max_msg_kb / 1024:.1f} MiB; browser CPU {x.page_bcpu_s:.1f} s")


def met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"
