"""One timed start of `magnusd serve` for benchmarks/recovery.py (see there): until `status`
answers and until the run store caught up with the journal, with the daemon's peak RSS, CPU and
bytes read over that span, and its own "journal recovered" log line.
"""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec

import _common as C

HOLD_TYPE = "recovery-bench-hold"
STUCK_S = 10.0  # a run-store error lasting this long ends the wait (it retries every 1 s)
RECOVERED = re.compile(r"journal recovered in ([\d.]+) s: last seq (\d+), (\d+) record\(s\) "
                       r"after the run-log checkpoint (\d+)")



class Journal(msgspec.Struct):
    bytes: int
    segments: int
    last_seq: int
    events: int  # -1 while the `hold` tracker is not in status



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
    d.start(wait=False)
    assert d.proc is not None
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
           "cpu_s": C.cpu_seconds(pid),
           "read_gb": int(C.proc_field(pid, "io", "rchar") or -1) / 1e9,
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
