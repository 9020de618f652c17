"""numpy and torch values (design §4) end to end: recorded as plain JSON types in the run log
and delivered as numbers (or lists) to the file, MLflow and TensorBoard trackers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Daemon, wait_for

pytest.importorskip("numpy")
pytest.importorskip("torch")
pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

CLIENT = """
    import numpy as np, torch
    from magnus import track_this, flush
    for i in range(1, 21):
        track_this(step=i, loss=np.float32(i / 4), acc=torch.tensor(i / 8))
    track_this(n=np.int64(7), flag=np.bool_(True), hist=np.arange(3),
               w=torch.ones(2, 2, requires_grad=True), half=np.float16(0.5))
    assert flush(10)
"""


def test_numpy_and_torch_values_reach_the_run_log_and_every_tracker(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    out, tb, db = root / "m.jsonl", root / "tb", root / "mlflow.db"
    d = make_daemon(f"""experiment_tracker:
  - {{type: file, config: {{path: '{out}'}}}}
  - {{type: mlflow, config: {{tracking_uri: 'sqlite:///{db}'}}}}
  - {{type: tensorboard, config: {{log_dir: '{tb}'}}}}
""").start()
    wait_for(lambda: len(d.status()["trackers"]) == 3, timeout=60, what="trackers loaded")
    d.client(CLIENT, MAGNUS_RUN_ID="ml1", MAGNUS_RUN_TAG="mlvalues", MAGNUS_STEP_NAME="train")

    m = d.metrics("ml1", "train")
    assert m is not None
    assert m["n"] == 7 and type(m["n"]) is int and m["flag"] is True
    assert m["hist"] == [0, 1, 2] and m["w"] == [[1.0, 1.0], [1.0, 1.0]] and m["half"] == 0.5
    assert [m[f"loss_{i}"] for i in range(1, 21)] == [i / 4 for i in range(1, 21)]
    assert [m[f"acc_{i}"] for i in range(1, 21)] == pytest.approx([i / 8 for i in range(1, 21)])

    wait_for(lambda: all(t["caught_up"] and t["state"] == "running"
                         for t in d.status()["trackers"]), timeout=120, what="caught up")

    lines = {(e["key"], e["step"]): e["value"]
             for e in map(json.loads, out.read_text().splitlines())}
    assert lines[("loss", 3)] == 0.75 and lines[("hist", 0)] == [0, 1, 2]
    assert lines[("n", 0)] == 7 and lines[("flag", 0)] is True

    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = c.search_runs([c.get_experiment_by_name("mlvalues").experiment_id])
    loss = sorted((x.step, x.value) for x in c.get_metric_history(run.info.run_id, "loss"))
    assert loss == [(i, i / 4) for i in range(1, 21)]
    acc = sorted((x.step, x.value) for x in c.get_metric_history(run.info.run_id, "acc"))
    assert [s for s, _ in acc] == list(range(1, 21))
    assert run.data.metrics["n"] == 7 and run.data.tags["flag"] == "true"
    assert run.data.tags["hist"] == "[0, 1, 2]"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tb / "ml1"), size_guidance={"scalars": 0})
    ea.Reload()
    assert [(s.step, s.value) for s in ea.Scalars("loss")] == [(i, i / 4) for i in range(1, 21)]
    assert all(math.isclose(s.value, s.step / 8, rel_tol=1e-6) for s in ea.Scalars("acc"))
    assert [(s.step, s.value) for s in ea.Scalars("n")] == [(0, 7.0)]


def test_values_ml_code_cannot_record_raise_at_the_call_site(daemon: Daemon) -> None:
    r = daemon.client("""
        import numpy as np, torch
        from magnus import track_this, flush
        bad = [np.zeros(100_000), torch.zeros(1_000_000), np.complex128(1j),
               np.datetime64("2020-01-01"), object()]
        for v in bad:
            try:
                track_this(v=v, other=1)
            except (TypeError, ValueError) as e:
                print(type(e).__name__, e)
            else:
                raise SystemExit(f"{type(v)} was accepted")
        track_this(ok=np.float64(1.5))
        assert flush(10)
    """, MAGNUS_RUN_ID="ml2")
    lines = r.stdout.splitlines()
    assert len(lines) == 5 and all("metric 'v'" in x for x in lines)
    assert "larger than the limit" in lines[0] and "larger than the limit" in lines[1]
    assert daemon.metrics("ml2") == {"ok": 1.5}  # nothing of a refused call
