"""Recovery time: `magnusd serve` started on a data directory holding a 1 GiB journal, until it
answers `status` and until its run store has caught up with the journal.

    .venv/bin/python benchmarks/recovery.py [--gib 1.0] [--reps 3] [--clients 4] [--stream-s 3] [--flush-every 200000] [--cases clean,kill9,damaged,nocheckpoint] [--rev REV] [--keep]

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

Results: a markdown table on stdout and in benchmarks/out/recovery.md (with --rev:
recovery-REV.md). The temp dir (data, daemon log) is removed at the end unless --keep. Exit
status 1 when a damaged start did not report the damage or a run store got stuck.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as C
from ingest import cpu_seconds

CLIENT = str(C.HERE / "_recovery_client.py")
GIB = 1 << 30
HOLD_TYPE = "recovery-bench-hold"
HOLD_CONFIG = f"""\
# benchmarks/recovery.py: a tracker of a type no plugin provides. It is `disabled` from the
# first start on, and its cursor (seq 0) holds every journal segment against retention.
experiment_tracker:
  - type: {HOLD_TYPE}
    name: hold
"""
CASES = ("clean", "kill9", "damaged", "nocheckpoint")
CASE_TITLE = {
    "empty": "reference: empty data dir, no config",
    "clean": "1. clean stop (SIGTERM), start",
    "kill9": "2. kill -9 while 4 clients stream, start",
    "nocheckpoint": "3. run-store checkpoint deleted, start",
    "damaged": "4. last segment damaged (1 byte), start",
}
STUCK_S = 10.0  # a run-store error lasting this long ends the wait (it retries every 1 s)
REPO = C.HERE.parent
RECOVERED = re.compile(r"journal recovered in ([\d.]+) s: last seq (\d+), (\d+) record\(s\) "
                       r"after the run-log checkpoint (\d+)")


def git(*args: str) -> str:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never refresh the index
    return subprocess.run(["git", "-C", str(REPO), *args], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def extract(rev: str, dest: Path) -> str:
    """`git archive REV daemon/magnusd sdk/magnus | tar -x -C dest`; the full commit id."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", commit, "daemon/magnusd",
                                "sdk/magnus"], stdout=subprocess.PIPE)
    dest.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0 or tar.returncode != 0:
        raise RuntimeError(f"could not extract daemon/magnusd and sdk/magnus at {rev}")
    return commit


def code_origin(extra_env: dict[str, str]) -> str:
    """Where the daemon's `magnusd` and the clients' `magnus` are imported from."""
    env = C.clean_env(**extra_env)
    r = subprocess.run([C.PY, "-c", "import magnus, magnusd; print(magnusd.__file__); "
                        "print(magnus.__file__)"], env=env, capture_output=True, text=True,
                       check=True)
    return " and ".join(f"`{p}`" for p in r.stdout.split())


