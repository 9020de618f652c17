"""The cases of benchmarks/recovery.py (see there for what is measured): building the journal,
then what each case does to the daemon and its data before a timed start (_recovery_start.py):
a clean stop, a kill -9, a damaged segment, a lost checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

import _baseline as B
import _common as C
from _recovery_start import HOLD_TYPE, Journal, Start, journal_info, timed_start

CLIENT = str(C.HERE / "_recovery_client.py")
GIB = 1 << 30
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


class Built(msgspec.Struct, kw_only=True):
    """The journal the clients wrote before the timed starts."""

    seconds: float
    caught_up_s: float
    sent: int
    flush_ok: bool
    flushes: int
    journal: Journal
    segment1_kept: bool
    hwm_mb: float
    events_total: int



def build(d: C.Daemon, args: argparse.Namespace, run_ids: list[str]) -> Built:
    target = int(args.gib * GIB)
    d.start()
    # the config is acted on after the daemon answers (its worker fails to load the type)
    hold = C.wait_for(lambda: [t for t in d.status()["trackers"] if t["name"] == "hold"], 60,
                      0.05, "the `hold` tracker in status")
    if hold[0]["state"] != "disabled" or hold[0]["cursor"] != 0:
        raise RuntimeError(f"the `hold` tracker is not disabled at cursor 0: {hold}")
    procs = d.start_clients(CLIENT, ["0", str(args.flush_every)], run_ids,
                            MAGNUS_SPOOL_DIR=str(d.root / "cspool"))
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
        outs = C.read_ready(procs)
    finally:
        C.kill_all(procs)
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
    return msgspec.convert(res, Built)


def run_files(data: str | Path) -> dict[str, int]:
    out = {}
    for dirpath, _, names in os.walk(os.path.join(data, "runs")):
        for n in names:
            p = os.path.join(dirpath, n)
            out[p] = os.path.getsize(p)
    return out


def restore_run_files(sizes: dict[str, int], data: str | Path) -> None:
    """Truncate the run files back to `sizes` (they are append-only), drop newer files."""
    for p in run_files(data):
        if p not in sizes:
            os.unlink(p)
    for p, size in sizes.items():
        os.truncate(p, size)


def flip_middle_byte(journal_dir: str | Path) -> dict[str, Any]:
    from magnusd._journal import list_segments

    first = list_segments(str(journal_dir))[-1]
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
             rep: int, state: dict[str, Any]) -> Start:
    timeout = 120 + 600 * args.gib
    info: dict[str, Any] = {"case": case, "rep": rep}
    if case == "clean":
        info["stop_exit"] = d.stop(timeout=120, check=False)
        info["stop_s"] = d.stop_s
    elif case == "kill9":
        first = 100_000_000 * (rep + 1)  # the runs continue, at steps of their own
        procs = d.start_clients(CLIENT, [str(first), str(args.flush_every)], run_ids,
                                MAGNUS_SPOOL_DIR=str(d.root / "cspool"))
        try:
            before = d.status()
            C.send(procs, "go\n")
            time.sleep(args.stream_s)
            st = d.status()
            assert d.proc is not None
            os.kill(d.proc.pid, signal.SIGKILL)  # our own daemon, by pid
            d.proc.wait()
        finally:
            C.kill_all(procs)
        info["streamed_events"] = st["events_total"] - before["events_total"]
        info["last_seq_at_kill"] = st["journal"]["last_seq"]
        info["applied_at_kill"] = st["runlog"]["applied_seq"]
        from magnusd._runstore import read_checkpoint

        info["checkpoint_at_kill"] = read_checkpoint(str(d.data))
    elif case == "damaged":
        info["stop_exit"] = d.stop(timeout=120, check=False)
        info["stop_s"] = d.stop_s
        info["last_seq_before"] = state["last_seq"]
        info["flip"] = flip_middle_byte(os.path.join(d.data, "journal"))
    elif case == "nocheckpoint":
        info["stop_exit"] = d.stop(timeout=120, check=False)
        info["stop_s"] = d.stop_s
        if "run_sizes" not in state:
            state["run_sizes"] = run_files(d.data)
        else:
            restore_run_files(state["run_sizes"], d.data)
        # missing when the previous start never wrote one (a run store that failed)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(d.data, "runlog.checkpoint"))
        info["run_files_bytes"] = sum(state["run_sizes"].values())
        info["run_files"] = len(state["run_sizes"])
    r = timed_start(d, timeout)
    r.update(info)
    state["last_seq"] = r["journal"]["last_seq"]
    if case == "damaged":
        rec = r["recovery"]
        r["damage_ok"] = (rec["truncated_bytes"] > 0 and len(rec["damaged_copies"]) == 1
                          and os.path.exists(rec["damaged_copies"][0]))
    return msgspec.convert(r, Start)


def empty_reference(root: Path, reps: int, extra_env: dict[str, str]) -> list[Start]:
    out: list[Start] = []
    for _ in range(reps):
        e = C.Daemon(root / "empty", extra_env=extra_env)
        shutil.rmtree(e.data, ignore_errors=True)
        try:
            out.append(msgspec.convert(timed_start(e, 60, hold=False) | {"case": "empty"}, Start))
        finally:
            e.stop(check=False)
    return out


def setup(args: argparse.Namespace, root: Path) -> tuple[dict[str, str], str]:
    """The daemon's extra environment (--rev: its code from `git archive`), and what it runs."""
    free = shutil.disk_usage("/tmp").free
    need = int(args.gib * GIB * 2.5) + (2 << 30)  # journal, run files, replays, damaged copies
    if free < need:
        sys.exit(f"/tmp has {free / GIB:.1f} GiB free; this run needs about {need / GIB:.1f} GiB")
    # The web viewer (on by default since 9bcee4f) on a port of its own, not the shared 7470.
    extra = {"MAGNUS_UI_LISTEN": "127.0.0.1:0"}
    if args.gib * GIB * 1.3 >= 10 * GIB:
        extra["MAGNUS_JOURNAL_MAX_BYTES"] = "0"
    if args.rev:
        commit, extra["PYTHONPATH"] = B.checkout(args.rev, root / "src", "daemon/magnusd",
                                                 "sdk/magnus")
        code = f"`git archive {commit[:12]} daemon/magnusd sdk/magnus` (`--rev {args.rev}`)"
    else:
        code = f"the working tree ({B.tree_state('daemon', 'sdk')} at the start)"
    origin = B.import_origin(extra, "magnusd", "magnus")
    return extra, code + ", imported from " + " and ".join(f"`{p}`" for p in origin)


def run_cases(d: C.Daemon, args: argparse.Namespace, run_ids: list[str], b: Built,
              cases: list[str], results: dict[str, list[Start]], problems: list[str]) -> None:
    """The `cases` in CASES' order, --reps times each, into `results`; log lines in `problems`."""
    state: dict[str, Any] = {"last_seq": b.journal.last_seq}
    for case in [c for c in CASES if c in cases]:
        results[case] = []
        for rep in range(args.reps):
            r = one_case(case, d, args, run_ids, rep, state)
            results[case].append(r)
            print(f"  {case} #{rep + 1}: answer {r.answer_s:.2f} s, caught up "
                  f"{r.caught_s:.2f} s{' STUCK: ' + r.stuck if r.stuck else ''}, "
                  f"peak {r.hwm_mb:.0f} MB", file=sys.stderr)
            problems += [f"{case} #{rep + 1}: {x}" for x in r.log_problems[:3]]
