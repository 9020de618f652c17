"""The case of benchmarks/rss.py: a daemon with the real trackers (or none), a client, and the
memory of the daemon, its tracker workers and their children sampled until caught up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import msgspec

import _baseline as B
import _common as C
from _tracker_data import PointsCheck, verify_run
from _trackers_cases import magnus_client, tracker_daemon

TARGET_MB = 60.0


def comm(pid: int) -> str:
    return C.proc_field(pid, "comm", "") or "?"


def viewer_state(log_text: str) -> str:
    """Whether the daemon's web viewer listened (its log says so; daemons before 9bcee4f have
    none)."""
    for ln in log_text.splitlines():
        if "viewer on " in ln:
            return "listening"
        if "viewer: cannot listen" in ln or ("viewer: " in ln and " WARNING " in ln):
            return "failed to listen"
    return "none"


class Mem(msgspec.Struct, kw_only=True):
    """One process's memory over the samples, kB: (VmRSS, VmHWM) first and last, largest VmRSS."""

    pid: int = 0
    comm: str = ""
    first: tuple[int, int] = (0, 0)
    last: tuple[int, int]
    max_rss: int


class Snapshot(msgspec.Struct):
    daemon: tuple[int, int]
    workers: dict[str, tuple[int, int]]
    children: dict[str, int]


class RssCase(C.Ended, kw_only=True):
    """One daemon (no tracker, or the three): memory of it, its workers and their children."""

    kinds: list[str]
    n: int
    run_id: str
    daemon_pid: int
    up_s: float
    after_start: Snapshot
    runlog_s: float
    caught_up_s: dict[str, float]
    end: Snapshot
    status_trackers: list[dict[str, Any]]
    daemon: Mem
    workers: dict[str, list[Mem]]
    children: dict[str, list[Mem]]
    samples: int
    client: dict[str, Any]
    viewer: str
    check: dict[str, PointsCheck] | None = None
    round: int = 1
    name: str = ""
    tot: tuple[int, int] = (0, 0)  # daemon + workers + children: VmRSS at the end, peaks


class Track:
    """Memory seen for one process over the samples: last (VmRSS, VmHWM), largest VmRSS."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.comm = comm(pid)
        self.first = (0, 0)
        self.last = (0, 0)
        self.max_rss = 0

    def sample(self) -> None:
        rss, hwm = C.mem_kb(self.pid)
        if rss == 0 and hwm == 0:
            return  # gone: keep what was seen
        if self.first == (0, 0):
            self.first = (rss, hwm)
        self.comm = comm(self.pid) or self.comm  # a child may exec after it was first seen
        self.last = (rss, hwm)
        self.max_rss = max(self.max_rss, rss)

    def mem(self) -> dict[str, Any]:
        return {"pid": self.pid, "comm": self.comm, "first": self.first, "last": self.last,
                "max_rss": self.max_rss}


class Memory:
    """Samples of the daemon, its workers (by tracker name) and the workers' descendants."""

    def __init__(self, daemon_pid: int) -> None:
        self.daemon = Track(daemon_pid)
        self.workers: dict[str, list[Track]] = {}  # every pid a tracker's worker had
        self.children: dict[str, dict[int, Track]] = {}
        self.samples = 0

    def sample(self, st: dict[str, Any]) -> None:
        self.samples += 1
        self.daemon.sample()
        for t in st.get("trackers", []):
            name, pid = t["name"], t.get("pid")
            if not pid:
                continue
            ws = self.workers.setdefault(name, [])
            if not ws or ws[-1].pid != pid:
                ws.append(Track(pid))
            ws[-1].sample()
            kids = self.children.setdefault(name, {})
            for k in C.descendants(pid):
                if k not in kids:
                    kids[k] = Track(k)
            for tr in kids.values():
                tr.sample()

    def snapshot(self) -> dict[str, Any]:
        return {"daemon": self.daemon.last,
                "workers": {n: ws[-1].last for n, ws in self.workers.items()},
                "children": {n: sum(t.last[0] for t in ks.values())
                             for n, ks in self.children.items()}}


def case(kinds: tuple[str, ...], n: int, every: float, do_verify: bool, keep: bool,
         pythonpath: str | None = None) -> RssCase:
    root = C.short_tmpdir("mbr")
    wb = root / "wb"
    extra = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(wb),
             "WANDB_CACHE_DIR": str(root / "wbcache"), "WANDB_CONFIG_DIR": str(root / "wbconf"),
             "WANDB_DATA_DIR": str(root / "wbdata")}
    if pythonpath:  # another revision of the daemon (its workers inherit the environment)
        extra["PYTHONPATH"] = pythonpath
    d = tracker_daemon(kinds, root, **extra)
    run_id = f"bench-rss-{os.urandom(3).hex()}"
    res: dict[str, Any] = {"kinds": kinds, "n": n, "run_id": run_id}
    proc: subprocess.Popen[str] | None = None
    try:
        t_start = time.monotonic()
        d.start()
        assert d.proc is not None
        mem = Memory(d.proc.pid)
        res["daemon_pid"] = d.proc.pid
        d.trackers_up(kinds, 180, 0.05)
        res["up_s"] = time.monotonic() - t_start
        proc = magnus_client(d, run_id, n)
        # The client's warm-up flush has reached every tracker: nothing in flight.
        base = C.wait_for(lambda: (s := d.status()) and all(
            C.tracker(s, k)["pending"] == 0 and C.tracker(s, k)["caught_up"] for k in kinds)
            and s, 120, 0.05, "trackers idle before the run")
        mem.sample(base)
        res["after_start"] = mem.snapshot()
        t_go = time.monotonic()
        C.send([proc], "go\n")
        f = d.follow(base, n, kinds, timeout=900, every=every, caught_up=True,
                     sample=mem.sample)
        assert f.runlog is not None
        res["runlog_s"] = f.runlog - t_go
        res["caught_up_s"] = {k: v - t_go for k, v in f.done.items()}
        mem.sample(f.st)
        res["end"] = mem.snapshot()
        res["status_trackers"] = f.st["trackers"]
        res["daemon"] = mem.daemon.mem()
        res["workers"] = {k: [w.mem() for w in ws] for k, ws in mem.workers.items()}
        res["children"] = {k: [c.mem() for c in ks.values()]
                           for k, ks in mem.children.items()}
        res["samples"] = mem.samples
        res["client"] = C.read_ready([proc], timeout=120)[0]
    finally:
        C.kill_all([proc])
        res.update(d.finish(None, keep, timeout=120))  # W&B: finish() writes the rest
        res["viewer"] = viewer_state(d.log_text(None))
    if do_verify:
        res["check"] = {k: verify_run(k, root, n, run_id) for k in kinds}
    C.remove_tree(root, keep)
    return msgspec.convert(res, RssCase)


def daemon_source(rev: str | None) -> tuple[str | None, str]:
    """(PYTHONPATH for the daemon or None, a description of the daemon code measured)."""
    if not rev:
        return None, f"working tree, {B.tree_state('daemon')}"
    commit, path = B.checkout(rev, C.short_tmpdir("mbrsrc"), "daemon/magnusd")
    where = B.import_origin({"PYTHONPATH": path}, "magnusd")[0]
    if not where.startswith(path):
        sys.exit(f"magnusd from {rev} did not take precedence: {where}")
    return path, f"`git archive {rev} daemon/magnusd` ({commit[:12]})"
