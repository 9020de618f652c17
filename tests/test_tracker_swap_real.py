"""Hot swap across real trackers: tensorboard → mlflow (same name) → both, under load."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Daemon, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def tb_steps(log_dir: Path, run: str, key: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = log_dir / run
    if not run_dir.exists():
        return []
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return [e.step for e in ea.Scalars(key)] if key in ea.Tags()["scalars"] else []


def test_tensorboard_then_mlflow_then_both(make_daemon: Callable[..., Daemon], root: Path) -> None:
    tb1, tb2, db = root / "tb-main", root / "tb-second", root / "swap.db"
    uri = f"sqlite:///{db}"
    tb_cfg = ("experiment_tracker:\n  - type: tensorboard\n    name: main\n"
              f"    config: {{log_dir: '{tb1}'}}\n")
    ml_cfg = ("experiment_tracker:\n  - type: mlflow\n    name: main\n"
              f"    config: {{tracking_uri: '{uri}'}}\n")
    both = ml_cfg + f"  - type: tensorboard\n    name: second\n    config: {{log_dir: '{tb2}'}}\n"
    d = make_daemon(tb_cfg).start()
    wait_for(lambda: d.status()["trackers"], what="trackers loaded")
    stop = root / "stop"
    p = d.popen(f"""
        import os, time
        from magnus import track_this, flush
        t0, i = time.monotonic(), 0
        while not os.path.exists({str(stop)!r}) and i < 60_000:
            i += 1
            track_this(step=i, v=float(i))
            if i % 50 == 0:
                time.sleep(max(0.0, t0 + i / 500 - time.monotonic()))  # 500 events/s
        print(flush(30), i)
    """, MAGNUS_RUN_ID="rs", MAGNUS_RUN_TAG="swap", MAGNUS_STEP_NAME="s")

    def running(name: str, kind: str) -> bool:
        return any(t["name"] == name and t["type"] == kind and t["state"] == "running"
                   and t["delivered"] > 0 for t in d.status()["trackers"])

    wait_for(lambda: running("main", "tensorboard"), timeout=60, what="tensorboard delivering")
    write_atomic(d.config, ml_cfg)
    wait_for(lambda: running("main", "mlflow"), timeout=120, what="mlflow took over")
    write_atomic(d.config, both)
    wait_for(lambda: running("second", "tensorboard"), timeout=120, what="second delivering")
    stop.touch()
    out, err = p.communicate(timeout=120)
    ok, n_text = out.split()
    assert ok == "True", err
    n = int(n_text)
    wait_for(lambda: all(t["pending"] == 0 and t["state"] == "running"
                         for t in d.status()["trackers"]) and len(d.status()["trackers"]) == 2,
             timeout=120, what="drained")
    d.stop()  # writers closed, files complete
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    run = c.search_runs([c.get_experiment_by_name("swap").experiment_id])[0]
    ml = sorted(m.step for m in c.get_metric_history(run.info.run_id, "v"))
    tb = tb_steps(tb1, "rs", "v")
    assert tb and ml, (len(tb), len(ml))
    # same name: the cursor passed from tensorboard to mlflow — each event in exactly one
    assert tb == list(range(1, len(tb) + 1))
    assert ml == list(range(len(tb) + 1, n + 1))
    # the second tensorboard tracker: everything from its reload on
    tb_second = tb_steps(tb2, "rs", "v")
    assert tb_second and tb_second == list(range(tb_second[0], n + 1))
    assert tb_second[0] > len(tb)
