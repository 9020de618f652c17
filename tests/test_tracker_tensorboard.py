"""The `tensorboard` tracker through the real daemon: event files read back with TensorBoard's
own EventAccumulator, per-step directories, the client context, and the missing-extra hint."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Daemon, wait_for

pytest.importorskip("tensorboardX")
pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)


def tb_cfg(log_dir: Path, per_step: bool = False) -> str:
    extra = ", per_step: true" if per_step else ""
    return (f"experiment_tracker:\n  - type: tensorboard\n    name: tb\n"
            f"    config: {{log_dir: '{log_dir}'{extra}}}\n")


def loaded(d: Daemon) -> list[dict[str, Any]]:
    """The trackers, once the daemon has loaded them (it serves clients while they load)."""
    return wait_for(lambda: d.status()["trackers"], what="trackers loaded")  # type: ignore[no-any-return]


def drained(d: Daemon) -> bool:
    ts = d.status()["trackers"]
    return bool(ts) and all(t["pending"] == 0 and t["state"] == "running" for t in ts)


def load(path: Path) -> EventAccumulator:
    assert path.is_dir(), f"{path} missing; have {sorted(p.name for p in path.parent.iterdir())}"
    ea = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def scalars(ea: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(s.step, s.value) for s in ea.Scalars(tag)]


def texts(ea: EventAccumulator) -> dict[str, list[tuple[int, str]]]:
    """Text summaries by key (tensorboardX's add_text stores them as `key/text_summary`)."""
    out = {}
    for tag in ea.Tags()["tensors"]:
        assert ea.SummaryMetadata(tag).plugin_data.plugin_name == "text", tag
        assert tag.endswith("/text_summary"), tag
        out[tag.removesuffix("/text_summary")] = [
            (t.step, b"".join(t.tensor_proto.string_val).decode()) for t in ea.Tensors(tag)]
    return out


def test_every_scalar_with_its_step_and_the_other_values_as_text(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    logs = root / "tb"
    d = make_daemon(tb_cfg(logs)).start()
    t0 = time.time()
    d.client("""
        from magnus import track_this, flush
        for i in range(1, 2001):
            track_this(step=i, loss=i / 7)
        track_this(step=3, note="hello world", flag=True, off=False, nothing=None,
                   cfg={"lr": 0.1, "name": "adam", "sched": {"warmup": 5, "kind": "cos"}},
                   items=[1, "a", None], n=42)
        assert flush(10)
    """, MAGNUS_RUN_ID="tb1", MAGNUS_RUN_TAG="t", MAGNUS_STEP_NAME="train")
    wait_for(lambda: drained(d), what="tensorboard tracker drained")
    assert sorted(p.name for p in logs.iterdir()) == ["tb1"]  # per_step off: no step directory
    ea = load(logs / "tb1")

    loss = scalars(ea, "loss")
    assert [s for s, _ in loss] == list(range(1, 2001))
    for (step, got) in loss:
        assert math.isclose(got, step / 7, rel_tol=1e-6), (step, got)  # float32 in the file
    walls = [s.wall_time for s in ea.Scalars("loss")]
    assert t0 - 1 <= walls[0] <= walls[-1] <= time.time()  # the events' own timestamps

    assert sorted(ea.Tags()["scalars"]) == ["cfg.lr", "cfg.sched.warmup", "loss", "n"]
    assert scalars(ea, "n") == [(3, 42.0)]
    assert [(s, round(v, 6)) for s, v in scalars(ea, "cfg.lr")] == [(3, 0.1)]
    assert scalars(ea, "cfg.sched.warmup") == [(3, 5.0)]
    assert texts(ea) == {
        "note": [(3, "hello world")], "flag": [(3, "True")], "off": [(3, "False")],
        "nothing": [(3, "null")], "cfg.name": [(3, "adam")], "cfg.sched.kind": [(3, "cos")],
        "items": [(3, '[1, "a", null]')]}

    st = d.status()["trackers"][0]
    assert st["type"] == "tensorboard" and st["errors"] == 0 and st["delivered"] == 2007


def test_per_step_puts_each_step_in_its_own_directory(make_daemon: Callable[..., Daemon],
                                                     root: Path) -> None:
    logs = root / "tb"
    d = make_daemon(tb_cfg(logs, per_step=True)).start()
    d.client("""
        from magnus import track_this, flush, step
        for i in range(1, 101):
            track_this(step=i, loss=float(i))
        with step("ev/al"):
            track_this(step=5, acc=0.5, split="val")
        track_this(step=101, loss=101.0)
        assert flush(10)
    """, MAGNUS_RUN_ID="exp/2", MAGNUS_STEP_NAME="train")
    wait_for(lambda: drained(d), what="tensorboard tracker drained")
    run = logs / "exp%2F2"  # run ids and step names are made single, safe path components
    assert sorted(p.name for p in logs.iterdir()) == ["exp%2F2"]
    assert sorted(p.name for p in run.iterdir()) == ["ev%2Fal", "train"]
    train, ev = load(run / "train"), load(run / "ev%2Fal")
    assert ea_tags(train) == (["loss"], [])
    assert scalars(train, "loss") == [(i, float(i)) for i in range(1, 102)]
    assert ea_tags(ev) == (["acc"], ["split/text_summary"])
    assert scalars(ev, "acc") == [(5, 0.5)]
    assert texts(ev) == {"split": [(5, "val")]}
    # Each step's writer is closed when the step ends (the client's exit ends "train").
    assert len(list((run / "ev%2Fal").glob("events.out.tfevents.*"))) == 1
    if Path("/proc/self/fd").is_dir():
        assert d.proc is not None
        pid = d.proc.pid
        wait_for(lambda: not open_under(pid, run), what="step writers closed")


def open_under(pid: int, path: Path) -> list[str]:
    """Files under `path` that process `pid` holds open (Linux /proc)."""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(path) + os.sep):
            out.append(target)
    return out


def ea_tags(ea: EventAccumulator) -> tuple[list[str], list[str]]:
    tags = ea.Tags()
    return sorted(tags["scalars"]), sorted(tags["tensors"])


def test_client_context_is_a_writer_on_the_runs_directory(make_daemon: Callable[..., Daemon],
                                                          root: Path) -> None:
    logs = root / "tb"
    d = make_daemon(tb_cfg(logs)).start()
    loaded(d)  # asked before the trackers have loaded, the context is None
    r = d.client("""
        from magnus import track_this, flush, get_experiment_tracker_context
        track_this(step=1, loss=0.25)
        with get_experiment_tracker_context() as w:
            print(type(w).__module__, type(w).__name__, w.logdir)
            w.add_scalar("user_metric", 1.5, 7)
            w.add_text("user_note", "by hand", 2)
        track_this(step=2, loss=0.125)
        assert flush(10)
    """, MAGNUS_RUN_ID="ctx1", MAGNUS_STEP_NAME="train")
    mod, cls, logdir = r.stdout.split()
    assert (mod.split(".")[0], cls, logdir) == ("tensorboardX", "SummaryWriter",
                                                str(logs / "ctx1"))
    wait_for(lambda: drained(d), what="tensorboard tracker drained")
    run = logs / "ctx1"
    files = sorted(p.name for p in run.glob("events.out.tfevents.*"))
    assert len(files) == 2 and sum(".client." in f for f in files) == 1, files
    ea = load(run)  # the user's data and the daemon's, in one TensorBoard run
    assert scalars(ea, "user_metric") == [(7, 1.5)]
    assert scalars(ea, "loss") == [(1, 0.25), (2, 0.125)]
    assert texts(ea) == {"user_note": [(2, "by hand")]}
    if Path("/proc/self/fd").is_dir():  # without per_step the run's writer stays open
        (worker,) = [t["pid"] for t in d.status()["trackers"]]  # in the tracker's process
        assert [Path(f).name for f in open_under(worker, run)] == [
            f for f in files if ".magnusd." in f]


def test_missing_extra_is_named_by_check_config_and_status(make_daemon: Callable[..., Daemon],
                                                          root: Path) -> None:
    fake = root / "fake"
    (fake / "tensorboardX").mkdir(parents=True)
    (fake / "tensorboardX" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'tensorboardX'\")\n")
    d = make_daemon(tb_cfg(root / "tb"), extra_env={"PYTHONPATH": str(fake)})
    r = d.cli("check-config", check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "magnusd[tensorboard]" in out and "tensorboardX" in out, out

    d.start()
    (t,) = loaded(d)
    st: dict[str, Any] = d.status()
    assert t["name"] == "tb" and t["state"] == "disabled", t
    assert "magnusd[tensorboard]" in t["last_error"], t
    assert "magnusd[tensorboard]" in (st["config"]["error"] or "")
    # The rest of the daemon works: the run log still gets the values.
    d.client("from magnus import track_this, flush\ntrack_this(a=1)\nassert flush(10)",
             MAGNUS_RUN_ID="noextra")
    assert d.metrics("noextra") == {"a": 1}
    assert not (root / "tb").exists()


def test_evicted_writers_reopen_as_new_files_and_lose_nothing(tmp_path: Path) -> None:
    """In-process: with few writers allowed, runs take turns; every reopen in the same second
    is a new event file (tensorboardX names files by the second), never an overwrite."""
    from magnusd import Event
    from magnusd.trackers.tensorboard import TensorboardConfig, TensorboardTracker

    t = TensorboardTracker(TensorboardConfig(log_dir=str(tmp_path)))
    t.MAX_WRITERS = 2
    t.start()
    runs = [f"r{i}" for i in range(5)]
    now = time.time()
    for step in range(1, 11):
        t.log_batch([Event(r, "", "s", "v", step * 10 + i, step, now) for i, r in enumerate(runs)])
    t.close()
    for i, r in enumerate(runs):
        assert len(list((tmp_path / r).glob("events.out.tfevents.*"))) == 10
        assert scalars(load(tmp_path / r), "v") == [(s, float(s * 10 + i)) for s in range(1, 11)]