def tree_state() -> str:
    """HEAD, and the uncommitted changes under daemon/ and sdk/ (read-only git)."""
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "daemon", "sdk")
    except (OSError, subprocess.CalledProcessError) as e:
        return f"(git: {e})"
    n = len(dirty.splitlines())
    return f"HEAD {head}" + (f" + {n} uncommitted file(s) under daemon/ sdk/" if n else "")


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def rchar(pid: int) -> int:
    """Bytes the process read with read()/pread() (page cache included), from /proc."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def ask(sock: str, timeout: float = 120.0) -> dict[str, Any] | None:
    """`status`, or None while nothing answers on the socket."""
    from magnusd._cli import request_status
    from magnusd._errors import MagnusdError

    try:
        return request_status(sock, timeout=timeout)
    except (MagnusdError, OSError):
        return None


def events_held(st: dict[str, Any]) -> int:
    """Events in the journal: the `hold` tracker's pending (its cursor's mark is 0)."""
    for t in st.get("trackers", []):
        if t["name"] == "hold":
            return int(t["pending"])
    return -1


def journal_info(st: dict[str, Any]) -> dict[str, Any]:
    j = st["journal"]
    return {"bytes": j["bytes"], "segments": j["segments"], "last_seq": j["last_seq"],
            "events": events_held(st)}


def timed_start(d: C.Daemon, timeout: float, hold: bool = True) -> dict[str, Any]:
    """Start the daemon; seconds to `status` answering and to the run store caught up.

    With `hold`, afterwards (not timed) wait for the `hold` tracker to show in `status`, for
    the journal's event count."""
    from magnusd._runstore import read_checkpoint

    log_at = d.log.stat().st_size if d.log.exists() else 0
    checkpoint = read_checkpoint(d.data)
    t0 = time.monotonic()
    with open(d.log, "ab") as logf:
        d.proc = subprocess.Popen(d.command, env=d.env, stdout=logf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True, cwd=d.cwd)
    pid = d.proc.pid
    end = t0 + timeout
    st = None
    while st is None:
        if d.proc.poll() is not None:
            raise RuntimeError(f"magnusd exited with {d.proc.returncode}:\n"
                               f"{d.log_text()[log_at:][-3000:]}")
        if time.monotonic() > end:
            raise TimeoutError(f"no answer within {timeout} s")
        st = ask(d.sock)
        if st is None:
            time.sleep(0.01)
    t_answer = time.monotonic() - t0
    hwm_answer = C.mem_kb(pid)[1]
    first = st
    error_since, stuck = None, None
    while st["runlog"]["applied_seq"] != st["journal"]["last_seq"]:
        if time.monotonic() > end:
            raise TimeoutError(f"run store not caught up within {timeout} s: {st['runlog']} "
                               f"{st['journal']['last_seq']}")
        if st["runlog"].get("error"):  # it retries every second; a lasting error: give up
            error_since = error_since or time.monotonic()
            if time.monotonic() - error_since > STUCK_S:
                stuck = st["runlog"]["error"]
                break
        else:
            error_since = None
        time.sleep(0.01)
        st = d.status()
    t_caught = float("nan") if stuck else time.monotonic() - t0
    res = {"answer_s": t_answer, "caught_s": t_caught, "stuck": stuck,
           "stuck_at": (f"applied {st['runlog']['applied_seq']:,} of "
                        f"{st['journal']['last_seq']:,} after {time.monotonic() - t0:.0f} s"),
           "hwm_answer_mb": hwm_answer / 1024, "hwm_mb": C.mem_kb(pid)[1] / 1024,
           "cpu_s": cpu_seconds(pid), "read_gb": rchar(pid) / 1e9,
           "checkpoint": checkpoint, "replayed": st["runlog"]["applied_seq"] - checkpoint,
           "applied_at_answer": first["runlog"]["applied_seq"],
           "recovery": st["journal"]["recovery"], "status": st}
    if hold:
        st = C.wait_for(lambda: (s if events_held(s := d.status()) >= 0 else None), 60, 0.05,
                        "the `hold` tracker in status")
    res["journal"] = journal_info(st)
    new_log = d.log_text()[log_at:]
    m = RECOVERED.search(new_log)
    res["recovered_s"] = float(m.group(1)) if m else float("nan")
    res["records_after_checkpoint"] = int(m.group(3)) if m else -1
    res["log_problems"] = [ln for ln in new_log.splitlines()
                           if (" WARNING " in ln or " ERROR " in ln or ln.startswith("Traceback"))
                           and HOLD_TYPE not in ln]  # the `hold` tracker's error is expected
    return res


def start_clients(d: C.Daemon, run_ids: list[str], first_step: int, every: int,
                  cspool: str) -> list[subprocess.Popen[str]]:
    return C.start_clients(CLIENT, [str(first_step), str(every)], d, run_ids, cspool)


