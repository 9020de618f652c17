"""Tracker isolation (design §9): each tracker in a supervised worker process. A plugin that
segfaults, exits, hangs, leaks or refuses events never takes the daemon, the run log or a
healthy tracker with it, says what happened in `status`, and catches up once fixed."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Daemon, wait_for

pytestmark = pytest.mark.slow
N = 100_000
STREAM = f"""
    from magnus import track_this, flush
    for i in range(1, {N} + 1):
        track_this(step=i, x=i)
    assert flush(60)
"""


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def config(root: Path, broken: str) -> str:
    return (f"experiment_tracker:\n"
            f"  - {{type: file, name: healthy, config: {{path: '{root / 'healthy.jsonl'}'}}}}\n"
            f"  - {{type: test-faulty, name: broken, {broken}}}\n")


def tracker(d: Daemon, name: str) -> dict[str, Any]:
    return next(t for t in d.status()["trackers"] if t["name"] == name)


def faulty(root: Path, fault: str, values: list[int], extra: str = "") -> str:
    return (f"{extra}config: {{path: '{root / 'broken.jsonl'}', fault: {fault}, "
            f"on_values: {values}, leak_mb: 40}}")


CASES = {
    # fault: (broken tracker definition extras, poisoned values, what status must say)
    "segfault": ("", [500], "SIGSEGV"),
    "exit": ("", [500], "exited with status 3"),
    "hang": ("timeout_s: 1, ", [500], "did not return within timeout_s=1"),
    "permanent": ("", [500, 70_000], None),
}


@pytest.mark.parametrize("fault", sorted(CASES))
def test_a_broken_tracker_never_touches_the_daemon_or_its_neighbours(
        make_daemon: Callable[..., Daemon], root: Path, fault: str) -> None:
    extra, poisoned, says = CASES[fault]
    cfg = root / "cfg" / "config.yaml"
    d = make_daemon(config(root, faulty(root, fault, poisoned, extra))).start()
    wait_for(lambda: len(d.status()["trackers"]) == 2, what="trackers loaded")
    assert d.proc is not None
    daemon_pid = d.proc.pid
    d.client(STREAM, MAGNUS_RUN_ID=f"iso-{fault}")

    # the healthy tracker and the run log get every event; the daemon never died
    wait_for(lambda: tracker(d, "healthy")["caught_up"], timeout=120, what="healthy caught up")
    assert [e["value"] for e in lines(root / "healthy.jsonl")] == list(range(1, N + 1))
    assert len(d.metrics(f"iso-{fault}") or {}) == N
    assert d.status()["pid"] == daemon_pid

    # the broken one says what happened, and gets past the events it cannot take
    broken = wait_for(lambda: (t := tracker(d, "broken"))["caught_up"] and t, timeout=180,
                      what=f"{fault} tracker past its poisoned events")
    assert broken["dead_lettered"] == len(poisoned), broken
    if says is not None:
        assert broken["restarts"] >= 5 and says in broken["last_error"], broken
    dead = lines(root / "data" / "trackers" / "broken.dead.jsonl")
    assert sorted(e["value"] for e in dead) == poisoned
    assert all(e["run_id"] == f"iso-{fault}" and e["key"] == "x" and e["error"] for e in dead)
    got = [e["value"] for e in lines(root / "broken.jsonl") if "value" in e]
    assert set(got) == set(range(1, N + 1)) - set(poisoned)  # at least once, repeats allowed

    # fixed by a config edit to a working definition of the same name: it carries on
    cfg.write_text(config(root, faulty(root, "none", [])))
    d.client("""
        from magnus import track_this, flush
        track_this(after_fix=1)
        assert flush(10)
    """, MAGNUS_RUN_ID=f"iso-{fault}-2")
    wait_for(lambda: (t := tracker(d, "broken"))["caught_up"] and t["state"] == "running"
             and any(e.get("key") == "after_fix" for e in lines(root / "broken.jsonl")),
             timeout=60, what="the fixed tracker caught up")
    assert d.status()["pid"] == daemon_pid


def test_a_leaking_tracker_is_restarted_between_ops(make_daemon: Callable[..., Daemon],
                                                    root: Path) -> None:
    # 40 MB kept for each of 20 events: about 800 MB unless the worker is recycled at 200
    values = list(range(5000, N + 1, 5000))
    d = make_daemon(config(root, faulty(root, "leak", values, "max_memory_mb: 200, "))).start()
    wait_for(lambda: len(d.status()["trackers"]) == 2, what="trackers loaded")
    d.client(STREAM, MAGNUS_RUN_ID="leak1")
    t = wait_for(lambda: (t := tracker(d, "broken"))["caught_up"] and t, timeout=180,
                 what="leaking tracker caught up")
    assert t["restarts"] >= 2 and "max_memory_mb=200" in t["last_error"], t
    assert t["dead_lettered"] == 0
    got = {e["value"] for e in lines(root / "broken.jsonl") if "value" in e}
    assert got == set(range(1, N + 1))
    assert tracker(d, "healthy")["caught_up"]


def test_sigterm_with_a_hung_tracker_exits_promptly_and_loses_nothing(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    d = make_daemon(config(root, faulty(root, "hang", [500]))).start()
    wait_for(lambda: len(d.status()["trackers"]) == 2, what="trackers loaded")
    d.client(STREAM, MAGNUS_RUN_ID="hung1")
    wait_for(lambda: (t := tracker(d, "broken"))["in_flight_s"] and t["in_flight_s"] > 0.5,
             what="the broken tracker hung in a call")
    assert d.proc is not None
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    took = time.monotonic() - t0
    assert took < 15, took
    workers = [int(p) for p in os.listdir("/proc") if p.isdigit()
               and _parent(int(p)) == d.proc.pid]
    assert workers == []  # no worker outlives the daemon
    # after a restart nothing is missing: the run log and the healthy tracker have it all
    d.start()
    assert len(d.metrics("hung1") or {}) == N
    wait_for(lambda: tracker(d, "healthy")["caught_up"], timeout=60, what="healthy caught up")
    assert {e["value"] for e in lines(root / "healthy.jsonl")} == set(range(1, N + 1))


def test_tracker_libraries_never_load_into_the_daemon(make_daemon: Callable[..., Daemon],
                                                      root: Path) -> None:
    d = make_daemon(f"""experiment_tracker:
  - {{type: mlflow, config: {{tracking_uri: 'sqlite:///{root}/m.db'}}}}
  - {{type: tensorboard, config: {{log_dir: '{root}/tb'}}}}
