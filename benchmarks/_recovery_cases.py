"""The cases of benchmarks/recovery.py (see there for what is measured): building the journal,
timed starts after a clean stop, a kill -9, a damaged segment and a lost checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
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

import msgspec

import _common as C

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


class Journal(msgspec.Struct):
    bytes: int
    segments: int
    last_seq: int
    events: int  # -1 while the `hold` tracker is not in status


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


class Flip(msgspec.Struct):
    segment: int
    segment_bytes: int
    offset: int


class Start(msgspec.Struct, kw_only=True):
    """One timed start, and what the case did to the daemon and its data before it."""

    case: str
    rep: int = 0
    answer_s: float  # Popen -> `status` answers
    caught_s: float  # Popen -> run store caught up (NaN: stuck)
    stuck: str | None
    stuck_at: str
    hwm_answer_mb: float
    hwm_mb: float
    cpu_s: float
    read_gb: float
    checkpoint: int
    replayed: int
    applied_at_answer: int
    recovery: dict[str, Any]
    status: dict[str, Any]
    journal: Journal
    recovered_s: float
    records_after_checkpoint: int
    log_problems: list[str]
    stop_exit: int | None = None
    stop_s: float = float("nan")
    streamed_events: int = 0
    last_seq_at_kill: int = 0
    applied_at_kill: int = 0
    checkpoint_at_kill: int = 0
    last_seq_before: int = 0
    flip: Flip | None = None
    run_files_bytes: int = 0
    run_files: int = 0
    damage_ok: bool = True


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


loadavg = C.loadavg


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
    checkpoint = read_checkpoint(str(d.data))
    t0 = time.monotonic()
    with open(d.log, "ab") as logf:
        d.proc = subprocess.Popen(d.command, env=d.env, stdout=logf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True, cwd=d.root)
    pid = d.proc.pid
    end = t0 + timeout
    st = None
    while st is None:
        if d.proc.poll() is not None:
            raise RuntimeError(f"magnusd exited with {d.proc.returncode}:\n"
                               f"{d.log_text(None)[log_at:][-3000:]}")
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
           "cpu_s": C.cpu_seconds(pid), "read_gb": rchar(pid) / 1e9,
           "checkpoint": checkpoint, "replayed": st["runlog"]["applied_seq"] - checkpoint,
           "applied_at_answer": first["runlog"]["applied_seq"],
           "recovery": st["journal"]["recovery"], "status": st}
    if hold:
        st = C.wait_for(lambda: (s if events_held(s := d.status()) >= 0 else None), 60, 0.05,
                        "the `hold` tracker in status")
    res["journal"] = journal_info(st)
    new_log = d.log_text(None)[log_at:]
    m = RECOVERED.search(new_log)
    res["recovered_s"] = float(m.group(1)) if m else float("nan")
    res["records_after_checkpoint"] = int(m.group(3)) if m else -1
    res["log_problems"] = [ln for ln in new_log.splitlines()
                           if (" WARNING " in ln or " ERROR " in ln or ln.startswith("Traceback"))
                           and HOLD_TYPE not in ln]  # the `hold` tracker's error is expected
    return res


def start_clients(d: C.Daemon, run_ids: list[str], first_step: int, every: int,
                  cspool: str) -> list[subprocess.Popen[str]]:
    return d.start_clients(CLIENT, [str(first_step), str(every)], run_ids,
                           MAGNUS_SPOOL_DIR=cspool)


def kill_procs(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()  # our own child, by pid
    for p in procs:
        p.wait()


def build(d: C.Daemon, args: argparse.Namespace, run_ids: list[str]) -> Built:
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


def med_max(vals: list[float], fmt: str = "{:.2f}") -> str:
    if not vals:
        return "-"
    return f"{fmt.format(statistics.median(vals))} / {fmt.format(max(vals))}"


def caught_cell(rs: list[Start]) -> str:
    ok = [r.caught_s for r in rs if not r.stuck]
    stuck = [r for r in rs if r.stuck]
    cell = f"**{med_max(ok)}**" if ok else ""
    if stuck:
        cell += (" — " if cell else "") + (f"**never: {len(stuck)} of {len(rs)} stuck** "
                                           f"(`{stuck[0].stuck}`)")
    return cell




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
        commit = extract(args.rev, root / "src")
        extra["PYTHONPATH"] = f"{root / 'src' / 'daemon'}:{root / 'src' / 'sdk'}"
        code = f"`git archive {commit[:12]} daemon/magnusd sdk/magnus` (`--rev {args.rev}`)"
    else:
        code = f"the working tree ({tree_state()} at the start)"
    return extra, code + ", imported from " + code_origin(extra)
