"""The real trackers (MLflow on sqlite, W&B offline, TensorBoard) through the daemon, next to
each library's own per-call API in a training loop.

    .venv/bin/python benchmarks/trackers.py [--n 20000] [--mlflow-metric-n 2000]
        [--cases daemon,together,library] [--trackers ...] [--quick] [--keep]

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

Results: benchmarks/out/trackers.json, rendered to trackers.md (render.py).
"""

from __future__ import annotations

import argparse
import sys

import _common as C
from _results import Report, Result, finish, new_report, tbl
from _tracker_data import landed
from _trackers_cases import (
    KINDS,
    LABEL,
    LIB_CALL,
    LIB_CLOSE,
    LIB_FOR,
    DaemonCase,
    LibraryCase,
    daemon_case,
    eps_or_dash,
    lib_eps,
    library_case,
    us,
)

# -- report -------------------------------------------------------------------------------


def report(rep: Report, n: int, alone: dict[str, DaemonCase],
           together: DaemonCase | None, libs: dict[str, LibraryCase]) -> None:
    rep.intro = (f"N = {n:,} events `loss` = 1/i at steps 1..N, one run, one client process. "
           "µs per call: median / p99, every call timed alone (`track_this` for magnusd; for "
           "`log_batch`, per metric = per call / 1000). magnusd delivery = seconds from the "
           "client's first event until the tracker had received all N (status: pending 0), "
           "so events/s into the tracker. Library events/s = calls / (loop + "
           "end_run/finish/close), setup (imports, db creation, init) excluded and listed "
           "below. Landed = points read back from the tracker's storage with steps 1..N once "
           "and the right values.")
    problems = rep.notes
    rows: list[list[str | int]] = []
    for k in KINDS:
        a = alone.get(k)
        tr = a.trackers.get(k) if a else None
        cl = a.client if a else None
        lib_rows: list[LibraryCase | None] = [libs[m] for m in LIB_FOR[k] if m in libs]
        lib_rows = lib_rows or [None]
        for j, lr in enumerate(lib_rows):
            first = j == 0
            row: list[str | int] = [LABEL[k] if first else ""]
            if first and cl and tr:
                c = cl.calls
                row += [f"{us(c.p50)} / {us(c.p99)}",
                        f"{cl.loop_s:.3f} + {cl.close_s:.3f}",
                        f"{tr.deliver_s:.2f}", f"{tr.eps:,.0f}",
                        landed(tr.check)]
            else:
                row += ["", "", "", "", ""] if not first else ["-"] * 5
            if lr:
                c = lr.calls
                per = lr.per_call
                med = f"{us(c.p50 / per)} / {us(c.p99 / per)}"
                if per > 1:
                    med += f" per metric ({us(c.p50)} / {us(c.p99)} per call)"
                ratio = (c.p50 / per) / cl.calls.p50 if cl else float("nan")
                row += [LIB_CALL[lr.mode], f"{lr.n:,}", med, f"{ratio:,.0f}×",
                        f"{lr.loop_s:.2f} + {lr.close_s:.2f}",
                        f"{lib_eps(lr):,.0f}", landed(lr.check)]
            else:
                row += ["-"] * 7
            rows.append(row)
    rep.add(tbl([("tracker", "*"), "magnusd `track_this` µs", "client loop + flush s",
                 "delivery s", ("delivered events/s", "*"), "landed (magnusd)", "library call",
                 "calls", "library µs", "library ÷ track_this (median)", "loop + close s",
                 ("library events/s", "*"), "landed (library)"], rows))

    if alone:
        rows = []
        for k in KINDS:
            a = alone.get(k)
            if not a or k not in a.trackers:
                continue
            t = a.trackers[k]
            rows.append([LABEL[k], f"{t.first_s:.2f} ({t.first_events:,})",
                         eps_or_dash(t.steady_eps), f"{t.deliver_s:.2f}",
                         f"{t.lag_after_flush_s:.2f}", f"{t.max_pending:,}",
                         f"{a.daemon_cpu_s:.2f}", f"{a.rss_kb[1] / 1024:.0f}",
                         f"{a.stop_s:.2f}", t.errors])
        rep.add(tbl(["tracker", "first delivery s (events)", "steady events/s",
                     "all delivered s", "lag after flush s", "max pending", "daemon CPU s",
                     "daemon peak RSS MB", "daemon stop s", "errors"], rows,
                    "delivery through magnusd, one tracker per daemon",
                    "First delivery: seconds from the first event until `status` first showed "
                    "delivered > 0 (includes the tracker's first-use work) and how many events "
                    "that first batch held; steady = the remaining events over the remaining "
                    "time. Lag = delivery done − the client's `flush()` returned. Daemon CPU: "
                    "the daemon's Python process from go to done (W&B's `wandb-core` is a "
                    "separate process, not counted)."))
    if together and together.trackers:
        cl = together.client
        rows = []
        for k in KINDS:
            tt = together.trackers.get(k)
            if not tt:
                continue
            t = tt
            solo = alone[k].trackers.get(k) if k in alone else None
            rows.append([LABEL[k], f"{t.first_s:.2f} ({t.first_events:,})",
                         f"{t.deliver_s:.2f}", f"{t.eps:,.0f}",
                         f"{solo.eps:,.0f}" if solo else "-", eps_or_dash(t.steady_eps),
                         f"{t.max_pending:,}", landed(t.check)])
        rep.add(tbl(["tracker", "first delivery s (events)", "all delivered s",
                     ("events/s", "*"), "events/s alone (above)", "steady events/s",
                     "max pending", "landed"], rows, "all three trackers in one daemon",
                    f"Same client and N; `track_this` {us(cl.calls.p50)} / {us(cl.calls.p99)} "
                    f"µs, client loop + flush {cl.loop_s:.3f} + {cl.close_s:.3f} s; daemon CPU "
                    f"{together.daemon_cpu_s:.2f} s, peak RSS "
                    f"{together.rss_kb[1] / 1024:.0f} MB."))
    if libs:
        rows = []
        for m in ("mlflow_metric", "mlflow_batch", "wandb", "tbx"):
            r = libs.get(m)
            if not r:
                continue
            c = r.calls
            per = r.per_call
            rows.append([LIB_CALL[m], f"{r.n:,}", c.n, us(c.p50 / per),
                         us(c.p90 / per), us(c.p99 / per), us(c.max / per),
                         f"{r.setup_s:.2f}", f"{r.loop_s:.2f}",
                         f"{r.close_s:.3f} ({LIB_CLOSE[m]})", f"{r.n / r.loop_s:,.0f}",
                         f"{lib_eps(r):,.0f}"])
        rep.add(tbl(["call", "events", "timed calls", "median µs/event", "p90", "p99", "max",
                     "setup s", "loop s", "close s", "events/s (loop)",
                     "events/s (loop + close)"], rows, "the libraries alone (fresh process each)"))
        lm = libs.get("mlflow_metric")
        if lm and lm.n < n:
            rep.add(f"\n`mlflow.log_metric` ran {lm.n:,} calls, not {n:,}: at its per-call cost "
                    f"N calls would take ~{n * lm.calls.mean / 1e9:.0f} s.")

    for name, a in [*((f"daemon {k}", v) for k, v in alone.items()),
                    *([("daemon together", together)] if together else [])]:
        for k, t in a.trackers.items():
            if not (t.check is not None and t.check.ok):
                problems.append(f"{name}: {k} data did not land right: {t.check}")
            if t.errors:
                problems.append(f"{name}: {k} errors {t.errors}: {t.last_error}")
        if not a.client.flush_ok:
            problems.append(f"{name}: client flush() did not return True")
        problems += a.problems(name)
        if a.client_stderr:
            problems.append(f"{name}: client stderr: {a.client_stderr[:300]}")
    for m, r in libs.items():
        if not (r.check is not None and r.check.ok):
            problems.append(f"library {m}: data did not land right: {r.check}")
        if r.stderr:
            problems.append(f"library {m} stderr: {r.stderr[:300]}")
    rep.ok = not problems


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="events per case")
    ap.add_argument("--mlflow-metric-n", type=int, default=2_000,
                    help="calls of mlflow.log_metric (slow: ~10 ms each on sqlite here)")
    ap.add_argument("--cases", default="daemon,together,library",
                    help="comma-separated subset of daemon,together,library")
    ap.add_argument("--trackers", default=",".join(KINDS), help="comma-separated subset")
    ap.add_argument("--quick", action="store_true", help="N = 1,000, 100 log_metric calls")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs")
    args = ap.parse_args()
    C.check_python()
    if args.quick:
        args.n, args.mlflow_metric_n = 1_000, 100
    cases = set(args.cases.split(","))
    kinds = tuple(k for k in KINDS if k in args.trackers.split(","))
    alone: dict[str, DaemonCase] = {}
    together = None
    libs: dict[str, LibraryCase] = {}
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
    rep = new_report("trackers", "real trackers: through magnusd vs. each library's own API")
    report(rep, args.n, alone, together, libs)
    for k, a in alone.items():
        t, cl = a.trackers.get(k), a.client
        if t and cl:
            rep.results.append(Result(name=f"{LABEL[k]}: `track_this`", unit="µs", n=args.n,
                                      median=cl.calls.p50 / 1e3,
                                      p99=cl.calls.p99 / 1e3,
                                      p999=cl.calls.p999 / 1e3))
            rep.results.append(Result(name=f"{LABEL[k]}: delivered through magnusd",
                                      unit="events/s", n=args.n, median=t.eps,
                                      ok=t.check is not None and t.check.ok))
    rep.data = {"alone": alone, "together": together, "libraries": libs}
    return finish(rep)


if __name__ == "__main__":
    sys.exit(main())
