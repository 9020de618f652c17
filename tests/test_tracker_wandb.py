"""The `wandb` tracker through the real daemon, in W&B offline mode (design §9).

The offline run directories are read back by the W&B file format itself (a `.wandb` file is a
LevelDB-style log of `wandb_internal_pb2.Record` protobufs; wandb 0.31 ships no Python reader).
"""

from __future__ import annotations

import importlib.util
import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Daemon, wait_for

needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                 reason="the wandb extra is not installed")

RUN_EXPORT = "from magnus import track_this, flush, step, get_experiment_tracker_context\n"


def script(body: str) -> str:
    return RUN_EXPORT + textwrap.dedent(body)


# -- reading .wandb files -------------------------------------------------------------------

def _records(path: Path) -> Iterator[bytes]:
    from magnusd.trackers.wandb import offline_records

    return offline_records(path)


class WandbFile:
    """The run record, history rows (in order) and summary updates of one offline run."""

    def __init__(self, path: Path) -> None:
        from wandb.proto import wandb_internal_pb2 as pb

        self.path = path
        self.run: Any = None
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        for raw in _records(path):
            r = pb.Record()
            r.ParseFromString(raw)
            kind = r.WhichOneof("record_type")
            if kind == "run" and self.run is None:
                self.run = r.run
            elif kind == "history":
                self.history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                     for i in r.history.item})
            elif kind == "summary":
                for u in r.summary.update:
                    self.summary[u.key or "/".join(u.nested_key)] = json.loads(u.value_json)

    @property
    def start(self) -> float:
        return float(self.run.start_time.seconds + self.run.start_time.nanos / 1e9)


def offline_runs(base: Path, wandb_id: str) -> list[WandbFile]:
    """Every offline directory of W&B run `wandb_id`, oldest first."""
    pattern = f"**/wandb/offline-run-*-{wandb_id}/run-{wandb_id}.wandb"  # clients: client-<pid>/
    files = [WandbFile(p) for p in base.glob(pattern)]
    return sorted(files, key=lambda f: f.start)


def series(files: list[WandbFile], key: str) -> list[tuple[int, Any]]:
    """(magnus step, value) of `key` over the history rows, in order."""
    return [(row["magnus/step/" + key.split(".")[0]], row[key])
            for f in files for row in f.history if key in row]


# -- helpers --------------------------------------------------------------------------------

def wandb_cfg(base: Path, name: str = "wb") -> str:
    return (f"experiment_tracker:\n  - type: wandb\n    name: {name}\n"
            f"    config: {{project: magnus-test, mode: offline, dir: '{base}'}}\n")


def drained(d: Daemon) -> bool:
    ts = d.status()["trackers"]
    return bool(ts) and all(t["pending"] == 0 and t["state"] == "running" for t in ts)


@pytest.fixture
def wb(root: Path) -> Path:
    return root / "wb"


# -- tests ----------------------------------------------------------------------------------

@needs_wandb
def test_offline_run_holds_every_point_in_step_order(make_daemon: Callable[..., Daemon],
                                                     wb: Path) -> None:
    d = make_daemon(wandb_cfg(wb)).start()
    d.client(script("""
        for i in range(1, 2001):
            if i % 10 == 0:
                track_this(step=i, loss=i / 4, acc=i / 2000)
            else:
                track_this(step=i, loss=i / 4)
        track_this(note="hello", flag=True, nothing=None, cfg={"a": 1, "b": {"c": "x"}},
                   items=[1, "two", 3.5], _step=7)
        with step("inner"):
            track_this(k=1)
        assert flush(10)
    """), MAGNUS_RUN_ID="wb1", MAGNUS_RUN_TAG="g1", MAGNUS_STEP_NAME="train")
    wait_for(lambda: drained(d), timeout=60, what="wandb tracker drained")
    st = d.status()["trackers"][0]
    assert st["errors"] == 0 and st["delivered"] == 2000 + 200 + 6 + 1
    assert d.stop() == 0  # close() finishes the W&B runs: everything is on disk

    files = offline_runs(wb, "wb1")
    assert len(files) == 1
    f = files[0]
    assert (f.run.run_id, f.run.run_group, f.run.display_name) == ("wb1", "g1", "wb1")
    assert f.run.project == "magnus-test"
    assert series(files, "loss") == [(i, i / 4) for i in range(1, 2001)]
    assert series(files, "acc") == [(i, i / 2000) for i in range(10, 2001, 10)]
    # one row per (key set, step): loss and acc of the same step share a row
    assert sum(1 for r in f.history if "loss" in r) == 2000
    assert all("acc" in r for r in f.history if "loss" in r and r["magnus/step/loss"] % 10 == 0)
    # every non-numeric value is kept, with its step metric
    assert series(files, "note") == [(0, "hello")]
    assert series(files, "flag") == [(0, True)]
    assert series(files, "nothing") == [(0, None)]
    assert series(files, "cfg.a") == [(0, 1)]
    assert series(files, "cfg.b.c") == [(0, "x")]
    assert series(files, "items") == [(0, '[1, "two", 3.5]')]
    assert [(r["magnus/step/magnus/_step"], r["magnus/_step"])
            for r in f.history if "magnus/_step" in r] == [(0, 7)]
    assert series(files, "k") == [(0, 1)]
    assert f.summary["magnus/status/inner"] == "SUCCESS"
    # W&B's own step advanced once per row, so nothing was logged with a step W&B would drop
    steps = [r["_step"] for r in f.history]
    assert steps == list(range(len(steps)))