def kill_procs(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()  # our own child, by pid
    for p in procs:
        p.wait()


def build(d: C.Daemon, args: argparse.Namespace, run_ids: list[str]) -> dict[str, Any]:
    target = int(args.gib * GIB)
    d.start()
    # the config is acted on after the daemon answers (its worker fails to load the type)
    hold = C.wait_for(lambda: [t for t in d.status()["trackers"] if t["name"] == "hold"], 60,
                      0.05, "the `hold` tracker in status")
    if hold[0]["state"] != "disabled" or hold[0]["cursor"] != 0:
        raise RuntimeError(f"the `hold` tracker is not disabled at cursor 0: {hold}")
    procs = start_clients(d, run_ids, 0, args.flush_every, str(d.root / "cspool"))
    t0 = time.monotonic()
    C.send(procs, "go\n")
    min_segments, last_print = 1, 0.0
    try:
        while True:
            st = d.status()
            j = st["journal"]
            if j["segments"] < min_segments:
                raise RuntimeError(f"segments went from {min_segments} to {j['segments']}: "
                                   "retention deleted some")
            min_segments = j["segments"]
            if j["bytes"] >= target:
                break
            if time.monotonic() - last_print > 15:
                last_print = time.monotonic()
                print(f"  building: {j['bytes'] / GIB:.2f} GiB, {j['segments']} segments, "
                      f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a client exited early: "
                                   + " ".join((p.stderr.read() or "")[-500:] for p in procs
                                              if p.poll() is not None and p.stderr))
            time.sleep(0.2)
        t_target = time.monotonic()
        C.send(procs, "stop\n")
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=300)
            if p.returncode != 0:
                raise RuntimeError(f"client exited {p.returncode}: {err[-2000:]}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        kill_procs(procs)
    sent = sum(o["n"] for o in outs)
    t_applied, st = d.wait_applied(0, timeout=600, every=0.05)
    seg1 = os.path.join(d.data, "journal", f"{1:020d}.seg")
    res = {"seconds": t_target - t0, "caught_up_s": t_applied - t0, "sent": sent,
           "flush_ok": all(o["flush_ok"] for o in outs),
           "flushes": sum(o["flushes"] for o in outs), "journal": journal_info(st),
           "segment1_kept": os.path.exists(seg1), "hwm_mb": d.rss_kb()[1] / 1024,
           "events_total": st["events_total"]}
    if res["journal"]["events"] != sent:
        raise RuntimeError(f"the journal holds {res['journal']['events']} events, the clients "
                           f"sent {sent}")
    if not res["segment1_kept"]:
        raise RuntimeError("segment 1 was deleted: the journal is not being kept")
    return res


def run_files(data: str) -> dict[str, int]:
    out = {}
    for dirpath, _, names in os.walk(os.path.join(data, "runs")):
        for n in names:
            p = os.path.join(dirpath, n)
            out[p] = os.path.getsize(p)
    return out


def restore_run_files(sizes: dict[str, int], data: str) -> None:
    """Truncate the run files back to `sizes` (they are append-only), drop newer files."""
    for p in run_files(data):
        if p not in sizes:
            os.unlink(p)
    for p, size in sizes.items():
        os.truncate(p, size)


def flip_middle_byte(journal_dir: str) -> dict[str, Any]:
    from magnusd._journal import list_segments

    first = list_segments(journal_dir)[-1]
    path = os.path.join(journal_dir, f"{first:020d}.seg")
    size = os.path.getsize(path)
    at = size // 2
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())
    return {"segment": first, "segment_bytes": size, "offset": at}


