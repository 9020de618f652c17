"""The web viewer (design §12): API latency, time to the first chart, live latency in a real
browser, and what an open live page costs ingestion.

    .venv/bin/python benchmarks/viewer.py     # ~5-10 min on 2 cores
        [--runs 10000] [--points 1000000] [--requests 20] [--loads 5]
        [--rate 10000] [--seconds 20] [--events 1000000] [--rounds 3] [--keep]

One private `magnusd serve` (socket and data directory under /tmp, the viewer on 127.0.0.1 on a
port the daemon picks, `MAGNUS_UI_LISTEN=127.0.0.1:0`), the link and its token from
`magnusd ui --print-url`; Debian's headless Chromium driven by selenium (the flags of
tests/test_viewer_browser.py). In order:

1. **`GET /api/runs` with --runs runs.** The runs are made before the daemon starts by writing
   one spool file of protocol frames (a start mark, one point, an end mark a run; as
   tests/test_viewer.py does), which the daemon ingests at start; once `status` shows the run
   log caught up, the first request (cold: every run summarised) is timed alone, then
   --requests more (the daemon's summary cache), over one keep-alive HTTP connection, from the
   request sent to the last byte read.
2. **A --points-point series.** One client tracks `track_this(step=i, loss=...)` i = 1..N (one
   spike) and flushes; once the run's series holds N points, `GET /api/runs/big/series?key=loss&
   step_name=main&max_points=2000` and `GET /api/runs/big`, first + --requests each; the answer is
   checked (N points, ≤ 2000 returned, the spike kept).
3. **First chart of a run.** `driver.get(<viewer>/runs/big)` (after about:blank), --loads times:
   from just before `driver.get` (time.time()) to the first chart drawn, the wall-clock
   Date.now() taken in uPlot's `draw` hook of the first chart the page creates (a script
   injected before the page's own, `Page.addScriptToEvaluateOnNewDocument`, wraps the page's
   `uPlot` constructor; the brief's "window.magnusCharts[...] has a plot" is the same moment,
   and is checked by polling from Python too). The page's Resource Timing entries give where
   the time goes. The runs page with all runs listed is loaded once as well.
4. **Tracked → in the page, at --rate events/s.** A run page is open on run `lat` (its step 0
   already drawn); a client tracks `track_this(step=i, loss=...)` at a steady --rate for
   --seconds, stamping time.time() just before each call. The injected script wraps the page's
   EventSource so that right after the page's own `onmessage` handler has appended a message's
   points to `window.magnusCharts[...]`, it records Date.now() and each series' last step (and
   in the draw hook the last step drawn). Step i's latency = the first such record whose last
   step ≥ i, minus its client stamp (same machine, both wall clock: time.time() and
   Date.now()). The page must end with every step 0..N exactly.
5. **Ingest with a live page vs without.** Two client processes on one run, each in its own
   step (`c0`, `c1`), each --events/2 `track_this(loss=..., step=i)` as fast as it can, then
   flush(): events/s from the first event to the last flush() returned (journal), and to
   `status` showing the run log caught up (run log). Rounds alternate: the browser on
   about:blank; the browser on about:blank and the run's event stream
   (`/api/events?run_id=RUN`, what the page opens) read and discarded by a bare socket in this
   process (the daemon's share of a live page, without a browser); the browser on that run's
   page following it live. Each stream is open before the clients start; --rounds rounds of
   each. After a page round: how long until the page had every point, or how many it had when
   its count stood still for 8 s. Each run's series (API) must hold every point.

The daemon's VmRSS / VmHWM (peak) is read after each part; CPU seconds of the daemon and of the
browser (chromedriver's descendants) per ingest round; the browser's console messages (SEVERE
and WARNING: uncaught errors, failed requests) are listed, each distinct one once with a count,
and the daemon log's tracebacks by their exception.

Results: markdown tables on stdout and in benchmarks/out/viewer.md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from typing import Any

import msgspec

import _baseline as B
import _common as C
import _viewer_cases as V
from _results import Cell, Report, Result, finish, new_report, tbl
from _viewer_ingest import MODES, IngestRound
from harness import CHROMEDRIVER, CHROMIUM


def page_cell(x: IngestRound) -> str:
    done = x.page_all_after_flush_s
    when = f"all {x.page_points:,} points +{done:.1f} s" if done == done else \
        f"STUCK at {x.page_points:,} points"
    return (f"{when}; {x.page_errors} page errors; largest message "
            f"{x.page_max_msg_kb / 1024:.1f} MiB; browser CPU {x.page_bcpu_s:.1f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--rate", type=float, default=10_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--events", type=int, default=1_000_000, help="per ingest round, 2 clients")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 round (a smoke run)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (daemon log)")
    args = ap.parse_args()
    C.check_python()
    if args.quick:
        args.runs, args.points, args.requests, args.loads = 200, 20_000, 3, 2
        args.rate, args.seconds, args.events, args.rounds = 2_000, 3, 20_000, 1
    if not (CHROMIUM and CHROMEDRIVER):
        sys.exit("needs Debian's chromium and chromium-driver (/usr/bin/chromium, chromedriver)")
    rev = B.tree_state("sdk", "daemon")
    root = C.short_tmpdir("mbv")
    d = C.Daemon(root)
    warnings: list[str] = []
    rss: list[tuple[str, int, int]] = []
    R: dict[str, Any] = {}
    try:
        V.measure(args, d, root, R, rss, warnings)
    finally:
        R["daemon_exit"] = d.stop(timeout=120, check=False)
        R["log_problems"] = d.log_problems()
        R["log_exceptions"] = C.log_exceptions(d.log_text(None))
        C.remove_tree(root, args.keep)
    rep = new_report("viewer", "the web viewer", f"The daemon and SDK: {rev}.")
    run = msgspec.convert(R, V.ViewerRun)
    report(rep, args, run, rss, warnings)
    lost = sum(x.lost for x in run.ingest)
    rep.ok = lost == 0 and run.live.steps_ok == "ok" and run.daemon_exit == 0
    rep.data = run
    return finish(rep)


def report(rep: Report, args: Any, R: V.ViewerRun, rss: list[tuple[str, int, int]],
           warnings: list[str]) -> None:
    target = V.API_TARGET_MS
    rows: list[list[Cell]] = []
    for key, what in (("runs", f"`GET /api/runs`, {args.runs:,} runs"),
                      ("series", f"`GET /api/runs/big/series?key=loss&step_name=main&"
                                 f"max_points=2000`, {args.points:,} points"),
                      ("run", f"`GET /api/runs/big` (the {args.points:,}-point run)")):
        x = getattr(R, key)
        rows.append([what, x.bytes / 1024, x.first, x.median, x.p99, x.max,
                     None if key == "run" else x.median <= target and x.p99 <= target])
    rep.add(tbl(["request", ("answer KiB", ",.0f"), ("first (cold)", "~"), ("median", "~"),
                 ("p99", "~"), ("max", "~"), f"median and p99 ≤ {target:.0f} ms"], rows, "API",
                f"ms from the request sent to the last byte read (one keep-alive connection; "
                f"first request alone, then {args.requests}). {args.runs:,} spooled runs were "
                f"in the run log {R.spool_ingest_s:.1f} s after the daemon was started; the "
                f"{args.points:,}-point client took {R.big_client['s']:.1f} s to track and "
                f"flush, its series was complete {R.big_wait_s:.1f} s later."))

    loads = R.loads
    fd = statistics.median(x.first_draw_ms for x in loads)
    rows = []
    for c, nm in (("first_draw_ms", "first chart drawn"), ("polled_ms", "seen by polling"),
                  ("get_returned_ms", "driver.get returned"), ("nav_start_ms", "navigation start"),
                  ("html_ms", "HTML received"), ("dcl_ms", "DOMContentLoaded"),
                  ("run_api_ms", "`/api/runs/big` done"), ("series_api_ms", "`/series` done")):
        v = [float(getattr(x, c)) for x in loads]
        rows.append([nm, *v, statistics.median(v)])
    rep.add(tbl(["moment", *[(f"load {i + 1}", "~") for i in range(len(loads))],
                 ("median", "*~")], rows, f"run page of the {args.points:,}-point run",
                f"`/runs/big`, ms after `driver.get` was called, each load after about:blank "
                f"(load 1 is the browser's first visit of this page). Target first chart ≤ "
                f"{V.FIRST_CHART_TARGET_MS:.0f} ms (median): {fd:.0f} ms. The runs page listing "
                f"{args.runs + 1:,} runs showed its count {R.runs_page['shown_ms']:,.0f} ms "
                f"after `driver.get` (its `/api/runs` answer was in at "
                f"{R.runs_page['api_ms']:,.0f} ms)."))

    L = R.live
    rows = [[nm, s.min, s.p50, s.p90, s.p99, s.max] for nm, s in (
        ("message in the page (before its handler)", L.arrive),
        ("in the chart's data (after the page's handler)", L.data),
        ("drawn (uPlot draw hook)", L.draw))]
    rep.add(tbl(["moment", ("min", "~"), ("p50", "~"), ("p90", "~"), ("p99", "*~"),
                 ("max", "~")], rows, "tracked → in an open run page",
                f"{L.n:,} events at {L.rate:,.0f} events/s (the client's own rate; largest "
                f"catch-up burst {L.client['max_burst']} events) for {args.seconds:.0f} s, ms "
                f"from the client's time.time() before `track_this` to the page's Date.now(). "
                f"Target p99 ≤ {V.LIVE_P99_TARGET_MS:.0f} ms (in the data)."))
    rep.add(f"The page received {L.messages} messages (median {L.msg_kb_median:.0f} KiB), its "
            f"handler took {L.handler_ms.p50:.1f} ms median / {L.handler_ms.max:.1f} ms max; "
            f"{L.draws} draws; final data {L.steps_ok} (steps 0..{L.n:,} exactly), steps never "
            f"in the data {L.missing_data}, never drawn {L.missing_draw}. Clocks: page "
            f"Date.now() − Python time.time() = {L.clock_offset_ms:+.1f} ms "
            f"(± {L.clock_rtt_ms / 2:.1f} ms round trip). Daemon CPU during it "
            f"{L.daemon_cpu_s:.2f} s.")

    ing = R.ingest
    rows = []
    for i, x in enumerate(ing):
        after = page_cell(x) if x.page else (
            f"{x.stream_mib:.1f} MiB streamed, the last byte "
            f"{x.stream_done_after_flush_s:+.1f} s" if x.mode == "stream" else "–")
        rows.append([i // len(MODES) + 1, MODES[x.mode], x.journal_eps, x.runlog_eps,
                     x.client_loop_s, x.daemon_cpu_s, x.browser_cpu_s, after,
                     f"{x.rss_kb[0] / 1024:.0f} / {x.rss_kb[1] / 1024:.0f}", x.lost])
    med = {m: statistics.median(x.journal_eps for x in ing if x.mode == m) for m in MODES}
    medr = {m: statistics.median(x.runlog_eps for x in ing if x.mode == m) for m in MODES}
    ratio = med["page"] / med["none"]
    rep.add(tbl(["round", "browser on", ("journal events/s", ",.0f"),
                 ("run log events/s", ",.0f"), ("slowest client loop s", ".2f"),
                 ("daemon CPU s", ".2f"), ("browser CPU s", ".2f"), "after the last flush",
                 "daemon RSS / peak MB", "lost"], rows, "ingest with a live page",
                f"{args.events:,} events from 2 clients (one run, steps `c0` and `c1`), as fast "
                f"as they can, then flush(); the browser running throughout; daemon and browser "
                f"CPU from the release to the run log caught up. Median journal events/s: no "
                f"page {med['none']:,.0f}, page open {med['page']:,.0f}: ratio {ratio:.3f} "
                f"(target ≥ {V.INGEST_TARGET:.2f}); the stream alone (no browser) "
                f"{med['stream']:,.0f} ({med['stream'] / med['none']:.3f}). Run log: "
                f"{medr['none']:,.0f} / {medr['page']:,.0f} / {medr['stream']:,.0f} "
                f"({medr['page'] / medr['none']:.3f}, {medr['stream'] / medr['none']:.3f})."))
    rep.add(tbl(["after", ("VmRSS", ".0f"), ("VmHWM (peak so far)", ".0f")],
                [[w, a / 1024, b / 1024] for w, a, b in rss],
                "daemon memory", "The daemon process (no trackers configured), MB."))
    notes = [f"daemon exit on SIGTERM: {R.daemon_exit}"]
    if R.status_ui:
        notes.append(f"status ui at the end: {R.status_ui}")
    for exc, (count, where) in R.log_exceptions.items():
        notes.append(f"daemon log: {count} traceback(s) ending `{exc}` (at {where})")
    other = [x for x in R.log_problems if not x.startswith("Traceback")]
    if other:
        notes.append("daemon log: " + " / ".join(other[:8]))
    seen: dict[str, list[str]] = {}
    for w in warnings:  # "where: message", the same message counted once with its places
        where, _, msg = w.partition(": ")
        msg = re.sub(r"http://127\.0\.0\.1:\d+", "", msg)
        seen.setdefault(msg, []).append(where)
    for msg, wheres in seen.items():
        places = sorted(set(wheres), key=wheres.index)
        notes.append(f"browser ×{len(wheres)} ({', '.join(places)}): `{msg}`")
    rep.notes = notes
    for key in ("runs", "series", "run"):
        x = getattr(R, key)
        rep.results.append(Result(name=f"API: {key}", unit="ms", n=args.requests,
                                  median=x.median, p99=x.p99,
                                  ok=key == "run" or x.p99 <= V.API_TARGET_MS))
    rep.results += [
        Result(name="first chart drawn", unit="ms", n=len(loads), median=fd,
               ok=fd <= V.FIRST_CHART_TARGET_MS),
        Result(name="live: tracked → in the chart's data", unit="ms", n=L.n,
               median=L.data.p50, p99=L.data.p99,
               ok=L.data.p99 <= V.LIVE_P99_TARGET_MS),
        Result(name="ingest with a live page ÷ without", unit="ratio", n=args.rounds,
               median=ratio, ok=ratio >= V.INGEST_TARGET)]


if __name__ == "__main__":
    sys.exit(main())