@needs_wandb
def test_lower_steps_later_and_after_a_restart_are_kept(make_daemon: Callable[..., Daemon],
                                                        wb: Path) -> None:
    d = make_daemon(wandb_cfg(wb)).start()
    emit = RUN_EXPORT + "for i in range({a}, {b}):\n    track_this(step=i, loss=i + {off})\n" \
        "assert flush(10)\n"

    def emit_steps(a: int, b: int, off: float) -> None:
        d.client(emit.format(a=a, b=b, off=off), MAGNUS_RUN_ID="re/run 1", MAGNUS_RUN_TAG="",
                 MAGNUS_STEP_NAME="s")

    emit_steps(1, 21, 0)
    wait_for(lambda: drained(d) and d.status()["trackers"][0]["delivered"] == 20,
             what="first client delivered")
    emit_steps(1, 11, 0.5)  # lower than the last step (20)
    wait_for(lambda: drained(d) and d.status()["trackers"][0]["delivered"] == 30,
             what="second client delivered")
    assert d.stop() == 0
    d.start()  # a restart resumes the same W&B run (offline: a second directory, same id)
    emit_steps(5, 8, 0.25)
    wait_for(lambda: drained(d) and d.status()["trackers"][0]["delivered"] == 3,
             what="third client delivered")
    assert d.stop() == 0

    from magnusd.trackers.wandb import wandb_run_id

    wid = wandb_run_id("re/run 1")
    assert wid.startswith("re-run-1-") and len(wid) == len("re-run-1-") + 8
    files = offline_runs(wb, wid)
    assert len(files) == 2
    assert all(f.run.display_name == "re/run 1" and f.run.run_group == "" for f in files)
    assert series(files, "loss") == ([(i, i) for i in range(1, 21)]
                                     + [(i, i + 0.5) for i in range(1, 11)]
                                     + [(i, i + 0.25) for i in range(5, 8)])


@needs_wandb
def test_client_context_is_a_wandb_run_resumed_by_id(make_daemon: Callable[..., Daemon],
                                                    wb: Path) -> None:
    d = make_daemon(wandb_cfg(wb)).start()
    # The daemon answers before its trackers have loaded; a context asked for meanwhile is None.
    wait_for(lambda: drained(d), what="tracker loaded")
    r = d.client(script("""
        track_this(step=1, loss=0.5)
        assert flush(10)
        with get_experiment_tracker_context() as run:
            import wandb
            assert isinstance(run, wandb.Run), type(run)
            run.log({"user_metric": 1})
            print(run.id, run.name, run.group)
    """), MAGNUS_RUN_ID="ctx:1", MAGNUS_RUN_TAG="gc")
    from magnusd.trackers.wandb import wandb_run_id

    wid = wandb_run_id("ctx:1")
    assert r.stdout.split() == [wid, "ctx:1", "gc"]
    wait_for(lambda: drained(d), what="drained")
    assert d.stop() == 0
    files = offline_runs(wb, wid)
    assert len(files) == 2  # the daemon's and the client's, both the same W&B run
    user = [f for f in files if any("user_metric" in row for row in f.history)]
    assert len(user) == 1
    assert [row["user_metric"] for row in user[0].history if "user_metric" in row] == [1]
    assert (user[0].run.run_group, user[0].run.display_name) == ("gc", "ctx:1")
    assert series(files, "loss") == [(1, 0.5)]


def test_missing_extra_is_named_by_check_config_and_status(make_daemon: Callable[..., Daemon],
                                                          root: Path, wb: Path) -> None:
    fake = root / "fake"
    (fake / "wandb").mkdir(parents=True)
    (fake / "wandb" / "__init__.py").write_text("raise ImportError(\"No module named 'wandb'\")\n")
    d = make_daemon(wandb_cfg(wb), extra_env={"PYTHONPATH": str(fake)})
    r = d.cli("check-config", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "magnusd[wandb]" in r.stderr and "wb (wandb)" not in r.stdout
    d.start()
    st = wait_for(lambda: (s := d.status())["trackers"] and s, what="the tracker loaded")
    (t,) = st["trackers"]
    assert t["name"] == "wb" and t["state"] == "disabled"
    assert "pip install 'magnusd[wandb]'" in t["last_error"]
    assert st["config"]["error"] and "magnusd[wandb]" in st["config"]["error"]
