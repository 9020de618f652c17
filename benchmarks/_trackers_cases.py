"""The cases of benchmarks/trackers.py (also used by rss.py): the real trackers through the
daemon, the libraries alone, and reading their data back from each tracker's storage.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

import _common as C
from _results import Stats

CLIENT = str(C.HERE / "_trackers_client.py")
KINDS = ("mlflow", "wandb", "tensorboard")
LABEL = {"mlflow": "MLflow 3 (sqlite)", "wandb": "W&B (offline)", "tensorboard": "TensorBoard"}
TAG = "bench"


class PointsCheck(msgspec.Struct, kw_only=True):
    """A tracker's stored points read back against steps 1..N with value 1/step."""

    ok: bool
    points: int = 0
    missing: int = 0
    duplicates: int = 0
    unexpected: int = 0
    bad_values: int = 0
    error: str = ""


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


# -- reading the data back ----------------------------------------------------------------


def check_points(points: list[tuple[int, float]], n: int, rel: float = 1e-9) -> dict[str, Any]:
    """(step, value) pairs against steps 1..n with value 1/step: counts of what is off."""
    seen = Counter(s for s, _ in points)
    missing = sum(1 for i in range(1, n + 1) if i not in seen)
    dups = sum(c - 1 for s, c in seen.items() if 1 <= s <= n and c > 1)
    unexpected = sum(c for s, c in seen.items() if not 1 <= s <= n)
    bad = sum(1 for s, v in points if 1 <= s <= n and abs(v - 1.0 / s) > rel / s)
    ok = missing == 0 and dups == 0 and unexpected == 0 and bad == 0
    return {"points": len(points), "missing": missing, "duplicates": dups,
            "unexpected": unexpected, "bad_values": bad, "ok": ok}


def mlflow_points(db: Path, *, mlflow_run_id: str | None = None,
                  magnus_run_id: str | None = None) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    if mlflow_run_id is None:
        exps = [e.experiment_id for e in client.search_experiments()]
        hits = client.search_runs(exps, filter_string=f"tags.`magnus.run_id` = '{magnus_run_id}'")
        if len(hits) != 1:
            raise RuntimeError(f"{len(hits)} MLflow runs tagged magnus.run_id={magnus_run_id}")
        mlflow_run_id = hits[0].info.run_id
    return [(m.step, m.value) for m in client.get_metric_history(mlflow_run_id, "loss")]


def tb_points(run_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if "loss" not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in acc.Scalars("loss")]


def _wandb_records(path: Path) -> Iterator[bytes]:
    from magnusd.trackers.wandb import offline_records

    return offline_records(path)


def wandb_rows(base: Path, wandb_id: str) -> list[dict[str, Any]]:
    """History rows of every offline directory of W&B run `wandb_id`."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows: list[dict[str, Any]] = []
    for p in sorted(base.glob(f"wandb/offline-run-*-{wandb_id}/run-{wandb_id}.wandb")):
        for raw in _wandb_records(p):
            r = pb.Record()
            r.ParseFromString(raw)
            if r.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                             for i in r.history.item})
    return rows


def verify(kind: str, where: Path, n: int, **ids: Any) -> dict[str, Any]:
    try:
        if kind in ("mlflow", "mlflow_metric", "mlflow_batch"):
            return check_points(mlflow_points(where, **ids), n)
        if kind in ("tensorboard", "tbx"):
            return check_points(tb_points(where), n, rel=1e-6)  # float32
        rows = [r for r in wandb_rows(where, ids["wandb_id"]) if "loss" in r]
        step_key = ids.get("step_key")
        # The daemon logs each key's magnus step as `magnus/step/<key>`; a plain
        # `wandb.log` row i (0-based `_step`) holds call i + 1.
        pts = [(r[step_key] if step_key else r["_step"] + 1, r["loss"]) for r in rows]
        return check_points(pts, n)
    except Exception as e:  # reported, not fatal: the other cases still run
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:300], "points": 0}


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


def verify_run(kind: str, root: Path, n: int, run_id: str) -> dict[str, Any]:
    """What tracker `kind` of a `tracker_daemon` under `root` stored for `run_id`."""
    if kind == "mlflow":
        return verify(kind, root / "mlflow.db", n, magnus_run_id=run_id)
    if kind == "tensorboard":
        from magnusd._runstore import run_dirname

        return verify(kind, root / "tb" / run_dirname(run_id), n)
    from magnusd.trackers.wandb import wandb_run_id

    return verify(kind, root / "wb", n, wandb_id=wandb_run_id(run_id),
                  step_key="magnus/step/loss")


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


def landed(chk: PointsCheck | None) -> str:
    if not chk:
        return "-"
    if chk.error:
        return f"FAIL ({chk.error})"
    if chk.ok:
        return f"{chk.points:,} ✓"
    return (f"FAIL: {chk.points:,} points, missing {chk.missing}, dup "
            f"{chk.duplicates}, unexpected {chk.unexpected}, bad {chk.bad_values}")


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