def one_case(case: str, d: C.Daemon, args: argparse.Namespace, run_ids: list[str],
             rep: int, state: dict[str, Any]) -> dict[str, Any]:
    timeout = 120 + 600 * args.gib
    info: dict[str, Any] = {"case": case, "rep": rep}
    if case == "clean":
        info["stop_exit"] = d.stop(timeout=120)
        info["stop_s"] = d.stop_s
    elif case == "kill9":
        first = 100_000_000 * (rep + 1)  # the runs continue, at steps of their own
        procs = start_clients(d, run_ids, first, args.flush_every, str(d.root / "cspool"))
        try:
            before = d.status()
            C.send(procs, "go\n")
            time.sleep(args.stream_s)
            st = d.status()
            assert d.proc is not None
            os.kill(d.proc.pid, signal.SIGKILL)  # our own daemon, by pid
            d.proc.wait()
        finally:
            kill_procs(procs)
        info["streamed_events"] = st["events_total"] - before["events_total"]
        info["last_seq_at_kill"] = st["journal"]["last_seq"]
        info["applied_at_kill"] = st["runlog"]["applied_seq"]
        from magnusd._runstore import read_checkpoint

        info["checkpoint_at_kill"] = read_checkpoint(d.data)
    elif case == "damaged":
        info["stop_exit"] = d.stop(timeout=120)
        info["stop_s"] = d.stop_s
        info["last_seq_before"] = state["last_seq"]
        info["flip"] = flip_middle_byte(os.path.join(d.data, "journal"))
    elif case == "nocheckpoint":
        info["stop_exit"] = d.stop(timeout=120)
        info["stop_s"] = d.stop_s
        if "run_sizes" not in state:
            state["run_sizes"] = run_files(d.data)
        else:
            restore_run_files(state["run_sizes"], d.data)
        try:  # missing when the previous start never wrote one (a run store that failed)
            os.unlink(os.path.join(d.data, "runlog.checkpoint"))
        except FileNotFoundError:
            pass
        info["run_files_bytes"] = sum(state["run_sizes"].values())
        info["run_files"] = len(state["run_sizes"])
    r = timed_start(d, timeout)
    r.update(info)
    state["last_seq"] = r["journal"]["last_seq"]
    if case == "damaged":
        rec = r["recovery"]
        r["damage_ok"] = (rec["truncated_bytes"] > 0 and len(rec["damaged_copies"]) == 1
                          and os.path.exists(rec["damaged_copies"][0]))
    return r


