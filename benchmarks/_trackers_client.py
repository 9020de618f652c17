"""Client processes of benchmarks/trackers.py (each case a fresh process; one JSON line out).

    python _trackers_client.py magnus N            # track_this(loss=v, step=i), i = 1..N;
                                                   # then flush()
    python _trackers_client.py mlflow_metric N DB  # mlflow.log_metric("loss", v, step=i)
                                                   # inside start_run
    python _trackers_client.py mlflow_batch N DB   # MlflowClient.log_batch, 1000 metrics per call
    python _trackers_client.py wandb N DIR         # wandb.log({"loss": v}), offline, then finish()
    python _trackers_client.py tbx N DIR           # SummaryWriter.add_scalar("loss", v, i), close()

v = 1 / i everywhere. Every call is timed alone with perf_counter_ns (for `mlflow_batch` a call
is one `log_batch` of 1000 metrics, building its `Metric` objects included). `setup_s` is what
comes before the first call (import, init/start_run, db creation) and `close_s` what a script
must wait for after the last call before its data is durable (flush/finish/end_run/close).

`magnus` warms up (one flush(): connect and import msgspec), prints "ready", waits for a line
on stdin, then runs; its JSON carries time.monotonic() stamps (system-wide on Linux, comparable
with the parent's).
"""

from __future__ import annotations

import os
import sys
import time
from array import array
from collections.abc import Callable

from _client_io import emit, ready
from _track_client import summary


def timed_loop(n: int, call: Callable[[float, int], object]) -> tuple[array[int], float]:
    pc = time.perf_counter_ns
    out = array("q", bytes(8 * n))
    t = time.perf_counter()
    for i in range(1, n + 1):
        v = 1.0 / i
        t0 = pc()
        call(v, i)
        t1 = pc()
        out[i - 1] = t1 - t0
    return out, time.perf_counter() - t


def run_magnus(n: int) -> dict[str, object]:
    from magnus import flush, track_this

    warm_ok = ready(flush)
    pc = time.perf_counter_ns
    out = array("q", bytes(8 * n))
    t_first = time.monotonic()
    for i in range(1, n + 1):
        v = 1.0 / i
        t0 = pc()
        track_this(loss=v, step=i)
        t1 = pc()
        out[i - 1] = t1 - t0
    t_loop = time.monotonic()
    ok = flush(timeout=120)
    t_flushed = time.monotonic()
    return {"calls": summary(out), "t_first": t_first, "t_loop": t_loop, "t_flushed": t_flushed,
            "loop_s": t_loop - t_first, "close_s": t_flushed - t_loop, "flush_ok": ok,
            "warm_ok": warm_ok, "run_id": os.environ.get("MAGNUS_RUN_ID")}


def run_mlflow_metric(n: int, db: str) -> dict[str, object]:
    t = time.perf_counter()
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    mlflow.set_experiment("bench")
    active = mlflow.start_run(run_name="lib")
    run_id = active.info.run_id
    mlflow.log_metric("warmup", 1.0, step=0)  # warm-up call (another key, not counted)
    setup_s = time.perf_counter() - t
    out, loop_s = timed_loop(n, lambda v, i: mlflow.log_metric("loss", v, step=i))
    t = time.perf_counter()
    mlflow.end_run()
    return {"calls": summary(out), "setup_s": setup_s, "loop_s": loop_s,
            "close_s": time.perf_counter() - t, "mlflow_run_id": run_id}


def run_mlflow_batch(n: int, db: str) -> dict[str, object]:
    t = time.perf_counter()
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.create_experiment("bench")
    run_id = client.create_run(exp, run_name="lib-batch").info.run_id
    client.log_batch(run_id, metrics=[Metric("warmup", 1.0, int(time.time() * 1000), 0)])
    setup_s = time.perf_counter() - t
    per = 1000
    pc = time.perf_counter_ns
    calls = (n + per - 1) // per
    out = array("q", bytes(8 * calls))
    t = time.perf_counter()
    for c in range(calls):
        lo, hi = c * per + 1, min(n, (c + 1) * per)
        t0 = pc()
        ts = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric("loss", 1.0 / i, ts, i)
                                          for i in range(lo, hi + 1)])
        t1 = pc()
        out[c] = t1 - t0
    loop_s = time.perf_counter() - t
    t = time.perf_counter()
    client.set_terminated(run_id)
    return {"calls": summary(out), "per_call": per, "setup_s": setup_s, "loop_s": loop_s,
            "close_s": time.perf_counter() - t, "mlflow_run_id": run_id}


def run_wandb(n: int, d: str) -> dict[str, object]:
    os.environ.setdefault("WANDB_SILENT", "true")
    t = time.perf_counter()
    import wandb

    run = wandb.init(project="bench", mode="offline", dir=d, settings=wandb.Settings(
        console="off", silent=True))
    setup_s = time.perf_counter() - t
    out, loop_s = timed_loop(n, lambda v, i: run.log({"loss": v}))
    t = time.perf_counter()
    run.finish()
    return {"calls": summary(out), "setup_s": setup_s, "loop_s": loop_s,
            "close_s": time.perf_counter() - t, "wandb_run_id": run.id}


def run_tbx(n: int, d: str) -> dict[str, object]:
    t = time.perf_counter()
    from tensorboardX import SummaryWriter

    w = SummaryWriter(logdir=d)
    setup_s = time.perf_counter() - t
    out, loop_s = timed_loop(n, lambda v, i: w.add_scalar("loss", v, i))
    t = time.perf_counter()
    w.close()
    return {"calls": summary(out), "setup_s": setup_s, "loop_s": loop_s,
            "close_s": time.perf_counter() - t}


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode == "magnus":
        res = run_magnus(n)
    else:
        fn = {"mlflow_metric": run_mlflow_metric, "mlflow_batch": run_mlflow_batch,
              "wandb": run_wandb, "tbx": run_tbx}[mode]
        res = fn(n, sys.argv[3])
    emit(res)


if __name__ == "__main__":
    main()