""").start()
    ts = wait_for(lambda: (ts := d.status()["trackers"]) and len(ts) == 2
                  and all(t["pid"] for t in ts) and ts, timeout=120, what="workers up")
    assert d.proc is not None
    maps = Path(f"/proc/{d.proc.pid}/maps").read_text()
    for library in ("sqlalchemy", "google/_upb", "numpy", "pyarrow"):  # their C extensions
        assert library not in maps, library
    worker_maps = " ".join(Path(f"/proc/{t['pid']}/maps").read_text() for t in ts)
    assert "sqlalchemy" in worker_maps or "numpy" in worker_maps  # the check can see them
    for t in ts:
        assert _parent(t["pid"]) == d.proc.pid


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def test_an_idle_tracker_is_not_taken_for_a_hung_one(make_daemon: Callable[..., Daemon],
                                                     root: Path) -> None:
    d = make_daemon(f"experiment_tracker:\n  - {{type: file, name: idle, timeout_s: 0.5, "
                    f"config: {{path: '{root / 'idle.jsonl'}'}}}}\n").start()
    wait_for(lambda: d.status()["trackers"] and d.status()["trackers"][0]["state"] == "running",
             what="the tracker started")
    wait_for(lambda: d.status()["uptime_s"] > 3, what="six timeouts' worth of idling")
    (t,) = d.status()["trackers"]
    assert t["restarts"] == 0 and t["in_flight_s"] is None, t
