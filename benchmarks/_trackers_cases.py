"""The cases of benchmarks/trackers.py (the daemon and its client also used by rss.py): the
real trackers through the daemon, and the libraries alone; _tracker_data.py reads their data
back.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import msgspec

import _common as C
from _results import Stats
from _tracker_data import PointsCheck, verify, verify_run

CLIENT = str(C.HERE / "_trackers_client.py")
KINDS = ("mlflow", "wandb", "tensorboard")
LABEL = {"mlflow": "MLflow 3 (sqlite)", "wandb": "W&B (offline)", "tensorboard": "TensorBoard"}
TAG = "bench"


class Delivery(msgspec.Struct, kw_only=True):
    """One tracker fed through magnusd: from the client's first event until all delivered."""

    deliver_s: float
    eps: float
    first_s: float
    first_events: int
    steady_eps: float
    lag_after_flush_s: float
    max_pending: int
    errors: int
    last_error: str | None
    state: str
    check: PointsCheck | None = None


class MagnusClient(msgspec.Struct, kw_only=True):
    calls: Stats
    t_first: float
    t_loop: float
    t_flushed: float
    loop_s: float
    close_s: float
    flush_ok: bool
    warm_ok: bool
    run_id: str | None


class DaemonCase(C.Ended, kw_only=True):
    kinds: list[str]
    n: int
    run_id: str
    trackers: dict[str, Delivery]
    client: MagnusClient
    client_stderr: str
    daemon_cpu_s: float
    rss_kb: tuple[int, int]


class LibraryCase(msgspec.Struct, kw_only=True):
    """A library's own call in a loop, in a fresh process."""

    mode: str
    n: int
    calls: Stats
    setup_s: float
    loop_s: float
    close_s: float
    per_call: int = 1  # metrics per call (log_batch)
    stderr: str
    check: PointsCheck
    mlflow_run_id: str | None = None
    wandb_run_id: str | None = None


# -- through the daemon -------------------------------------------------------------------


def tracker_yaml(kind: str, root: Path) -> str:
    cfg = {"mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
           "wandb": {"mode": "offline", "dir": str(root / "wb"), "project": TAG},
           "tensorboard": {"log_dir": str(root / "tb")}}[kind]
    return f"  - type: {kind}\n    name: {kind}\n    config: {json.dumps(cfg)}\n"


def tracker_daemon(kinds: tuple[str, ...], root: Path, **extra_env: str) -> C.Daemon:
    """A daemon under `root` configured with the `kinds` of tracker, their data under `root`."""
    d = C.Daemon(root, spool_dir=str(root / "spool"), extra_env=extra_env)
    if kinds:
        d.config.write_text("experiment_tracker:\n" + "".join(tracker_yaml(k, root)
                                                               for k in kinds))
    return d


def magnus_client(d: C.Daemon, run_id: str, n: int) -> subprocess.Popen[str]:
    """The client tracking `loss` = 1/i for i = 1..n on `run_id` once told `go`."""
    return d.start_client(CLIENT, ["magnus", str(n)], run_id, MAGNUS_RUN_TAG=TAG,
                          MAGNUS_SPOOL_DIR=str(d.root / "cspool"))


def daemon_case(kinds: tuple[str, ...], n: int, keep: bool) -> DaemonCase:
    root = C.short_tmpdir("mbt")
    d = tracker_daemon(kinds, root)
    run_id = f"bench-trk-{os.urandom(3).hex()}"
    res: dict[str, Any] = {"kinds": kinds, "n": n, "run_id": run_id, "trackers": {}}
    proc: subprocess.Popen[str] | None = None
    try:
        d.start()
        d.trackers_up(kinds)
        proc = magnus_client(d, run_id, n)
        # Whatever the warm-up sent has reached every tracker: the clock starts clean.
        base = C.wait_for(lambda: (s := d.status()) and all(
            C.tracker(s, k)["pending"] == 0 for k in kinds) and s, 30, 0.01, "trackers idle")
        assert d.proc is not None
        cpu0 = C.cpu_seconds(d.proc.pid)
        C.send([proc], "go\n")
        f = d.follow(base, n, kinds, timeout=180, runlog=False)
        cpu1 = C.cpu_seconds(d.proc.pid)
        cl = C.read_ready([proc], timeout=120)[0]
        res.update(client=cl, client_stderr=C.stderr_problems(cl["stderr"]),
                   daemon_cpu_s=cpu1 - cpu0, rss_kb=d.rss_kb())
        t0 = cl["t_first"]
        for k in kinds:
            t, done = C.tracker(f.st, k), f.done[k]
            f_t, f_n = f.first[k]
            res["trackers"][k] = {
                "deliver_s": done - t0, "eps": n / (done - t0),
                "first_s": f_t - t0, "first_events": f_n,
                "steady_eps": (n - f_n) / (done - f_t) if done > f_t else float("nan"),
                "lag_after_flush_s": done - cl["t_flushed"],
                "max_pending": f.max_pending[k], "errors": t["errors"],
                "last_error": t["last_error"], "state": t["state"]}
    finally:
        C.kill_all([proc])
        res.update(d.finish(None, keep, timeout=120))  # W&B: finish() writes the rest of the run
    for k in res["trackers"]:
        res["trackers"][k]["check"] = verify_run(k, root, n, run_id)
    C.remove_tree(root, keep)
    return msgspec.convert(res, DaemonCase)


# -- the libraries alone ------------------------------------------------------------------


def library_case(mode: str, n: int, keep: bool) -> LibraryCase:
    root = C.short_tmpdir("mbl")
    where = root / ("lib.db" if mode.startswith("mlflow") else "out")
    env = C.clean_env(WANDB_SILENT="true")
    try:
        r = subprocess.run([C.PY, CLIENT, mode, str(n), str(where)], env=env, text=True,
                           capture_output=True, timeout=300, cwd=root)
        if r.returncode != 0 or not r.stdout.strip():
            raise RuntimeError(f"{mode} client exited {r.returncode}: {r.stderr[-2000:]}")
        res: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        res.update(mode=mode, n=n, stderr=C.stderr_problems(r.stderr))
        if mode.startswith("mlflow"):
            res["check"] = verify(mode, where, n, mlflow_run_id=res["mlflow_run_id"])
        elif mode == "tbx":
            res["check"] = verify(mode, where, n)
        else:
            res["check"] = verify(mode, where, n, wandb_id=res["wandb_run_id"])
    finally:
        C.remove_tree(root, keep)
    return msgspec.convert(res, LibraryCase)


# -- for the report -------------------------------------------------------------------------


def us(ns: float) -> str:
    v = ns / 1000
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def eps_or_dash(v: float) -> str:
    return "-" if v != v else f"{v:,.0f}"  # NaN: the first batch held everything


LIB_FOR = {"mlflow": ["mlflow_metric", "mlflow_batch"], "wandb": ["wandb"],
           "tensorboard": ["tbx"]}
LIB_CALL = {"mlflow_metric": '`mlflow.log_metric("loss", v, step=i)`',
            "mlflow_batch": "`MlflowClient.log_batch`, 1000 metrics/call",
            "wandb": '`run.log({"loss": v})`',
            "tbx": '`SummaryWriter.add_scalar("loss", v, i)`'}
LIB_CLOSE = {"mlflow_metric": "end_run", "mlflow_batch": "set_terminated", "wandb": "finish",
             "tbx": "close"}


def lib_eps(r: LibraryCase) -> float:
    return r.n / (r.loop_s + r.close_s)