def empty_reference(root: Path, reps: int, extra_env: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for _ in range(reps):
        e = C.Daemon(root / "empty", extra_env=extra_env)
        shutil.rmtree(e.data, ignore_errors=True)
        try:
            out.append(timed_start(e, 60, hold=False) | {"case": "empty"})
        finally:
            e.stop()
    return out


def med_max(vals: list[float], fmt: str = "{:.2f}") -> str:
    if not vals:
        return "-"
    return f"{fmt.format(statistics.median(vals))} / {fmt.format(max(vals))}"


def caught_cell(rs: list[dict[str, Any]]) -> str:
    ok = [r["caught_s"] for r in rs if not r["stuck"]]
    stuck = [r for r in rs if r["stuck"]]
    cell = f"**{med_max(ok)}**" if ok else ""
    if stuck:
        cell += (" — " if cell else "") + (f"**never: {len(stuck)} of {len(rs)} stuck** "
                                           f"(`{stuck[0]['stuck']}`)")
    return cell


def report(args: argparse.Namespace, b: dict[str, Any], results: dict[str, list[dict[str, Any]]],
           load0: str, load1: str, elapsed: float, problems: list[str], code: str) -> str:
    bj = b["journal"]
    out = [f"# magnusd recovery with a {bj['bytes'] / GIB:.2f} GiB journal\n",
           f"{C.machine_line()}; `{' '.join(sys.argv[1:]) or '(defaults)'}`; total "
           f"{elapsed:.0f} s; /proc/loadavg at start {load0}, at end {load1}\n",
           f"Daemon and SDK: {code}.\n",
           f"Journal built by {args.clients} client processes (`track_this(step=i, loss=...)`, "
           f"`flush()` every {args.flush_every:,} calls) in {b['seconds']:.1f} s "
           f"({b['sent'] / b['seconds']:,.0f} events/s; run store caught up at "
           f"{b['caught_up_s']:.1f} s): {bj['bytes']:,} bytes ({bj['bytes'] / GIB:.3f} GiB) in "
           f"{bj['segments']} segments, {bj['events']:,} events "
           f"({bj['bytes'] / max(bj['events'], 1):.1f} bytes/event), {bj['last_seq']:,} records; "
           f"segment 1 still there: {b['segment1_kept']}; build daemon peak RSS "
           f"{b['hwm_mb']:.0f} MB.\n",
           "Seconds from `Popen(magnusd serve)`; median / max of "
           f"{args.reps}. 'recovered' = the daemon's log line `journal recovered in X s` (before "
           "the socket is bound). Peak RSS = VmHWM once caught up; CPU and bytes read = the "
           "daemon's, start to caught up. Journal columns as the case's last start found it.\n"]
    rows = []
    for case in ("empty", "clean", "kill9", "nocheckpoint", "damaged"):  # the brief's order
        rs = results.get(case, [])
        if not rs:
            continue
        j = rs[-1]["journal"]
        rows.append([
            CASE_TITLE[case].replace("4 clients", f"{args.clients} clients"),
            f"{j['bytes'] / GIB:.3f}", j["segments"],
            f"{j['events'] / 1e6:.1f} M" if j["events"] >= 0 else "-",
            med_max([r["replayed"] for r in rs], "{:,.0f}"),
            f"**{med_max([r['answer_s'] for r in rs])}**",
            caught_cell(rs),
            med_max([r["recovered_s"] for r in rs]),
            med_max([r["hwm_mb"] for r in rs], "{:.0f}"),
            med_max([r["cpu_s"] for r in rs]),
            med_max([r["read_gb"] for r in rs]),
        ])
    out.append(C.table(["case", "journal GiB", "segments", "events", "records replayed by the "
                        "run store", "answers `status` s", "run store caught up s",
                        "recovered (log) s", "peak RSS MB", "daemon CPU s",
                        "daemon read GB"], rows))
    details = []
    for r in results.get("kill9", []):
        details.append(f"kill9 #{r['rep'] + 1}: {r['streamed_events']:,} events streamed in "
                       f"{args.stream_s:g} s before SIGKILL; at the kill last seq "
                       f"{r['last_seq_at_kill']:,}, run store applied {r['applied_at_kill']:,}, "
                       f"checkpoint file {r['checkpoint_at_kill']:,}; after restart the run store "
                       f"applied {r['replayed']:,} record(s) (the duplicate check read "
                       f"{r['records_after_checkpoint']:,} before the socket was bound); "
                       f"answer {r['answer_s']:.2f} s, caught up {r['caught_s']:.2f} s, "
                       f"peak {r['hwm_mb']:.0f} MB (at answer {r['hwm_answer_mb']:.0f} MB), read "
                       f"{r['read_gb']:.2f} GB")
    for r in results.get("damaged", []):
        rec = r["recovery"]
        f = r["flip"]
        details.append(f"damaged #{r['rep'] + 1}: byte {f['offset']:,} of segment {f['segment']} "
                       f"({f['segment_bytes']:,} bytes) inverted; `status` journal.recovery: "
                       f"truncated_bytes {rec['truncated_bytes']:,}, salvaged_records "
                       f"{rec['salvaged_records']:,}, damaged_copies "
                       f"{[os.path.basename(p) for p in rec['damaged_copies']]}; last seq "
                       f"{r['last_seq_before']:,} before, {r['journal']['last_seq']:,} after; "
                       f"{'OK' if r['damage_ok'] else 'NOT REPORTED'}")
    for r in results.get("nocheckpoint", []):
        details.append(f"nocheckpoint #{r['rep'] + 1}: run files restored to "
                       f"{r['run_files_bytes']:,} bytes in {r['run_files']} files; "
                       f"{r['records_after_checkpoint']:,} records read before the socket was "
                       f"bound; answer {r['answer_s']:.2f} s (peak RSS then "
                       f"{r['hwm_answer_mb']:.0f} MB), caught up {r['caught_s']:.2f} s "
                       f"(peak {r['hwm_mb']:.0f} MB), read {r['read_gb']:.2f} GB")
    for case, rs in results.items():
        for r in rs:
            if r["stuck"]:
                details.append(f"{case} #{r['rep'] + 1}: the run store never caught up: "
                               f"`status` runlog.error `{r['stuck']}` for {STUCK_S:g} s, "
                               f"{r['stuck_at']} (not waited for longer)")
    for r in results.get("clean", []):
        details.append(f"clean #{r['rep'] + 1}: SIGTERM → exit {r['stop_s']:.2f} s (exit "
                       f"{r['stop_exit']}); answer {r['answer_s']:.2f} s")
    if details:
        out.append("\nDetails:\n" + "\n".join(f"- {x}" for x in details))
    if problems:
        out.append("\nDaemon log warnings and errors (first 3 per case):\n"
                   + "\n".join(f"- {x}" for x in problems))
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0, help="journal size to build, GiB")
    ap.add_argument("--reps", type=int, default=3, help="starts per case")
    ap.add_argument("--clients", type=int, default=4, help="client processes (one run each)")
    ap.add_argument("--stream-s", type=float, default=3.0,
                    help="kill9: seconds the clients stream before the SIGKILL")
    ap.add_argument("--flush-every", type=int, default=200_000,
                    help="each client calls flush() after this many track_this calls")
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated, of " + ",".join(CASES))
    ap.add_argument("--rev", default="",
                    help="run the daemon and the clients from this git revision (git archive "
                         "into the temp dir, PYTHONPATH) instead of the working tree")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data, daemon log)")
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if unknown := set(cases) - set(CASES):
        sys.exit(f"unknown case(s): {', '.join(sorted(unknown))}")
    C.check_python()
    free = shutil.disk_usage("/tmp").free
    need = int(args.gib * GIB * 2.5) + (2 << 30)  # journal, run files, replays, damaged copies
    if free < need:
        sys.exit(f"/tmp has {free / GIB:.1f} GiB free; this run needs about {need / GIB:.1f} GiB")
    load0 = loadavg()
    t_start = time.monotonic()
    root = C.short_tmpdir("mbrec")
    # The web viewer (on by default since 9bcee4f) on a port of its own, not the shared 7470.
    extra = {"MAGNUS_UI_LISTEN": "127.0.0.1:0"}
    if args.gib * GIB * 1.3 >= 10 * GIB:
        extra["MAGNUS_JOURNAL_MAX_BYTES"] = "0"
    if args.rev:
        commit = extract(args.rev, root / "src")
        extra["PYTHONPATH"] = f"{root / 'src' / 'daemon'}:{root / 'src' / 'sdk'}"
        code = f"`git archive {commit[:12]} daemon/magnusd sdk/magnus` (`--rev {args.rev}`)"
    else:
        code = f"the working tree ({tree_state()} at the start)"
    code += ", imported from " + code_origin(extra)
    d = C.Daemon(root, spool_dir=str(root / "spool"), extra_env=extra)
    Path(d.config).write_text(HOLD_CONFIG)
    run_ids = [f"bench-recovery-{os.urandom(2).hex()}-{k}" for k in range(args.clients)]
    results: dict[str, list[dict[str, Any]]] = {}
    problems: list[str] = []
    try:
        print(f"reference: empty data dir x{args.reps} ...", file=sys.stderr)
        results["empty"] = empty_reference(root, args.reps, extra)
        print(f"building a {args.gib:g} GiB journal with {args.clients} clients ...",
              file=sys.stderr)
        b = build(d, args, run_ids)
        print(f"  built {b['journal']['bytes'] / GIB:.3f} GiB in {b['seconds']:.0f} s",
              file=sys.stderr)
        state: dict[str, Any] = {"last_seq": b["journal"]["last_seq"]}
        for case in [c for c in CASES if c in cases]:
            results[case] = []
            for rep in range(args.reps):
                r = one_case(case, d, args, run_ids, rep, state)
                results[case].append(r)
                print(f"  {case} #{rep + 1}: answer {r['answer_s']:.2f} s, caught up "
                      f"{r['caught_s']:.2f} s{' STUCK: ' + r['stuck'] if r['stuck'] else ''}, "
                      f"peak {r['hwm_mb']:.0f} MB", file=sys.stderr)
                problems += [f"{case} #{rep + 1}: {x}" for x in r["log_problems"][:3]]
    finally:
        exit_code = d.stop(timeout=120)
        if exit_code not in (0, None):
            problems.append(f"final SIGTERM: daemon exited {exit_code}")
        C.remove_tree(root, args.keep)
    if not args.rev:
        code += f"; {tree_state()} at the end"
    text = report(args, b, results, load0, loadavg(), time.monotonic() - t_start, problems, code)
    print(text)
    path = C.write_report("recovery" + (f"-{args.rev}" if args.rev else ""), text)
    print(f"(written to {path})", file=sys.stderr)
    ok = (all(r.get("damage_ok", True) for r in results.get("damaged", []))
          and not any(r["stuck"] for rs in results.values() for r in rs))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
