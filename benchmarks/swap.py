"""Tracker hot swap and `file` tracker fan-out (design §8-§9; §11: config saved → new tracker
receiving ≤ 2 s).

    .venv/bin/python benchmarks/swap.py [--rate 20000] [--swaps 10] [--clients 2]
        [--events 500000] [--rounds 3] [--cases swap,fanout] [--quick] [--keep]

**Swap latency.** A private `magnusd serve` with one `file` tracker `main`; one client process
(benchmarks/_steady_client.py) emits `track_this(loss=..., step=i)` at a steady --rate. The
config file is rewritten the way editors save (write a temp file beside it, `os.replace` it into
place), --swaps times for each kind of change:

- `path`: tracker `main` keeps its name, its `config.path` changes to a new file (the new
  instance continues from the old one's cursor);
- `new name`: tracker `main` unchanged, a tracker `extra_k` added (and `extra_{k-1}` removed;
  the new name starts at the journal head).

Measured from the `os.replace` (time.monotonic / time.time taken right after it) to the first
complete line in the new tracker's file (polled every 1 ms), plus `config.loaded_at` from
`status` and the `timestamp` field of that first line (when the client tracked it), both against
the replace's wall time. Afterwards the client stops and flushes; the files of all `main`
instances together must hold every event exactly once.

**Fan-out.** A fresh daemon with one `file` tracker; --clients processes
(benchmarks/_ingest_client.py, one run id each) send --events events each as fast as they can.
From the first event to: the last client's flush() returned (ingest), `status` shows the run
log caught up, and `status` shows the tracker's pending == 0 with every event delivered
(fan-out; polled every 10 ms). The file must hold each (run_id, step) exactly once. Then, on the
same (now idle) daemon, a second `file` tracker with `backfill: true` is added: the time from
its `config.loaded_at` until it has delivered the retained journal is the tracker's rate with no
ingest competing. The same ingest without any tracker is the baseline, in a fresh daemon right
after; --rounds such pairs (with, without) alternate and the report gives each round's ratio
and their median.

Each tracker runs in its own worker process (`python -m magnusd._worker`, its pid in `status`):
"daemon CPU" is the daemon process alone, the worker's CPU (from /proc/<pid>/stat, the pid
from `status` at release and at catch-up; NaN if it changed) and peak RSS are listed beside it.

Results: benchmarks/out/swap.json, rendered to swap.md (render.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import _common as C
from _results import Cell, Report, Result, finish, new_report, tbl
from _swap_cases import FanoutCase, SwapCase, case_fanout, case_swap

TARGET_S = 2.0
MEDIAN_TARGET_S = 0.2  # replace → first line, median (worker-process design)
INGEST_TARGET = 0.80  # ingest with the `file` tracker / without


# -- report -------------------------------------------------------------------------------


def stats(vals: list[float]) -> str:
    s = sorted(vals)
    return f"{statistics.median(s):.3f} / {s[-1]:.3f}" if s else "-"


def report(rep: Report, swap: SwapCase | None, fans: list[FanoutCase]) -> None:
    problems = rep.notes
    if swap:
        sw = swap.swaps
        rows = []
        for kind in ("path", "new name"):
            s = [x for x in sw if x.kind == kind]
            if not s:
                continue
            worst = max(x.first_line_s for x in s)
            rep.results.append(Result(name=f"swap ({kind}): replace → first line in new file",
                                      unit="s", n=len(s), median=statistics.median(
                                          x.first_line_s for x in s), ok=worst <= TARGET_S))
            rows.append([
                "`main` path A → B (same name)" if kind == "path" else "new tracker name",
                len(s), stats([x.loaded_s for x in s]), stats([x.first_line_s for x in s]),
                stats([x.first_ts_s for x in s]),
                "OK" if worst <= TARGET_S else "SLOW",
                "OK" if statistics.median(x.first_line_s for x in s) <= MEDIAN_TARGET_S
                else "over"])
        rep.add(tbl(["change", "swaps", "replace → config.loaded_at",
                     "replace → first line in new file", "first line's `timestamp` − replace",
                     "max ≤ 2 s", f"median ≤ {MEDIAN_TARGET_S:g} s"], rows,
                    f"swap latency (target ≤ {TARGET_S:g} s)",
                    f"One client at {swap.achieved_rate:,.0f} events/s (asked "
                    f"{swap.rate:,.0f}); seconds from the replace, median / max."))
        mc = swap.main_check
        ok = (mc.missing == 0 and mc.duplicates == 0 and mc.unexpected == 0
              and swap.flush_ok)
        rep.add(f"\nExactly once across the {mc.files} `main` instances' files: "
                   f"{mc.lines:,} lines for {swap.events:,} events sent; missing "
                   f"{mc.missing}, duplicated {mc.duplicates}, unexpected "
                   f"{mc.unexpected} — {'OK' if ok else 'FAIL'}. Client's largest "
                   f"catch-up burst: {swap.max_burst} events.\n")
        if not ok:
            problems.append("swap: main instances not exactly once")
        errs = [x for x in sw if x.config_error or x.state != "running"]
        if errs:
            problems.append(f"swap: {len(errs)} swap(s) with a config error or a tracker not "
                            f"running: {errs[:2]}")
        rep.add(tbl(["#", "change", "tracker", ("→ loaded_at", ".3f"), ("→ first line", ".3f"),
                     ("first `timestamp` − replace", ".3f")],
                    [[i, x.kind, x.tracker, x.loaded_s, x.first_line_s, x.first_ts_s]
                     for i, x in enumerate(sw, 1)], "each swap (s)"))
        problems += swap.problems("swap") + [f"client stderr: {e}" for e in swap.client_stderr]
    if fans:
        frows: list[list[Cell]] = []
        for r in fans:
            c, w, t = r.check, r.worker_rss_kb.get("main"), r.tracker
            frows.append([
                r.round, "`file` tracker" if t else "no tracker (baseline)",
                f"{r.clients} × {r.events // r.clients:,}", r.ingest_s, r.ingest_eps,
                r.runlog_eps, r.fan_s, r.fan_eps, r.fan_lag_s, r.max_pending if t else None,
                r.daemon_cpu_s, r.worker_cpu_s if t else None,
                f"{r.rss_kb[1] / 1024:.0f}" + (f" / {w[1] / 1024:.0f}" if w else ""),
                c.lines if c else None, f"{c.missing} / {c.duplicates}" if c else "-"])
        rep.add(tbl(["round", "case", "clients × events", ("ingest s", ".2f"),
                     ("ingest events/s", "*,.0f"), ("run log events/s", ",.0f"),
                     ("fan-out s", ".2f"), ("fan-out events/s", "*,.0f"),
                     ("fan-out lag s", ".2f"), "max pending", ("daemon CPU s", ".2f"),
                     ("worker CPU s", ".2f"), "peak RSS MB daemon / worker", "lines in file",
                     "missing / duplicated"], frows,
                    "`file` tracker fan-out while ingest runs at full speed",
                    "Rounds alternate: with the tracker, then the baseline, each a fresh "
                    "daemon (see the script's docstring for each column)."))
        pairs = [(a, b) for a in fans for b in fans if a.tracker and not b.tracker
                 and a.round == b.round]
        if pairs:
            ratios = [a.ingest_eps / b.ingest_eps for a, b in pairs]
            fan = [a.fan_eps for a, _ in pairs]
            rep.results.append(Result(
                name="ingest with the `file` tracker ÷ without", unit="ratio", n=len(ratios),
                median=statistics.median(ratios), ok=statistics.median(ratios) >= INGEST_TARGET))
            rep.results.append(Result(name="`file` tracker fan-out", unit="events/s",
                                      n=len(fan), median=statistics.median(fan)))
            rep.add(f"\nIngest with the `file` tracker ÷ without, round by round: "
                       f"{', '.join(f'{x:.1%}' for x in ratios)}; median "
                       f"{statistics.median(ratios):.1%} (target ≥ {INGEST_TARGET:.0%}). "
                       f"Fan-out events/s: median {statistics.median(fan):,.0f} "
                       f"(min {min(fan):,.0f}, max {max(fan):,.0f}).\n")
        reps = [(r.round, r.replay) for r in fans if r.replay is not None]
        if reps:
            rep.add("\nThe `file` tracker alone (the same daemon, idle after the round: a "
                       "second `file` tracker with `backfill: true` replays the retained "
                       "journal; events/s from its `config.loaded_at`):\n")
            rep.add(tbl(
                ["round", "events", ("s from loaded_at", ".2f"), ("events/s", "*,.0f"),
                 ("s from the replace", ".2f"), "lines in file", "missing / duplicated"],
                [[rnd, rp.delivered, rp.s, rp.eps, rp.from_replace_s, rp.lines,
                  f"{rp.missing} / {rp.duplicates}"] for rnd, rp in reps]))
        for r in fans:
            if not r.tracker:
                continue
            rp, c = r.replay, r.check
            assert rp is not None and c is not None
            if rp.missing or rp.duplicates or rp.lines != r.events:
                problems.append(f"fan-out replay: file check failed: {rp}")
            if (c.missing or c.duplicates or c.unexpected or c.lines != r.events
                    or not r.flush_ok):
                problems.append(f"fan-out: file check failed: {c}")
            if r.tracker_errors or r.restarts:
                problems.append(f"fan-out: tracker errors {r.tracker_errors}, restarts "
                                f"{r.restarts}: {r.tracker_last_error}")
        for r in fans:
            problems += r.problems("fan-out") + [f"client stderr: {e}" for e in r.client_stderr]
    rep.ok = not problems


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=20_000, help="swap: client events/s")
    ap.add_argument("--swaps", type=int, default=10, help="swap: swaps of each kind")
    ap.add_argument("--clients", type=int, default=2, help="fan-out: client processes")
    ap.add_argument("--events", type=int, default=500_000, help="fan-out: events per client")
    ap.add_argument("--rounds", type=int, default=3,
                    help="fan-out: rounds of (with the tracker, without)")
    ap.add_argument("--cases", default="swap,fanout", help="comma-separated subset")
    ap.add_argument("--quick", action="store_true",
                    help="2 swaps of each kind, 1 round of 2 × 20,000 events")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (daemon logs)")
    args = ap.parse_args()
    C.check_python()
    if args.quick:
        args.swaps, args.events, args.rounds = 2, 20_000, 1
    cases = set(args.cases.split(","))
    swap = None
    fans = []
    if "swap" in cases:
        print(f"swap: {args.swaps} + {args.swaps} swaps at {args.rate:,.0f} events/s ...",
              file=sys.stderr)
        swap = case_swap(args.rate, args.swaps, args.keep)
    if "fanout" in cases:
        for rnd in range(1, args.rounds + 1):
            for with_tracker in (True, False):
                print(f"fan-out round {rnd}: {args.clients} × {args.events:,} events, "
                      f"{'file tracker' if with_tracker else 'no tracker'} ...",
                      file=sys.stderr)
                r = case_fanout(args.clients, args.events, with_tracker, args.keep)
                r.round = rnd
                fans.append(r)
    rep = new_report("swap", "tracker hot swap and fan-out")
    report(rep, swap, fans)
    rep.data = {"swap": swap, "fanout": fans}
    return finish(rep)


if __name__ == "__main__":
    sys.exit(main())
