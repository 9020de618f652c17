"""Daemon ingest rate: events/s journaled and events/s in the run log, with 1, 4 and 8 client
processes (design §11: >= 1,000,000 events/s, several clients).

    .venv/bin/python benchmarks/ingest.py [--events 1000000] [--clients 1,4,8]
        [--profile | --profile-wall] [--quick] [--keep]

For each client count a fresh private `magnusd serve` is started, and N client processes
(benchmarks/_ingest_client.py, each with its own MAGNUS_RUN_ID) warm up, then are released
together; each sends events/N `track_this(loss=..., step=i)` calls as fast as it can and calls
flush(). Measured from the first event of any client:

- journal: until the last client's flush() returned (everything journaled and fsynced);
- run log: until `magnusd status` (polled every 10 ms) shows runlog.applied_seq ==
  journal.last_seq and events_total has grown by the events sent.

Afterwards every run's step log (`magnusd show RUN_ID --json`) must hold all its values.

--profile runs each daemon under cProfile, all threads merged, each thread's CPU time
(benchmarks/_profiled_serve.py; --profile-wall: wall-clock time, idle waits included), and
after its SIGTERM stop prints the top 25 functions by cumulative and by total time; the .prof
files are kept in benchmarks/out/ (open with `python -m pstats FILE`). Profiling slows the
daemon: its rates are then not the daemon's real rates.

Results: benchmarks/out/ingest.json, rendered to ingest.md (with --profile: ingest-profiled,
the profiles included).
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import subprocess
import sys
import time

import msgspec

import _common as C
from _results import OUT_DIR, Result, Table, Text, cols, finish, new_report

CLIENT = str(C.HERE / "_ingest_client.py")
PROFILED_SERVE = str(C.HERE / "_profiled_serve.py")


class IngestCase(C.Ended, kw_only=True):
    """One client count: rates from the first event, the daemon's cost, and what was lost."""

    clients: int
    events: int
    release_to_first_s: float
    journal_s: float  # until the last client's flush() returned
    runlog_s: float  # until the run store caught up with every event
    journal_eps: float
    runlog_eps: float
    client_loop_s: float  # the slowest client's own loop
    flush_ok: bool
    events_total: int
    messages: int
    journal_bytes: int
    duplicates_skipped: int | None
    daemon_cpu_s: float
    rss_kb: tuple[int, int]
    lost: int
    missing: list[str]
    show_s: float
    client_stderr: list[str]
    profile: list[tuple[str, str]] = msgspec.field(default_factory=list)
    profile_path: str = ""

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.flush_ok


def one(nclients: int, total: int, profile: str, keep: bool) -> IngestCase:
    per = total // nclients
    total = per * nclients
    root = C.short_tmpdir("mbi")
    prof_dir = OUT_DIR / ("quick" if "--quick" in sys.argv else "")
    prof_dir.mkdir(parents=True, exist_ok=True)
    prof_path = str(prof_dir / f"ingest-{nclients}c.prof")
    cmd = None
    if profile:
        cmd = [C.PY, PROFILED_SERVE, *(["--wall"] if profile == "wall" else []), prof_path]
        OUT_DIR.mkdir(exist_ok=True)
    d = C.Daemon(root, spool_dir=str(root / "spool"), command=cmd)
    tag = os.urandom(2).hex()
    run_ids = [f"bench-ingest-{tag}-{nclients}c-{k}" for k in range(nclients)]
    procs: list[subprocess.Popen[str]] = []
    try:
        d.start()
        assert d.proc is not None
        procs = d.start_clients(CLIENT, [str(per)], run_ids, MAGNUS_SPOOL_DIR=str(root / "cspool"))
        base = d.status()
        cpu0 = C.cpu_seconds(d.proc.pid)
        t_release = time.monotonic()
        C.send(procs, "go\n")
        t_applied, st = d.wait_applied(base["events_total"] + total, timeout=300, every=0.01)
        cpu1 = C.cpu_seconds(d.proc.pid)
        outs = C.read_ready(procs)
        rss = d.rss_kb()
        # Nothing lost: every run's step log holds loss, loss_1 .. loss_{per-1}.
        lost, missing = 0, list[str]()
        t0 = time.monotonic()
        for rid in run_ids:
            found, miss = C.metric_keys_ok(d.run_log(rid), "main", "loss", range(per))
            lost += per - found
            missing += miss[:2]
        show_s = time.monotonic() - t0
    finally:
        C.kill_all(procs)
        fin = d.finish(root, keep, timeout=120)
    t_first = min(o["t_first"] for o in outs)
    t_flushed = max(o["t_flushed"] for o in outs)
    return IngestCase(
        clients=nclients, events=total, release_to_first_s=t_first - t_release,
        journal_s=t_flushed - t_first, runlog_s=t_applied - t_first,
        journal_eps=total / (t_flushed - t_first), runlog_eps=total / (t_applied - t_first),
        client_loop_s=max(o["t_loop"] - o["t_first"] for o in outs),
        flush_ok=all(o["flush_ok"] for o in outs),
        events_total=st["events_total"] - base["events_total"],
        messages=st["messages_total"] - base["messages_total"],
        journal_bytes=st["journal"]["bytes"] - base["journal"]["bytes"],
        duplicates_skipped=st.get("duplicates_skipped"), daemon_cpu_s=cpu1 - cpu0, rss_kb=rss,
        lost=lost, missing=missing[:5], show_s=show_s,
        client_stderr=[o["stderr"][:300] for o in outs if o["stderr"]],
        **fin,
        profile=profile_text(prof_path) if profile else [],
        profile_path=prof_path if profile else "")


