"""The real trackers (MLflow on sqlite, W&B offline, TensorBoard) through the daemon, next to
each library's own per-call API in a training loop.

    .venv/bin/python benchmarks/trackers.py [--n 20000] [--mlflow-metric-n 2000] [--cases daemon,together,library] [--keep]

**Through magnusd** (`daemon`): for each tracker a fresh `magnusd serve` with only that tracker
(private socket, data directory, sqlite db / W&B dir / log dir under /tmp). One client process
(benchmarks/_trackers_client.py) runs `track_this(loss=1/i, step=i)` for i = 1..N (one run, each
call timed with perf_counter_ns) and `flush()`. Measured: the client's own time (loop + flush:
the training loop's cost) and, polling `status` every 10 ms from the first event, the time until
the tracker shows `pending == 0` with N more events delivered (and the daemon N more events
journaled): delivery events/s = N / that time. That time includes the tracker's first-use work
(MLflow: creating the sqlite schema, experiment and run; W&B: `wandb.init`), shown separately as
"first delivery" (the first poll with anything delivered; the first batch can be up to 5,000
events); "steady" is the rate after it. `together` is the same with all three trackers in one
daemon (one journal, one client, three delivery tasks).

**The libraries alone** (`library`): a fresh process per case, the same values and steps, each
call timed alone: `mlflow.log_metric("loss", v, step=i)` inside `mlflow.start_run()` against a
fresh sqlite db (--mlflow-metric-n calls: ~10 ms each here, N would take minutes), the fast path
`MlflowClient.log_batch` with 1000 metrics per call (N metrics), `wandb.log({"loss": v})`
offline (then `finish()`), and tensorboardX `SummaryWriter.add_scalar("loss", v, i)` (then
`close()`). Setup (import, db creation, init) is reported apart; events/s = calls / (loop + the
close a script must wait for).

Every case reads its data back afterwards: MLflow `get_metric_history`, TensorBoard
`EventAccumulator` scalars, W&B history rows parsed from the offline `.wandb` file; each must
hold steps 1..N once each with the right values (float32 for TensorBoard).

Results: markdown on stdout and in benchmarks/out/trackers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _common as C
from ingest import cpu_seconds

CLIENT = str(C.HERE / "_trackers_client.py")
KINDS = ("mlflow", "wandb", "tensorboard")
LABEL = {"mlflow": "MLflow 3 (sqlite)", "wandb": "W&B (offline)", "tensorboard": "TensorBoard"}
TAG = "bench"


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


def tracker(st: dict[str, Any], name: str) -> dict[str, Any]:
    """Tracker `name` in a status; {} while the daemon has not listed it yet."""
    return next((t for t in st["trackers"] if t["name"] == name), {})


def daemon_case(kinds: tuple[str, ...], n: int, keep: bool) -> dict[str, Any]:
    root = C.short_tmpdir("mbt")
    d = C.Daemon(root, spool_dir=str(root / "spool"))
    Path(d.config).write_text("experiment_tracker:\n" + "".join(tracker_yaml(k, root)
                                                               for k in kinds))
    run_id = f"bench-trk-{os.urandom(3).hex()}"
    res: dict[str, Any] = {"kinds": kinds, "n": n, "run_id": run_id, "trackers": {}}
    proc: subprocess.Popen[str] | None = None
    try:
        d.start()
        C.wait_for(lambda: all(tracker(st, k).get("state") == "running" for st in [d.status()]
                               for k in kinds),
                   60, 0.02, f"trackers {kinds} running")
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
        # Whatever the warm-up sent has reached every tracker: the clock starts clean.
        base = C.wait_for(lambda: (s := d.status()) and all(
            tracker(s, k)["pending"] == 0 for k in kinds) and s, 30, 0.01, "trackers idle")
        b_total = base["events_total"]
        b_deliv = {k: tracker(base, k)["delivered"] for k in kinds}
        assert d.proc is not None
        cpu0 = cpu_seconds(d.proc.pid)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        first: dict[str, tuple[float, int]] = {}
        done: dict[str, float] = {}
        max_pending = dict.fromkeys(kinds, 0)
        end = time.monotonic() + 180
        st = base
        while len(done) < len(kinds):
            if time.monotonic() > end:
                raise TimeoutError(f"trackers not caught up within 180 s: {st['trackers']}")
            st = d.status()
            now = time.monotonic()
            journaled = st["events_total"] - b_total >= n
            for k in kinds:
                t = tracker(st, k)
                got = t["delivered"] - b_deliv[k]
                max_pending[k] = max(max_pending[k], t["pending"])
                if k not in first and got > 0:
                    first[k] = (now, got)
                if k not in done and journaled and t["pending"] == 0 and got >= n:
                    done[k] = now
            time.sleep(0.01)
        cpu1 = cpu_seconds(d.proc.pid)
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"client exited {proc.returncode}: {err[-2000:]}")
        cl = json.loads(out.strip().splitlines()[-1])
        res["client"] = cl
        res["client_stderr"] = stderr_problems(err)
        res["daemon_cpu_s"] = cpu1 - cpu0
        res["rss_kb"] = d.rss_kb()
        t0 = cl["t_first"]
        for k in kinds:
            t = tracker(st, k)
            f_t, f_n = first[k]
            res["trackers"][k] = {
                "deliver_s": done[k] - t0, "eps": n / (done[k] - t0),
                "first_s": f_t - t0, "first_events": f_n,
                "steady_eps": (n - f_n) / (done[k] - f_t) if done[k] > f_t else float("nan"),
                "lag_after_flush_s": done[k] - cl["t_flushed"],
                "max_pending": max_pending[k], "errors": t["errors"],
                "last_error": t["last_error"], "state": t["state"]}
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()  # our own child, by pid
            proc.wait()
        res["daemon_exit"] = d.stop(timeout=120)  # W&B: finish() writes the rest of the run
        res["daemon_stop_s"] = d.stop_s
        res["daemon_log_problems"] = d.log_problems()
    for k in kinds:
        if k not in res["trackers"]:
            continue
        if k == "mlflow":
            chk = verify(k, root / "mlflow.db", n, magnus_run_id=run_id)
        elif k == "tensorboard":
            from magnusd._runstore import run_dirname

            chk = verify(k, root / "tb" / run_dirname(run_id), n)
        else:
            from magnusd.trackers.wandb import wandb_run_id

            chk = verify(k, root / "wb", n, wandb_id=wandb_run_id(run_id),
                         step_key="magnus/step/loss")
        res["trackers"][k]["check"] = chk
    C.remove_tree(root, keep)
    return res


# -- the libraries alone ------------------------------------------------------------------


def stderr_problems(text: str) -> str:
    """Lines of a client's stderr worth reporting (not the libraries' INFO chatter)."""
    keep = [ln for ln in text.splitlines()
            if any(w in ln for w in ("WARN", "ERROR", "Error", "Traceback", "CRITICAL"))]
    return "\n".join(keep)[:500]


def library_case(mode: str, n: int, keep: bool) -> dict[str, Any]:
    root = C.short_tmpdir("mbl")
    where = root / ("lib.db" if mode.startswith("mlflow") else "out")
    env = C.clean_env(WANDB_SILENT="true")
    try:
        r = subprocess.run([C.PY, CLIENT, mode, str(n), str(where)], env=env, text=True,
                           capture_output=True, timeout=300, cwd=root)
        if r.returncode != 0 or not r.stdout.strip():
            raise RuntimeError(f"{mode} client exited {r.returncode}: {r.stderr[-2000:]}")
        res: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        res.update(mode=mode, n=n, stderr=stderr_problems(r.stderr))
        if mode.startswith("mlflow"):
            res["check"] = verify(mode, where, n, mlflow_run_id=res["mlflow_run_id"])
        elif mode == "tbx":
            res["check"] = verify(mode, where, n)
        else:
            res["check"] = verify(mode, where, n, wandb_id=res["wandb_run_id"])
    finally:
        C.remove_tree(root, keep)
    return res


# -- report -------------------------------------------------------------------------------


def us(ns: float) -> str:
    v = ns / 1000
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def eps_or_dash(v: float) -> str:
    return "-" if v != v else f"{v:,.0f}"  # NaN: the first batch held everything


def landed(chk: dict[str, Any] | None) -> str:
    if not chk:
        return "-"
    if chk.get("error"):
        return f"FAIL ({chk['error']})"
    if chk["ok"]:
        return f"{chk['points']:,} ✓"
    return (f"FAIL: {chk['points']:,} points, missing {chk['missing']}, dup "
            f"{chk['duplicates']}, unexpected {chk['unexpected']}, bad {chk['bad_values']}")


LIB_FOR = {"mlflow": ["mlflow_metric", "mlflow_batch"], "wandb": ["wandb"],
           "tensorboard": ["tbx"]}
LIB_CALL = {"mlflow_metric": '`mlflow.log_metric("loss", v, step=i)`',
            "mlflow_batch": "`MlflowClient.log_batch`, 1000 metrics/call",
            "wandb": '`run.log({"loss": v})`',
            "tbx": '`SummaryWriter.add_scalar("loss", v, i)`'}
LIB_CLOSE = {"mlflow_metric": "end_run", "mlflow_batch": "set_terminated", "wandb": "finish",
             "tbx": "close"}


def lib_eps(r: dict[str, Any]) -> float:
    return r["n"] / (r["loop_s"] + r["close_s"])


def report(args: argparse.Namespace, alone: dict[str, dict[str, Any]],
           together: dict[str, Any] | None, libs: dict[str, dict[str, Any]],
           elapsed: float) -> str:
    n = args.n
    out = [f"# real trackers: through magnusd vs. each library's own API\n\n{C.machine_line()}; "
           f"`{' '.join(sys.argv[1:]) or '(defaults)'}`; total {elapsed:.0f} s\n",
           f"N = {n:,} events `loss` = 1/i at steps 1..N, one run, one client process. "
           "µs per call: median / p99, every call timed alone (`track_this` for magnusd; for "
           "`log_batch`, per metric = per call / 1000). magnusd delivery = seconds from the "
           "client's first event until the tracker had received all N (status: pending 0), "
           "so events/s into the tracker. Library events/s = calls / (loop + "
           "end_run/finish/close), setup (imports, db creation, init) excluded and listed "
           "below. Landed = points read back from the tracker's storage with steps 1..N once "
           "and the right values.\n"]
    problems: list[str] = []
    rows = []
    for k in KINDS:
        a = alone.get(k)
        tr = a["trackers"].get(k) if a else None
        cl = a["client"] if a and "client" in a else None
        lib_rows = [libs[m] for m in LIB_FOR[k] if m in libs] or [None]
        for j, lr in enumerate(lib_rows):
            first = j == 0
            row = [f"**{LABEL[k]}**" if first else ""]
            if first and cl and tr:
                c = cl["calls"]
                row += [f"{us(c['p50'])} / {us(c['p99'])}",
                        f"{cl['loop_s']:.3f} + {cl['close_s']:.3f}",
                        f"{tr['deliver_s']:.2f}", f"**{tr['eps']:,.0f}**",
                        landed(tr.get("check"))]
            else:
                row += ["", "", "", "", ""] if not first else ["-"] * 5
            if lr:
                c = lr["calls"]
                per = lr.get("per_call", 1)
                med = f"{us(c['p50'] / per)} / {us(c['p99'] / per)}"
                if per > 1:
                    med += f" per metric ({us(c['p50'])} / {us(c['p99'])} per call)"
                ratio = (c["p50"] / per) / cl["calls"]["p50"] if cl else float("nan")
                row += [LIB_CALL[lr["mode"]], f"{lr['n']:,}", med, f"{ratio:,.0f}×",
                        f"{lr['loop_s']:.2f} + {lr['close_s']:.2f}",
                        f"**{lib_eps(lr):,.0f}**", landed(lr.get("check"))]
            else:
                row += ["-"] * 7
            rows.append(row)
    out.append(C.table(["tracker", "magnusd `track_this` µs", "client loop + flush s",
                        "delivery s", "delivered events/s", "landed (magnusd)",
                        "library call", "calls", "library µs", "library ÷ track_this (median)",
                        "loop + close s", "library events/s", "landed (library)"], rows))

    if alone:
        out.append("\n## delivery through magnusd, one tracker per daemon\n\n"
                   "First delivery: seconds from the first event until `status` first showed "
                   "delivered > 0 (includes the tracker's first-use work) and how many events "
                   "that first batch held; steady = the remaining events over the remaining "
                   "time. Lag = delivery done − the client's `flush()` returned. Daemon CPU: "
                   "the daemon's Python process from go to done (W&B's `wandb-core` is a "
                   "separate process, not counted).\n")
        rows = []
        for k in KINDS:
            a = alone.get(k)
            if not a or k not in a["trackers"]:
                continue
            t = a["trackers"][k]
            rows.append([LABEL[k], f"{t['first_s']:.2f} ({t['first_events']:,})",
                         eps_or_dash(t["steady_eps"]), f"{t['deliver_s']:.2f}",
                         f"{t['lag_after_flush_s']:.2f}", f"{t['max_pending']:,}",
                         f"{a['daemon_cpu_s']:.2f}", f"{a['rss_kb'][1] / 1024:.0f}",
                         f"{a['daemon_stop_s']:.2f}", t["errors"]])
        out.append(C.table(["tracker", "first delivery s (events)", "steady events/s",
                            "all delivered s", "lag after flush s", "max pending",
                            "daemon CPU s", "daemon peak RSS MB", "daemon stop s", "errors"],
                           rows))
    if together and together.get("trackers"):
        cl = together["client"]
        out.append(f"\n## all three trackers in one daemon\n\nSame client and N; "
                   f"`track_this` {us(cl['calls']['p50'])} / {us(cl['calls']['p99'])} µs, "
                   f"client loop + flush {cl['loop_s']:.3f} + {cl['close_s']:.3f} s; daemon "
                   f"CPU {together['daemon_cpu_s']:.2f} s, peak RSS "
                   f"{together['rss_kb'][1] / 1024:.0f} MB.\n")
        rows = []
        for k in KINDS:
            t = together["trackers"].get(k)
            if not t:
                continue
            solo = alone.get(k, {}).get("trackers", {}).get(k)
            rows.append([LABEL[k], f"{t['first_s']:.2f} ({t['first_events']:,})",
                         f"{t['deliver_s']:.2f}", f"**{t['eps']:,.0f}**",
                         f"{solo['eps']:,.0f}" if solo else "-", eps_or_dash(t["steady_eps"]),
                         f"{t['max_pending']:,}", landed(t.get("check"))])
        out.append(C.table(["tracker", "first delivery s (events)", "all delivered s",
                            "events/s", "events/s alone (above)", "steady events/s",
                            "max pending", "landed"], rows))
    if libs:
        out.append("\n## the libraries alone (fresh process each)\n")
        rows = []
        for m in ("mlflow_metric", "mlflow_batch", "wandb", "tbx"):
            r = libs.get(m)
            if not r:
                continue
            c = r["calls"]
            per = r.get("per_call", 1)
            rows.append([LIB_CALL[m], f"{r['n']:,}", c["n"], us(c["p50"] / per),
                         us(c["p90"] / per), us(c["p99"] / per), us(c["max"] / per),
                         f"{r['setup_s']:.2f}", f"{r['loop_s']:.2f}",
                         f"{r['close_s']:.3f} ({LIB_CLOSE[m]})", f"{r['n'] / r['loop_s']:,.0f}",
                         f"{lib_eps(r):,.0f}"])
        out.append(C.table(["call", "events", "timed calls", "median µs/event",
                            "p90", "p99", "max", "setup s", "loop s", "close s",
                            "events/s (loop)", "events/s (loop + close)"], rows))
        if "mlflow_metric" in libs and libs["mlflow_metric"]["n"] < n:
            out.append(f"\n`mlflow.log_metric` ran {libs['mlflow_metric']['n']:,} calls, not "
                       f"{n:,}: at its per-call cost N calls would take "
                       f"~{n * libs['mlflow_metric']['calls']['mean'] / 1e9:.0f} s.")

    for name, a in [*((f"daemon {k}", v) for k, v in alone.items()),
                    *([("daemon together", together)] if together else [])]:
        for k, t in a.get("trackers", {}).items():
            if not t.get("check", {}).get("ok"):
                problems.append(f"{name}: {k} data did not land right: {t.get('check')}")
            if t["errors"]:
                problems.append(f"{name}: {k} errors {t['errors']}: {t['last_error']}")
        if not a.get("client", {}).get("flush_ok", False):
            problems.append(f"{name}: client flush() did not return True")
        for p in a.get("daemon_log_problems", []):
            problems.append(f"{name} daemon log: {p[:300]}")
        if a.get("daemon_exit") != 0:
            problems.append(f"{name}: daemon exited {a.get('daemon_exit')}")
        if a.get("client_stderr"):
            problems.append(f"{name}: client stderr: {a['client_stderr'][:300]}")
    for m, r in libs.items():
        if not r.get("check", {}).get("ok"):
            problems.append(f"library {m}: data did not land right: {r.get('check')}")
        if r.get("stderr"):
            problems.append(f"library {m} stderr: {r['stderr'][:300]}")
    out.append("\n## problems\n\n" + ("\n".join(f"- {p}" for p in problems) if problems
                                      else "none (every case read back complete and exact; no "
                                           "WARNING/ERROR in the daemon logs)"))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="events per case")
    ap.add_argument("--mlflow-metric-n", type=int, default=2_000,
                    help="calls of mlflow.log_metric (slow: ~10 ms each on sqlite here)")
    ap.add_argument("--cases", default="daemon,together,library",
                    help="comma-separated subset of daemon,together,library")
    ap.add_argument("--trackers", default=",".join(KINDS), help="comma-separated subset")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs")
    args = ap.parse_args()
    C.check_python()
    cases = set(args.cases.split(","))
    kinds = tuple(k for k in KINDS if k in args.trackers.split(","))
    t0 = time.monotonic()
    alone: dict[str, dict[str, Any]] = {}
    together = None
    libs: dict[str, dict[str, Any]] = {}
    if "daemon" in cases:
        for k in kinds:
            print(f"daemon, {k} tracker: {args.n:,} events ...", file=sys.stderr)
            alone[k] = daemon_case((k,), args.n, args.keep)
    if "together" in cases and len(kinds) > 1:
        print(f"daemon, trackers {','.join(kinds)} together: {args.n:,} events ...",
              file=sys.stderr)
        together = daemon_case(kinds, args.n, args.keep)
    if "library" in cases:
        for k in kinds:
            for m in LIB_FOR[k]:
                nn = min(args.mlflow_metric_n, args.n) if m == "mlflow_metric" else args.n
                print(f"library {m}: {nn:,} events ...", file=sys.stderr)
                libs[m] = library_case(m, nn, args.keep)
    text = report(args, alone, together, libs, time.monotonic() - t0)
    print(text)
    print(f"(written to {C.write_report('trackers', text)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
