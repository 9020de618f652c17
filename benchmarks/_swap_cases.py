"""The cases of benchmarks/swap.py: tracker hot swap latency and `file` tracker fan-out (see
swap.py for what is measured), each returning a Struct; the `file` tracker's side is in
_file_tracker.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import msgspec

import _common as C
from _file_tracker import (
    FileCheck,
    Replay,
    exactly_once,
    first_line,
    read_lines,
    reloaded,
    replay,
    save_config,
    wait_delivered,
)

STEADY = str(C.HERE / "_steady_client.py")
INGEST = str(C.HERE / "_ingest_client.py")


class Swap(msgspec.Struct, kw_only=True):
    """One config change: seconds from the `os.replace` to each sign of it."""

    kind: str  # "path" or "new name"
    tracker: str
    first_line_s: float  # replace -> the first complete line in the new tracker's file
    loaded_s: float  # replace (wall) -> status config.loaded_at
    first_ts_s: float  # replace (wall) -> that first line's `timestamp`
    config_error: str | None
    state: str | None


class SwapCase(C.Ended, kw_only=True):
    rate: float
    run_id: str
    swaps: list[Swap]
    events: int
    flush_ok: bool
    max_burst: int
    achieved_rate: float
    trackers_end: list[dict[str, Any]]
    main_check: FileCheck
    daemon_rss_kb: tuple[int, int]
    client_stderr: list[str] = msgspec.field(default_factory=list)


class FanoutCase(C.Ended, kw_only=True):
    clients: int
    events: int
    tracker: bool
    round: int = 1
    worker_cpu_s: float
    worker_rss_kb: dict[str, tuple[int, int]]
    ingest_s: float
    runlog_s: float
    client_loop_s: float
    flush_ok: bool
    events_total: int
    duplicates_skipped: int | None
    daemon_cpu_s: float
    max_pending: int
    ingest_eps: float
    runlog_eps: float
    fan_s: float = float("nan")
    fan_lag_s: float = float("nan")
    fan_eps: float = float("nan")
    delivered: int = 0
    tracker_errors: int = 0
    tracker_last_error: str | None = None
    restarts: int = 0
    check: FileCheck | None = None
    replay: Replay | None = None
    rss_kb: tuple[int, int]
    client_stderr: list[str] = msgspec.field(default_factory=list)


# -- swap latency -------------------------------------------------------------------------


def case_swap(rate: float, swaps: int, keep: bool) -> SwapCase:
    root = C.short_tmpdir("mbs")
    outd = root / "out"
    d = C.Daemon(root, spool_dir=str(root / "spool"))
    run_id = f"bench-swap-{os.urandom(3).hex()}"
    res: dict[str, Any] = {"rate": rate, "run_id": run_id, "swaps": []}
    procs: list[subprocess.Popen[str]] = []
    main_paths = [outd / "main_0.jsonl"]
    save_config(d.config, [{"name": "main", "path": main_paths[0]}])
    try:
        d.start()
        d.trackers_up(["main"], 10)
        procs = d.start_clients(STEADY, [str(rate)], [run_id],
                                  MAGNUS_SPOOL_DIR=str(root / "cspool"))
        C.send(procs, "go\n")
        first_line(main_paths[0], 10)  # flowing
        time.sleep(0.5)
        extra: dict[str, Any] | None = None
        plan = ["path"] * swaps + ["new name"] * swaps
        for k, kind in enumerate(plan, 1):
            if kind == "path":
                new = outd / f"main_{k}.jsonl"
                main_paths.append(new)
                trackers = [{"name": "main", "path": new}]
                name = "main"
            else:
                extra = {"name": f"extra_{k}", "path": outd / f"extra_{k}.jsonl"}
                trackers = [{"name": "main", "path": main_paths[-1]}, extra]
                new, name = extra["path"], extra["name"]
            before = d.status()["config"]["loaded_at"]
            t_rep, w_rep = save_config(d.config, trackers)
            t_seen, line = first_line(new, 15)
            ev = json.loads(line)
            st = reloaded(d, before, 5)
            t = C.tracker(st, name)
            res["swaps"].append({
                "kind": kind, "tracker": name,
                "first_line_s": t_seen - t_rep,
                "loaded_s": st["config"]["loaded_at"] - w_rep,
                "first_ts_s": ev["timestamp"] - w_rep,
                "config_error": st["config"]["error"],
                "state": t["state"] if t else None,
            })
            print(f"  swap {k:2d} ({kind}): first line after {t_seen - t_rep:.3f} s",
                  file=sys.stderr)
            time.sleep(0.3)  # let the previous change settle (and its debounce window pass)
        C.send(procs, "stop\n")
        outs = C.read_ready(procs)
        res["client_stderr"] = [o["stderr"][:300] for o in outs if o["stderr"]]
        n = outs[0]["n"]
        res.update(events=n, flush_ok=outs[0]["flush_ok"], max_burst=outs[0]["max_burst"],
                   achieved_rate=n / (outs[0]["t_last"] - outs[0]["t_first"]))
        names = ["main"] + ([extra["name"]] if extra else [])
        _, st = wait_delivered(d, names, n, 60)
        res["trackers_end"] = st["trackers"]
        lines, seen, keys = read_lines(main_paths)
        res["main_check"] = {"lines": lines, "files": len(main_paths), "keys": sorted(keys),
                             **exactly_once(seen, {run_id: n})}
        res["daemon_rss_kb"] = d.rss_kb()
    finally:
        C.kill_all(procs)
        res.update(d.finish(root, keep))
    return msgspec.convert(res, SwapCase)


# -- fan-out throughput -------------------------------------------------------------------


def case_fanout(nclients: int, per: int, with_tracker: bool, keep: bool) -> FanoutCase:
    total = per * nclients
    root = C.short_tmpdir("mbf")
    outd = root / "out"
    d = C.Daemon(root, spool_dir=str(root / "spool"))
    tag = os.urandom(2).hex()
    run_ids = [f"bench-fan-{tag}-{k}" for k in range(nclients)]
    res: dict[str, Any] = {"clients": nclients, "events": total, "tracker": with_tracker}
    procs: list[subprocess.Popen[str]] = []
    fan_path = outd / "fan.jsonl"
    if with_tracker:
        save_config(d.config, [{"name": "main", "path": fan_path}])
    try:
        d.start()
        assert d.proc is not None
        if with_tracker:
            d.trackers_up(["main"], 10)
        procs = d.start_clients(INGEST, [str(per)], run_ids,
                                  MAGNUS_SPOOL_DIR=str(root / "cspool"))
        base = d.status()
        cpu0 = C.cpu_seconds(d.proc.pid)
        # Each tracker runs in its own worker process: its CPU is not the daemon's.
        wpid0 = d.workers(base)
        wcpu0 = {n: C.cpu_seconds(pid) for n, pid in wpid0.items()}
        C.send(procs, "go\n")
        names = ["main"] if with_tracker else []
        f = d.follow(base, total, names, timeout=300)
        st, t_runlog, t_fan = f.st, f.runlog, f.done.get("main")
        assert t_runlog is not None
        cpu1 = C.cpu_seconds(d.proc.pid)
        wpid1 = d.workers(st)
        # A worker restarted meanwhile (new pid): its predecessor's CPU is lost, so NaN.
        res["worker_cpu_s"] = sum(C.cpu_seconds(pid) - wcpu0[n] if wpid0.get(n) == pid
                                  else float("nan") for n, pid in wpid1.items())
        res["worker_rss_kb"] = {n: C.mem_kb(pid) for n, pid in wpid1.items()}
        outs = C.read_ready(procs)
        res["client_stderr"] = [o["stderr"][:300] for o in outs if o["stderr"]]
        t_first = min(o["t_first"] for o in outs)
        t_flushed = max(o["t_flushed"] for o in outs)
        res.update(
            ingest_s=t_flushed - t_first, runlog_s=t_runlog - t_first,
            client_loop_s=max(o["t_loop"] - o["t_first"] for o in outs),
            flush_ok=all(o["flush_ok"] for o in outs),
            events_total=st["events_total"] - base["events_total"],
            duplicates_skipped=st.get("duplicates_skipped"),
            daemon_cpu_s=cpu1 - cpu0, max_pending=f.max_pending.get("main", 0),
        )
        if with_tracker:
            assert t_fan is not None
            t = C.tracker(st, "main")
            res.update(fan_s=t_fan - t_first, fan_lag_s=t_fan - t_flushed,
                       delivered=t["delivered"], tracker_errors=t["errors"],
                       tracker_last_error=t["last_error"], restarts=t["restarts"])
            lines, seen, _ = read_lines([fan_path])
            res["check"] = {"lines": lines, **exactly_once(seen, dict.fromkeys(run_ids, per))}
            res["replay"] = replay(d, fan_path, outd / "replay.jsonl", dict.fromkeys(run_ids, per))
        res["rss_kb"] = d.rss_kb()
    finally:
        C.kill_all(procs)
        res.update(d.finish(root, keep, timeout=120))
    res["ingest_eps"] = total / res["ingest_s"]
    res["runlog_eps"] = total / res["runlog_s"]
    if with_tracker:
        res["fan_eps"] = total / res["fan_s"]
    return msgspec.convert(res, FanoutCase)

