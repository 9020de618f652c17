"""Memory: the daemon with the real trackers configured, and each tracker's worker process
(design: daemon RSS with MLflow, W&B and TensorBoard configured ≤ 60 MB, workers reported
separately).

    .venv/bin/python benchmarks/rss.py [--n 200000] [--rounds 1] [--cases none,trackers] [--every 0.2] [--daemon-rev REV] [--no-verify] [--keep]

Two cases in one run, each a fresh private `magnusd serve` (socket, data directory, sqlite db,
W&B and TensorBoard directories under /tmp; the daemon's working directory is that temp dir):

- `none`: no tracker configured (the reference);
- `trackers`: MLflow (`sqlite:///<tmp>/mlflow.db`), W&B (`mode: offline`, `dir: <tmp>/wb`,
  and WANDB_MODE=offline, WANDB_DIR / _CACHE_DIR / _CONFIG_DIR / _DATA_DIR under the temp dir
  in the daemon's environment, which its workers inherit) and TensorBoard (`log_dir`).

The daemon is started, the trackers' workers come up (`status`: every tracker `running`), then
one client process (benchmarks/_trackers_client.py) sends `track_this(loss=1/i, step=i)` for
i = 1..N as fast as it can and `flush()`es. Until every tracker is `caught_up` with `pending` 0
and N more events delivered (and the run log caught up with the journal), every --every
seconds: `status` (for the workers' pids) and /proc/<pid>/status (VmRSS, VmHWM) of the daemon,
each worker and each worker's descendants (W&B's `wandb-core`). Reported: the daemon's VmRSS
after start (trackers loaded, nothing sent), at the end, the largest VmRSS sampled and VmHWM
(the kernel's peak over the process's life); the same for each worker (the worker whose pid
`status` showed; a restart is reported, its predecessor's peak is then the largest seen), and
the status' own `rss_mb` as a cross-check. The daemon's web viewer (on by default since
9bcee4f) listens on a free port of its own (benchmarks/_common.py); the report says whether it
did. Afterwards every point is read back from MLflow,
TensorBoard and the W&B offline file (as benchmarks/trackers.py does), unless --no-verify.
--rounds repeats the pair (no tracker, then the three), each a fresh daemon: the daemon's peak
moves by several MB from run to run with the ingest's timing.

--daemon-rev REV runs the daemon and its workers from `git archive REV daemon/magnusd`
(extracted to a temp dir, first on PYTHONPATH; the client's SDK stays the working tree's), to
tell the trackers' cost from other changes to the daemon; the report names the code measured.

Results: markdown on stdout and in benchmarks/out/rss.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as C
from trackers import TAG, tracker, tracker_yaml, verify

CLIENT = str(C.HERE / "_trackers_client.py")
KINDS = ("mlflow", "wandb", "tensorboard")
LABEL = {"mlflow": "MLflow (sqlite)", "wandb": "W&B (offline)", "tensorboard": "TensorBoard"}
TARGET_MB = 60.0


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


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
        if "viewer: cannot listen" in ln or "viewer: " in ln and " WARNING " in ln:
            return "failed to listen"
    return "none"


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
         pythonpath: str | None = None) -> dict[str, Any]:
    root = C.short_tmpdir("mbr")
    wb = root / "wb"
    extra = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(wb),
             "WANDB_CACHE_DIR": str(root / "wbcache"), "WANDB_CONFIG_DIR": str(root / "wbconf"),
             "WANDB_DATA_DIR": str(root / "wbdata")}
    if pythonpath:  # another revision of the daemon (its workers inherit the environment)
        extra["PYTHONPATH"] = pythonpath
    d = C.Daemon(root, spool_dir=str(root / "spool"), extra_env=extra, cwd=str(root))
    if kinds:
        Path(d.config).write_text("experiment_tracker:\n" + "".join(tracker_yaml(k, root)
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
        env = C.clean_env(MAGNUS_SOCKET=d.sock, MAGNUS_DATA_DIR=d.data, MAGNUS_CONFIG=d.config,
                          MAGNUS_RUN_ID=run_id, MAGNUS_RUN_TAG=TAG,
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
        res["daemon_exit"] = d.stop(timeout=120)  # W&B: finish() writes the rest of the run
        res["daemon_stop_s"] = d.stop_s
        res["daemon_log_problems"] = d.log_problems()
        res["viewer"] = viewer_state(d.log_text())
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
    return res


# -- report -------------------------------------------------------------------------------


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def landed(chk: dict[str, Any] | None) -> str:
    if chk is None:
        return "not checked"
    if chk.get("error"):
        return f"FAIL ({chk['error']})"
    if chk["ok"]:
        return f"{chk['points']:,} ✓"
    return (f"FAIL: {chk['points']:,} points, missing {chk['missing']}, dup "
            f"{chk['duplicates']}, bad {chk['bad_values']}")


def report(args: argparse.Namespace, results: list[dict[str, Any]], src: str, load0: str,
           load1: str, elapsed: float) -> str:
    out = [f"# magnusd memory: the daemon with the real trackers, and their workers\n\n"
           f"{C.machine_line()}; `{' '.join(sys.argv[1:]) or '(defaults)'}`; total "
           f"{elapsed:.0f} s; /proc/loadavg at start {load0}, at end {load1}; daemon code: "
           f"{src}\n",
           f"N = {args.n:,} events (`loss` = 1/i, steps 1..N, one run, one client process as "
           f"fast as it can), then until every tracker is caught up; /proc/<pid>/status "
           f"sampled every {args.every:g} s. MB = MiB. Peak = VmHWM (the kernel's high-water "
           f"mark over the whole process life, start-up included). Rounds alternate: no "
           f"tracker, then the three trackers, each a fresh daemon.\n"]
    problems: list[str] = []
    rows: list[list[Any]] = []
    for r in results:
        dm = r["daemon"]
        peak = dm["last"][1]
        rows.append([
            r["round"],
            "none (reference)" if not r["kinds"] else ", ".join(LABEL[k] for k in r["kinds"]),
            r.get("viewer", "?"), f"{r['n']:,}", mb(r["after_start"]["daemon"][0]),
            mb(dm["last"][0]), mb(dm["max_rss"]), f"**{mb(peak)}**",
            f"{r['runlog_s']:.2f}",
            ("OK" if peak / 1024 <= TARGET_MB else "OVER") if r["kinds"] else "-"])
    out.append("## the daemon process\n")
    out.append(C.table(["round", "trackers configured", "web viewer", "events",
                        "VmRSS after start MB",
                        "VmRSS at end MB", "largest VmRSS sampled MB", "peak VmHWM MB",
                        "run log caught up s", f"peak ≤ {TARGET_MB:g} MB"], rows))
    none = [r for r in results if not r["kinds"]]
    trk = [r for r in results if r["kinds"]]
    if none and trk:
        def rng(rs: list[dict[str, Any]], i: int) -> str:
            v = sorted(r["daemon"]["last"][i] for r in rs)
            return f"{mb(v[0])}–{mb(v[-1])}" if len(v) > 1 else mb(v[0])

        out.append(f"\nDaemon peak (VmHWM) with the three trackers {rng(trk, 1)} MB, with no "
                   f"tracker {rng(none, 1)} MB; VmRSS at the end {rng(trk, 0)} vs "
                   f"{rng(none, 0)} MB.\n")
    if trk:
        out.append("## each tracker's worker process (`python -m magnusd._worker`)\n\n"
                   "`status` rss_mb = the daemon's own reading at the end (it samples each "
                   "worker every second). Children = the worker's descendant processes "
                   "(W&B's `wandb-core`), VmRSS at the end / largest sampled / peak. Events/s "
                   "= N / (caught up − go).\n")
    rows = []
    for tr in trk:
        tot_last = tr["daemon"]["last"][0]
        tot_peak = tr["daemon"]["last"][1]
        for k in tr["kinds"]:
            ws = tr["workers"].get(k, [])
            st = tracker({"trackers": tr["status_trackers"]}, k)
            w = ws[-1] if ws else None
            kids = [c for c in tr["children"].get(k, []) if c["last"] != (0, 0)]
            kid_s = ("; ".join(f"{c['comm']} {mb(c['last'][0])} / {mb(c['max_rss'])} / "
                               f"{mb(c['last'][1])}" for c in kids) or "-")
            if w:
                tot_last += w["last"][0] + sum(c["last"][0] for c in kids)
                tot_peak += w["last"][1] + sum(c["last"][1] for c in kids)
            chk = tr["check"].get(k) if "check" in tr else None
            rows.append([
                tr["round"], LABEL[k], w["pid"] if w else "-",
                mb(tr["after_start"]["workers"].get(k, (0, 0))[0]),
                mb(w["last"][0]) if w else "-", mb(max(x["max_rss"] for x in ws)) if ws else "-",
                f"**{mb(w['last'][1])}**" if w else "-", st.get("rss_mb"), kid_s,
                f"{tr['caught_up_s'].get(k, float('nan')):.1f}",
                f"{tr['n'] / tr['caught_up_s'][k]:,.0f}" if k in tr["caught_up_s"] else "-",
                st.get("restarts"), st.get("errors"), st.get("dead_lettered"),
                landed(chk)])
            if len(ws) > 1:
                problems.append(f"round {tr['round']} {k}: the worker's pid changed during the "
                                f"run: {[x['pid'] for x in ws]}")
            if st.get("restarts") or st.get("errors") or st.get("dead_lettered"):
                problems.append(f"round {tr['round']} {k}: restarts {st.get('restarts')}, "
                                f"errors {st.get('errors')}, dead-lettered "
                                f"{st.get('dead_lettered')}, last_error "
                                f"{st.get('last_error')!r}")
            if chk is not None and not chk.get("ok"):
                problems.append(f"round {tr['round']} {k}: data did not land right: {chk}")
        tr["tot"] = (tot_last, tot_peak)
    if trk:
        out.append(C.table(["round", "tracker", "worker pid", "VmRSS after start MB",
                            "VmRSS at end MB", "largest VmRSS sampled MB", "peak VmHWM MB",
                            "status rss_mb", "children: comm VmRSS / largest / peak MB",
                            "caught up s", "events/s", "restarts", "errors", "dead-lettered",
                            "landed"], rows))
        out.append("\nAll processes together (daemon + workers + children; shared pages "
                   "counted in each), VmRSS at the end / sum of the peaks, MB: "
                   + ", ".join(f"round {tr['round']} {mb(tr['tot'][0])} / {mb(tr['tot'][1])}"
                               for tr in trk)
                   + ". Every tracker `running` after "
                   + ", ".join(f"{tr['up_s']:.1f}" for tr in trk)
                   + " s from the daemon's start; the daemon stopped (SIGTERM → exit) in "
                   + ", ".join(f"{tr['daemon_stop_s']:.2f}" for tr in trk) + " s.\n")
    for r in results:
        for p in r.get("daemon_log_problems", []):
            problems.append(f"round {r['round']} {r['name']} daemon log: {p[:300]}")
        if r.get("daemon_exit") != 0:
            problems.append(f"round {r['round']} {r['name']}: daemon exited "
                            f"{r.get('daemon_exit')}")
        if not r.get("client", {}).get("flush_ok", False):
            problems.append(f"round {r['round']} {r['name']}: client flush() did not return "
                            "True")
    out.append("## problems\n\n" + ("\n".join(f"- {p}" for p in problems) if problems
                                    else "none (no WARNING/ERROR in the daemon logs, no "
                                         "restart or error in `status`, every point read back)"))
    return "\n".join(out)


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="events sent")
    ap.add_argument("--cases", default="none,trackers", help="comma-separated subset")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the cases")
    ap.add_argument("--every", type=float, default=0.2, help="sampling period, s")
    ap.add_argument("--daemon-rev", default=None,
                    help="run the daemon (and its workers) from `git archive REV "
                         "daemon/magnusd` instead of the working tree")
    ap.add_argument("--no-verify", action="store_true", help="skip reading the points back")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (daemon logs)")
    args = ap.parse_args()
    C.check_python()
    want = args.cases.split(",")
    load0 = loadavg()
    t0 = time.monotonic()
    pythonpath, src = daemon_source(args.daemon_rev)
    results: list[dict[str, Any]] = []
    try:
        for rnd in range(1, args.rounds + 1):
            for name in ("none", "trackers"):
                if name not in want:
                    continue
                kinds = () if name == "none" else KINDS
                print(f"round {rnd}, {name}: {args.n:,} events ...", file=sys.stderr)
                r = case(kinds, args.n, args.every, not args.no_verify, args.keep, pythonpath)
                r.update(round=rnd, name=name)
                results.append(r)
    finally:
        if pythonpath:
            C.remove_tree(Path(pythonpath).parent, False)
    text = report(args, results, src, load0, loadavg(), time.monotonic() - t0)
    print(text)
    print(f"(written to {C.write_report('rss', text)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
