"""Recovery time: `magnusd serve` started on a data directory holding a 1 GiB journal, until it
answers `status` and until its run store has caught up with the journal.

    .venv/bin/python benchmarks/recovery.py [--gib 1.0] [--reps 3] [--clients 4] [--stream-s 3]
        [--flush-every 200000] [--cases clean,kill9,damaged,nocheckpoint] [--rev REV] [--quick]
        [--keep]

**Building the journal.** A private `magnusd serve` (socket, data directory and config under a
temp dir in /tmp; MAGNUS_FSYNC_INTERVAL and segment size at their defaults: 0.1 s, 64 MiB) and
--clients client processes (benchmarks/_recovery_client.py, one MAGNUS_RUN_ID each) that call
`track_this(step=i, loss=...)` as fast as they can and `flush()` every --flush-every calls,
until `status` shows journal bytes ≥ --gib GiB; then they stop, flush, and the run store
catches up. The journal is what real training loops write: columnar batches of up to 8192
calls, about 23 bytes an event.

**What keeps the journal.** `Daemon._retention` deletes, every 5 s, the segments whose records
are all at or below `floor` = min(run-store checkpoint, lowest tracker cursor). With no tracker
the floor is the run-store checkpoint, one second behind the head: the journal would never hold
more than the active segment and the one before. So the config names one tracker of a type no
plugin provides (`recovery-bench-hold`). At the first start its worker fails to load it and it
is `disabled`, but it stays in the tracker set (`Trackers.runners`, which `min_cursor` reads)
with the cursor a new tracker gets: the journal head at that start, seq 0, saved in
`<data>/trackers/hold.cursor` and loaded again at every restart. A disabled tracker never
delivers, so its cursor never moves and every segment is kept (checked: segment 1 still exists
after the build). It costs no delivery work (unlike a `file` tracker failing in a loop), and
its `pending` in `status` (journal events − its cursor's mark 0) is the number of events the
journal holds. The cap (MAGNUS_JOURNAL_MAX_BYTES, default 10 GiB) is set to 0 (none) only when
--gib would reach it. MAGNUS_UI_LISTEN=127.0.0.1:0: the daemon's web viewer (on by default)
listens on a port of its own rather than the shared 127.0.0.1:7470.

The daemon and the clients run the working tree (its HEAD and uncommitted changes under
daemon/ and sdk/ are named in the report, at the start and the end: another engineer commits
meanwhile), or with --rev REV the tree of that revision (`git archive REV daemon/magnusd
sdk/magnus` into the temp dir, imported ahead of the editable install through PYTHONPATH).

**Measured**, each case --reps times, the daemon started by this process (`Popen` of `magnusd
serve`; time.monotonic() just before it):

- answer: until `status` answers (asked in-process like `magnusd status --json` does,
  `magnusd._cli.request_status`, every 10 ms; a CLI start adds ~0.1 s of its own);
- caught up: until `status` shows runlog.applied_seq == journal.last_seq (a run store whose
  `status` runlog.error stays set for 10 s — it retries every second — is reported as stuck
  and not waited for);
- peak RSS: the daemon's VmHWM (/proc/<pid>/status) once caught up, i.e. its peak over the
  whole recovery (each start is a fresh process); daemon CPU s and bytes the daemon read
  (`rchar` of /proc/<pid>/io) over the same span; "recovered" is the daemon's own log line
  "journal recovered in X s" (`Daemon._recover`: open + validate the last segment, then read
  the records after the run-store checkpoint, or at least the last segment, to rebuild the
  duplicate check — all before the socket is bound).

Cases (run in the order clean, kill9, damaged, nocheckpoint; each repetition starts from the
state the previous one left):

1. `clean`: SIGTERM (the daemon fsyncs, catches the run store up, checkpoints), then start;
2. `kill9`: the clients stream for --stream-s seconds (continuing the same runs), then
   SIGKILL to the daemon during streaming and right after to the clients (so their spooled
   leftovers do not add to the restart), then start: the run store replays from its last
   checkpoint (written every second);
3. `nocheckpoint`: SIGTERM, `<data>/runlog.checkpoint` deleted, then start: the duplicate
   check is rebuilt from the whole journal before the socket is bound, and the run store
   applies the whole journal again (appending it to the run files a second time: harmless,
   later values win). Worst case. Before each repetition the run files are truncated back to
   their sizes before the first one (they are append-only), so the repetitions start alike.
4. `damaged`: SIGTERM, then one byte in the middle of the last journal segment is inverted,
   then start; `status["journal"]["recovery"]` must report truncated bytes, salvaged records
   and the kept copy of the damaged segment;

A reference row: the same daemon on an empty data directory (no journal, no config): the fixed
cost of starting the interpreter and the daemon.

The files are on this machine's disk, read back from the page cache (the machine has far more
RAM than the journal; dropping caches needs root): these are warm-cache times.

Results: benchmarks/out/recovery.json (with --rev: recovery-REV.json), rendered to .md. The
temp dir (data, daemon log) is removed at the end unless --keep. Exit status 1 when a damaged
start did not report the damage or a run store got stuck.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import _baseline as B
import _common as C
import _recovery_cases as R_
from _recovery_start import STUCK_S, Start
from _results import Report, Result, finish, new_report, tbl


def med_max(vals: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(vals))} / {fmt.format(max(vals))}" if vals else "-"


def caught_cell(rs: list[Start]) -> str:
    ok = [r.caught_s for r in rs if not r.stuck]
    stuck = [r for r in rs if r.stuck]
    cell = med_max(ok) if ok else ""
    if stuck:
        cell += (" — " if cell else "") + (f"NEVER: {len(stuck)} of {len(rs)} stuck "
                                           f"(`{stuck[0].stuck}`)")
    return cell

def report(rep: Report, args: argparse.Namespace, b: R_.Built,
           results: dict[str, list[Start]], code: str) -> None:
    bj = b.journal
    rep.title = f"magnusd recovery with a {bj.bytes / R_.GIB:.2f} GiB journal"
    out = [f"Daemon and SDK: {code}.\n",
           f"Journal built by {args.clients} client processes (`track_this(step=i, loss=...)`, "
           f"`flush()` every {args.flush_every:,} calls) in {b.seconds:.1f} s "
           f"({b.sent / b.seconds:,.0f} events/s; run store caught up at "
           f"{b.caught_up_s:.1f} s): {bj.bytes:,} bytes ({bj.bytes / R_.GIB:.3f} GiB) in "
           f"{bj.segments} segments, {bj.events:,} events "
           f"({bj.bytes / max(bj.events, 1):.1f} bytes/event), {bj.last_seq:,} records; "
           f"segment 1 still there: {b.segment1_kept}; build daemon peak RSS "
           f"{b.hwm_mb:.0f} MB.\n",
           f"Seconds from `Popen(magnusd serve)`, median / max of {args.reps} (see the script's "
           "docstring for each column). Journal columns as the case's last start found it.\n"]
    rep.intro = "\n".join(out)
    rows: list[list[str | int]] = []
    for case in ("empty", "clean", "kill9", "nocheckpoint", "damaged"):  # the brief's order
        rs = results.get(case, [])
        if not rs:
            continue
        j = rs[-1].journal
        rows.append([
            R_.CASE_TITLE[case].replace("4 clients", f"{args.clients} clients"),
            f"{j.bytes / R_.GIB:.3f}", j.segments,
            f"{j.events / 1e6:.1f} M" if j.events >= 0 else "-",
            med_max([r.replayed for r in rs], "{:,.0f}"),
            med_max([r.answer_s for r in rs]),
            caught_cell(rs),
            med_max([r.recovered_s for r in rs]),
            med_max([r.hwm_mb for r in rs], "{:.0f}"),
            med_max([r.cpu_s for r in rs]),
            med_max([r.read_gb for r in rs]),
        ])
        ok = [r.answer_s for r in rs]
        rep.results.append(Result(name=f"{case}: answers `status`", unit="s", n=len(ok),
                                  median=statistics.median(ok), ok=not any(r.stuck for r in rs)))
    rep.add(tbl(["case", "journal GiB", "segments", "events", "records replayed by the "
                        "run store", ("answers `status` s", "*"), ("run store caught up s", "*"),
                        "recovered (log) s", "peak RSS MB", "daemon CPU s",
                        "daemon read GB"], rows))
    details = []
    for r in results.get("kill9", []):
        details.append(f"kill9 #{r.rep + 1}: {r.streamed_events:,} events streamed in "
                       f"{args.stream_s:g} s before SIGKILL; at the kill last seq "
                       f"{r.last_seq_at_kill:,}, run store applied {r.applied_at_kill:,}, "
                       f"checkpoint file {r.checkpoint_at_kill:,}; after restart the run store "
                       f"applied {r.replayed:,} record(s) (the duplicate check read "
                       f"{r.records_after_checkpoint:,} before the socket was bound); "
                       f"answer {r.answer_s:.2f} s, caught up {r.caught_s:.2f} s, "
                       f"peak {r.hwm_mb:.0f} MB (at answer {r.hwm_answer_mb:.0f} MB), read "
                       f"{r.read_gb:.2f} GB")
    for r in results.get("damaged", []):
        rec, f = r.recovery, r.flip
        assert f is not None
        details.append(f"damaged #{r.rep + 1}: byte {f.offset:,} of segment {f.segment} "
                       f"({f.segment_bytes:,} bytes) inverted; `status` journal.recovery: "
                       f"truncated_bytes {rec['truncated_bytes']:,}, salvaged_records "
                       f"{rec['salvaged_records']:,}, damaged_copies "
                       f"{[os.path.basename(p) for p in rec['damaged_copies']]}; last seq "
                       f"{r.last_seq_before:,} before, {r.journal.last_seq:,} after; "
                       f"{'OK' if r.damage_ok else 'NOT REPORTED'}")
    for r in results.get("nocheckpoint", []):
        details.append(f"nocheckpoint #{r.rep + 1}: run files restored to "
                       f"{r.run_files_bytes:,} bytes in {r.run_files} files; "
                       f"{r.records_after_checkpoint:,} records read before the socket was "
                       f"bound; answer {r.answer_s:.2f} s (peak RSS then "
                       f"{r.hwm_answer_mb:.0f} MB), caught up {r.caught_s:.2f} s "
                       f"(peak {r.hwm_mb:.0f} MB), read {r.read_gb:.2f} GB")
    for case, rs in results.items():
        for r in rs:
            if r.stuck:
                details.append(f"{case} #{r.rep + 1}: the run store never caught up: "
                               f"`status` runlog.error `{r.stuck}` for {STUCK_S:g} s, "
                               f"{r.stuck_at} (not waited for longer)")
    for r in results.get("clean", []):
        details.append(f"clean #{r.rep + 1}: SIGTERM → exit {r.stop_s:.2f} s (exit "
                       f"{r.stop_exit}); answer {r.answer_s:.2f} s")
    rep.notes += details


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0, help="journal size to build, GiB")
    ap.add_argument("--reps", type=int, default=3, help="starts per case")
    ap.add_argument("--clients", type=int, default=4, help="client processes (one run each)")
    ap.add_argument("--stream-s", type=float, default=3.0,
                    help="kill9: seconds the clients stream before the SIGKILL")
    ap.add_argument("--flush-every", type=int, default=200_000,
                    help="each client calls flush() after this many track_this calls")
    ap.add_argument("--cases", default=",".join(R_.CASES),
                    help="comma-separated, of " + ",".join(R_.CASES))
    ap.add_argument("--rev", default="",
                    help="run the daemon and the clients from this git revision (git archive "
                         "into the temp dir, PYTHONPATH) instead of the working tree")
    ap.add_argument("--quick", action="store_true", help="a 0.02 GiB journal, 1 start a case")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data, daemon log)")
    args = ap.parse_args()
    if args.quick:
        args.gib, args.reps, args.stream_s, args.clients = 0.02, 1, 1.0, 2
    cases = [c for c in args.cases.split(",") if c]
    if unknown := set(cases) - set(R_.CASES):
        sys.exit(f"unknown case(s): {', '.join(sorted(unknown))}")
    C.check_python()
    root = C.short_tmpdir("mbrec")
    extra, code = R_.setup(args, root)
    d = C.Daemon(root, R_.HOLD_CONFIG, spool_dir=str(root / "spool"), extra_env=extra)
    run_ids = [f"bench-recovery-{os.urandom(2).hex()}-{k}" for k in range(args.clients)]
    results: dict[str, list[Start]] = {}
    problems: list[str] = []
    try:
        print(f"reference: empty data dir x{args.reps} ...", file=sys.stderr)
        results["empty"] = R_.empty_reference(root, args.reps, extra)
        print(f"building a {args.gib:g} GiB journal with {args.clients} clients ...",
              file=sys.stderr)
        b = R_.build(d, args, run_ids)
        print(f"  built {b.journal.bytes / R_.GIB:.3f} GiB in {b.seconds:.0f} s",
              file=sys.stderr)
        R_.run_cases(d, args, run_ids, b, cases, results, problems)
    finally:
        exit_code = d.stop(timeout=120, check=False)
        if exit_code not in (0, None):
            problems.append(f"final SIGTERM: daemon exited {exit_code}")
        C.remove_tree(root, args.keep)
    if not args.rev:
        code += f"; {B.tree_state('daemon', 'sdk')} at the end"
    res = new_report("recovery" + (f"-{args.rev}" if args.rev else ""), "magnusd recovery")
    res.notes = problems
    report(res, args, b, results, code)
    res.ok = (all(r.damage_ok for r in results.get("damaged", []))
              and not any(r.stuck for rs in results.values() for r in rs))
    res.data = {"build": b, "cases": results}
    return finish(res)


if __name__ == "__main__":
    sys.exit(main())