def profile_text(path: str, top: int = 25) -> list[tuple[str, str]]:
    """(title, text) of the top `top` functions by cumulative and by own time."""
    if not os.path.exists(path):
        return [("", f"(no profile written at {path})")]
    parts = []
    for key, title in (("cumulative", "cumulative time"), ("tottime", "total (own) time")):
        buf = io.StringIO()
        st = pstats.Stats(path, stream=buf)
        st.strip_dirs().sort_stats(key).print_stats(top)
        body = buf.getvalue()
        parts.append((f"top {top} by {title}", body[body.find("   ncalls"):]
                      if "   ncalls" in body else body))
    return parts


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="events per configuration")
    ap.add_argument("--clients", default="1,4,8", help="comma-separated client counts")
    ap.add_argument("--profile", action="store_const", const="cpu", default="",
                    help="run the daemon under cProfile (per-thread CPU time)")
    ap.add_argument("--profile-wall", dest="profile", action="store_const", const="wall",
                    help="like --profile, wall-clock time (idle waits included)")
    ap.add_argument("--quick", action="store_true", help="20,000 events, 1 and 4 clients")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (daemon logs)")
    args = ap.parse_args()
    C.check_python()
    if args.quick:
        args.events, args.clients = 20_000, "1,4"
    results = []
    for n in (int(x) for x in args.clients.split(",")):
        print(f"{n} client(s), {args.events:,} events{' (profiled)' if args.profile else ''} ...",
              file=sys.stderr)
        results.append(one(n, args.events, args.profile, args.keep))
    rep = new_report("ingest-profiled" if args.profile else "ingest", "daemon ingest rate", (
        ("The daemon ran under cProfile: rates are not representative.\n\n" if args.profile else "")
        + "From the first event to: every client's flush() returned (journal), `status` shows "
        "runlog.applied_seq == journal.last_seq with all events counted (run log). Target ≥ "
        "1,000,000 events/s. When the slowest client's loop takes about as long as the journal "
        "time, the clients (sharing 2 CPUs with the daemon), not the daemon, set the rate; "
        "'events per daemon CPU s' is then the daemon's own capacity (daemon CPU counted from "
        "release to run log caught up)."))
    ok = [r.ok for r in results]
    for r, good in zip(results, ok, strict=True):
        rep.results += [Result(name=f"{r.clients} client(s): {what}", unit="events/s",
                               median=eps, n=r.events, ok=good)
                        for what, eps in (("journal", r.journal_eps), ("run log", r.runlog_eps))]
    rep.blocks.append(Table(columns=cols(
        "clients", "events", ("journal s", ".2f"), ("journal events/s", "*,.0f"),
        ("run log s", ".2f"), ("run log events/s", "*,.0f"), ("slowest client loop s", ".2f"),
        ("daemon CPU s", ".2f"), ("events per daemon CPU s", ",.0f"), "events_total Δ",
        "messages", ("daemon RSS MB", ".0f"), ("peak MB", ".0f"), "lost", "check"), rows=[
        [r.clients, r.events, r.journal_s, r.journal_eps, r.runlog_s,
         r.runlog_eps, r.client_loop_s, r.daemon_cpu_s, r.events / r.daemon_cpu_s,
         r.events_total, r.messages, r.rss_kb[0] / 1024, r.rss_kb[1] / 1024,
         r.lost, "OK" if good else "FAIL"] for r, good in zip(results, ok, strict=True)]))
    for r in results:
        pre = f"{r.clients} client(s)"
        rep.notes += r.problems(pre)
        if r.client_stderr:
            rep.notes.append(f"{pre}: client stderr: " + " / ".join(r.client_stderr[:3]))
        if r.missing:
            rep.notes.append(f"{pre}: missing e.g. {r.missing}")
        rep.notes.append(f"{pre}: journal {r.journal_bytes / r.events:.1f} bytes/event; "
                         f"release→first event {r.release_to_first_s * 1000:.0f} ms; "
                         f"`show` of all runs {r.show_s:.1f} s; duplicates skipped "
                         f"{r.duplicates_skipped}; SIGTERM→daemon exit {r.stop_s:.1f} s")
        if args.profile:
            rep.blocks += [Text(body, f"daemon profile ({args.profile} time), {pre}: {what} "
                                f"({r.profile_path})", code=bool(what))
                           for what, body in r.profile]
    rep.ok = all(ok)
    rep.data = results
    return finish(rep)


if __name__ == "__main__":
    sys.exit(main())
