"""The case of benchmarks/rss.py: a daemon with the real trackers (or none), a client, and the
memory of the daemon, its tracker workers and their children sampled until caught up.
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
from _trackers_cases import TAG, PointsCheck, tracker, tracker_yaml, verify

CLIENT = str(C.HERE / "_trackers_client.py")
KINDS = ("mlflow", "wandb", "tensorboard")
LABEL = {"mlflow": "MLflow (sqlite)", "wandb": "W&B (offline)", "tensorboard": "TensorBoard"}
TARGET_MB = 60.0


loadavg = C.loadavg


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children of all its threads, recursively)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


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


class RssCase(msgspec.Struct, kw_only=True):
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
    daemon_exit: int
    daemon_stop_s: float
    daemon_log_problems: list[str]
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
            for k in descendants(pid):
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
    d = C.Daemon(root, spool_dir=str(root / "spool"), extra_env=extra)
    if kinds:
        d.config.write_text("experiment_tracker:\n" + "".join(tracker_yaml(k, root)
                                                                   for k in kinds))
    run_id = f"bench-rss-{os.urandom(3).hex()}"
    res: dict[str, Any] = {"kinds": kinds, "n": n, "run_id": run_id}
    proc: subprocess.Popen[str] | None = None
    try:
        t_start = time.monotonic()
        d.start()
        assert d.proc is not None
        mem = Memory(d.proc.pid)
        res["daemon_pid"] = d.proc.pid
        st = C.wait_for(lambda: (s := d.status()) and all(
            tracker(s, k).get("state") == "running" and tracker(s, k).get("pid")
            for k in kinds) and s, 180, 0.05, f"trackers {kinds} running")
        res["up_s"] = time.monotonic() - t_start
        env = C.clean_env(MAGNUS_SOCKET=d.sock, MAGNUS_DATA_DIR=str(d.data),
                          MAGNUS_CONFIG=str(d.config), MAGNUS_RUN_ID=run_id, MAGNUS_RUN_TAG=TAG,
                          MAGNUS_SPOOL_DIR=str(root / "cspool"))
        proc = subprocess.Popen([C.PY, CLIENT, "magnus", str(n)], env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"client not ready: {line!r}")
        # The client's warm-up flush has reached every tracker: nothing in flight.
        base = C.wait_for(lambda: (s := d.status()) and all(
            tracker(s, k)["pending"] == 0 and tracker(s, k)["caught_up"] for k in kinds) and s,
            120, 0.05, "trackers idle before the run")
        mem.sample(base)
        res["after_start"] = mem.snapshot()
        b_total = base["events_total"]
        b_deliv = {k: tracker(base, k)["delivered"] for k in kinds}
        t_go = time.monotonic()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        done: dict[str, float] = {}
        t_runlog = None
        end = t_go + 900
        while True:
            st = d.status()
            mem.sample(st)
            now = time.monotonic()
            journaled = st["events_total"] - b_total >= n
            if t_runlog is None and journaled and (st["runlog"]["applied_seq"]
                                                   == st["journal"]["last_seq"]):
                t_runlog = now
            for k in kinds:
                t = tracker(st, k)
                if (k not in done and journaled and t.get("caught_up") and t["pending"] == 0
                        and t["delivered"] - b_deliv[k] >= n):
                    done[k] = now
            if t_runlog is not None and len(done) == len(kinds):
                break
            if now > end:
                raise TimeoutError(f"not caught up within 900 s: "
                                   f"{json.dumps(st['trackers'])}\n{d.log_text()[-3000:]}")
            time.sleep(every)
        res["runlog_s"] = t_runlog - t_go
        res["caught_up_s"] = {k: v - t_go for k, v in done.items()}
        mem.sample(st)
        res["end"] = mem.snapshot()
        res["status_trackers"] = st["trackers"]
        res["daemon"] = {"first": mem.daemon.first, "last": mem.daemon.last,
                         "max_rss": mem.daemon.max_rss}
        res["workers"] = {
            k: [{"pid": w.pid, "comm": w.comm, "first": w.first, "last": w.last,
                 "max_rss": w.max_rss} for w in ws] for k, ws in mem.workers.items()}
        res["children"] = {
            k: [{"pid": c.pid, "comm": c.comm, "last": c.last, "max_rss": c.max_rss}
                for c in ks.values()] for k, ks in mem.children.items()}
        res["samples"] = mem.samples
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"client exited {proc.returncode}: {err[-2000:]}")
        res["client"] = json.loads(out.strip().splitlines()[-1])
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()  # our own child, by pid
            proc.wait()
        res["daemon_exit"] = d.stop(timeout=120, check=False)  # W&B: finish() writes the rest
        res["daemon_stop_s"] = d.stop_s
        res["daemon_log_problems"] = d.log_problems()
        res["viewer"] = viewer_state(d.log_text(None))
    if do_verify:
        res["check"] = {}
        for k in kinds:
            if k == "mlflow":
                chk = verify(k, root / "mlflow.db", n, magnus_run_id=run_id)
            elif k == "tensorboard":
                from magnusd._runstore import run_dirname

                chk = verify(k, root / "tb" / run_dirname(run_id), n)
            else:
                from magnusd.trackers.wandb import wandb_run_id

                chk = verify(k, wb, n, wandb_id=wandb_run_id(run_id),
                             step_key="magnus/step/loss")
            res["check"][k] = chk
    C.remove_tree(root, keep)
    return msgspec.convert(res, RssCase)



def daemon_source(rev: str | None) -> tuple[str | None, str]:
    """(PYTHONPATH for the daemon or None, a description of the daemon code measured)."""
    repo = str(C.HERE.parent)

    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", repo, *a], capture_output=True, text=True,
                              timeout=60).stdout.strip()

    if not rev:
        dirty = git("status", "--porcelain", "--", "daemon")
        return None, (f"working tree at {git('rev-parse', '--short', 'HEAD')}"
                      + (" with uncommitted changes under daemon/" if dirty else
                         " (daemon/ clean)"))
    dest = C.short_tmpdir("mbrsrc")
    arch = subprocess.run(["git", "-C", repo, "archive", rev, "daemon/magnusd"],
                          capture_output=True, timeout=120, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch.stdout, check=True, timeout=120)
    path = str(dest / "daemon")
    env = C.clean_env(PYTHONPATH=path)
    where = subprocess.run([C.PY, "-c", "import magnusd; print(magnusd.__file__)"], env=env,
                           capture_output=True, text=True, timeout=60).stdout.strip()
    if not where.startswith(path):
        sys.exit(f"magnusd from {rev} did not take precedence: {where}")
    return path, f"`git archive {rev} daemon/magnusd` ({git('rev-parse', '--short', rev)})"
