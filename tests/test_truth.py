"""The run log tells the truth: attempts survive daemon restarts, dead processes end theirs,
environment metrics are recorded once, and status counts metric points (design §4, §6, §7)."""

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

# A client that runs one step in two halves, pausing between them until `go` exists.
TWO_HALVES = """
    import os, sys, time
    from magnus import step, track_this, flush
    with step("train"):
        for i in range(1, {n} + 1):
            track_this(step=i, loss=i)
        assert flush(60)
        open({ready!r}, "w").close()
        while not os.path.exists({go!r}):
            time.sleep(0.01)
        for i in range({n} + 1, 2 * {n} + 1):
            track_this(step=i, loss=i)
"""


def the_run(d: Daemon, run_id: str, status: str) -> dict[str, Any]:
    return wait_for(lambda: (r := d.show(run_id)) and r["status"] == status and r,  # type: ignore[no-any-return]
                    timeout=30, what=f"run {run_id} {status}")


def only_attempt(log: dict[str, Any], step: str) -> dict[str, Any]:
    attempts = log["steps"][step]["attempts"]
    assert len(attempts) == 1, attempts
    return attempts[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("stop", ["SIGTERM", "kill -9"])
def test_a_daemon_restart_mid_step_keeps_one_whole_attempt(make_daemon: Callable[..., Daemon],
                                                          root: Path, stop: str) -> None:
    d = make_daemon("").start()
    ready, go = root / "ready", root / "go"
    n = 300_000
    client = d.popen(TWO_HALVES.format(n=n, ready=str(ready), go=str(go)),
                     MAGNUS_RUN_ID="restart1")
    wait_for(ready.exists, timeout=120, what="the first half flushed")
    if stop == "SIGTERM":
        assert d.stop() == 0
    else:
        d.kill9()
    go.touch()
    _, err = client.communicate(timeout=120)  # leaves the step and exits: events spooled
    assert client.returncode == 0, err
    d.start()
    log = the_run(d, "restart1", "SUCCESS")
    step = log["steps"]["train"]
    assert step["status"] == "SUCCESS"
    attempt = only_attempt(log, "train")
    assert attempt["start_time"] and attempt["end_time"] and attempt["end_reason"] is None
    assert attempt["pid"] == client.pid and attempt["status"] == "SUCCESS"
    udm = step["user_defined_metrics"]
    assert len(udm) == 2 * n and udm[f"loss_{2 * n}"] == 2 * n
    assert d.status()["attempts"]["closed_dead"] == 0


def test_a_process_alive_through_a_restart_keeps_its_attempt_open(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    d = make_daemon("").start()
    ready, go = root / "ready", root / "go"
    client = d.popen(TWO_HALVES.format(n=1000, ready=str(ready), go=str(go)),
                     MAGNUS_RUN_ID="alive1")
    wait_for(ready.exists, timeout=60, what="the first half flushed")
    d.stop()
    d.start()
    # The restarted daemon has judged the open attempt at least twice (a check a second).
    wait_for(lambda: d.status()["uptime_s"] > 2.5, what="a few liveness checks")
    assert d.show("alive1")["status"] == "PROCESSING"  # type: ignore[index]
    go.touch()
    client.communicate(timeout=60)
    assert client.returncode == 0
    log = the_run(d, "alive1", "SUCCESS")
    assert only_attempt(log, "train")["end_reason"] is None
    assert d.status()["attempts"]["closed_dead"] == 0


KILLABLE = """
    import os, time
    from magnus import step, track_this, flush
    with step("train"):
        track_this(loss=0.5)
        assert flush(30)
        open({ready!r}, "w").close()
        time.sleep(600)
"""


def test_a_killed_client_fails_its_attempt_within_seconds(make_daemon: Callable[..., Daemon],
                                                          root: Path) -> None:
    out = root / "m.jsonl"
    d = make_daemon(f"experiment_tracker:\n  type: test-recorder\n  config: {{path: '{out}'}}\n"
                    ).start()
    wait_for(lambda: d.status()["trackers"], what="tracker loaded")
    ready = root / "ready"
    client = d.popen(KILLABLE.format(ready=str(ready)), MAGNUS_RUN_ID="killed1")
    wait_for(ready.exists, timeout=60, what="the client in its step")
    os.kill(client.pid, signal.SIGKILL)  # not reaped yet: the daemon can read how it ended
    t0 = time.monotonic()
    log = wait_for(lambda: (r := d.show("killed1")) and r["status"] == "FAIL" and r,
                   timeout=5, every=0.05, what="the run FAIL within 5 s of the kill")
    took = time.monotonic() - t0
    client.communicate(timeout=10)
    attempt = only_attempt(log, "train")
    assert attempt["status"] == "FAIL" and attempt["end_time"]
    assert attempt["end_reason"] == f"killed: SIGKILL (pid {client.pid})", attempt
    assert log["steps"]["train"]["status"] == "FAIL" and took < 5
    # trackers get the step end too (an MLflow run would be FAILED)
    lines = wait_for(lambda: [json.loads(x) for x in out.read_text().splitlines()
                              if "step_end" in x], what="the step end delivered")
    assert lines == [{"step_end": "train", "run_id": "killed1", "status": "FAIL"}]


def test_os_exit_inside_a_step_is_an_attempt_that_exited_without_ending(daemon: Daemon) -> None:
    r = daemon.client("""
        import os
        from magnus import step, track_this, flush
        with step("train"):
            track_this(x=1)
            assert flush(10)
            os._exit(3)
    """, check=False, MAGNUS_RUN_ID="exit1")
    assert r.returncode == 3
    log = the_run(daemon, "exit1", "FAIL")
    reason = only_attempt(log, "train")["end_reason"]
    assert reason and reason.startswith("exited without ending the step"), reason


def test_a_client_killed_while_the_daemon_was_down_is_closed_at_start(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    d = make_daemon("").start()
    ready = root / "ready"
    client = d.popen(KILLABLE.format(ready=str(ready)), MAGNUS_RUN_ID="down1")
    wait_for(ready.exists, timeout=60, what="the client in its step")
    d.stop()
    client.kill()
    client.communicate(timeout=10)
    d.start()
    log = the_run(d, "down1", "FAIL")
    attempt = only_attempt(log, "train")
    assert attempt["status"] == "FAIL" and "without ending the step" in attempt["end_reason"]


def test_a_process_that_spools_while_the_daemon_is_down_ends_success(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon("")  # never started before the client runs
    d.client("""
        from magnus import step, track_this
        with step("prepare"):
            track_this(rows=10)
        track_this(after=1)
    """, MAGNUS_RUN_ID="spool1", MAGNUS_EXIT_TIMEOUT="0.5")
    d.start()
    log = the_run(d, "spool1", "SUCCESS")
    assert only_attempt(log, "prepare")["status"] == "SUCCESS"
    assert only_attempt(log, "main")["status"] == "SUCCESS"


def test_a_pool_that_terminates_its_workers_does_not_fail_the_run(daemon: Daemon) -> None:
    daemon.client("""
        import multiprocessing as mp
        from magnus import track_this, flush

        def work(i):
            track_this(step=i + 1, w=i)
            assert flush(10)  # the pool kills its workers: what they buffer would be lost
            return i

        if __name__ == "__main__":
            track_this(workers=3)
            with mp.get_context("fork").Pool(3) as pool:   # __exit__ terminates the workers
                assert pool.map(work, range(30)) == list(range(30))
            assert flush(20)
    """, MAGNUS_RUN_ID="pool1")
    log = the_run(daemon, "pool1", "SUCCESS")
    attempt = only_attempt(log, "main")  # the parent's: workers work inside it
    assert attempt["status"] == "SUCCESS"
    assert {f"w_{i + 1}" for i in range(30)} <= set(log["steps"]["main"]["user_defined_metrics"])


# -- environment metrics ---------------------------------------------------------------------


def test_a_process_that_only_sets_environment_metrics_records_them(daemon: Daemon) -> None:
    daemon.client("import magnus", MAGNUS_RUN_ID="env1", MAGNUS_TRACK_answer="42")
    daemon.client("""
        import os, magnus
        os.environ["MAGNUS_TRACK_rows"] = '{"train": 10}'
    """, MAGNUS_RUN_ID="env2")
    assert the_run(daemon, "env1", "SUCCESS")["steps"]["main"]["user_defined_metrics"] == {
        "answer": 42}
    assert the_run(daemon, "env2", "SUCCESS")["steps"]["main"]["user_defined_metrics"] == {
        "rows": {"train": 10}}


def test_inherited_environment_metrics_make_no_phantom_step_and_are_recorded_once(
        daemon: Daemon) -> None:
    daemon.client("""
        import os
        from magnus import step, track_this, flush
        with step("train"):
            track_this(loss=1.0)
        with step("eval"):
            track_this(acc=0.5)
        with step("test"):
            os.environ["MAGNUS_TRACK_answer"] = "43"
        assert flush(10)
    """, MAGNUS_RUN_ID="env3", MAGNUS_TRACK_answer="42", MAGNUS_TRACK_note="hi")
    log = the_run(daemon, "env3", "SUCCESS")
    assert sorted(log["steps"]) == ["eval", "test", "train"]  # no phantom "main"
    steps = log["steps"]
    assert steps["train"]["user_defined_metrics"] == {"loss": 1.0, "answer": 42, "note": "hi"}
    assert steps["eval"]["user_defined_metrics"] == {"acc": 0.5}
    assert steps["test"]["user_defined_metrics"] == {"answer": 43}  # a new value: recorded


def test_environment_metrics_never_reach_trackers_or_the_event_count(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    out = root / "m.jsonl"
    d = make_daemon(f"experiment_tracker:\n  type: file\n  config: {{path: '{out}'}}\n").start()
    wait_for(lambda: d.status()["trackers"], what="tracker loaded")
    d.client("""
        from magnus import track_this, flush
        track_this(x=1)
        assert flush(10)
    """, MAGNUS_RUN_ID="env4", MAGNUS_TRACK_answer="42")
    st = wait_for(lambda: (s := d.status())["trackers"][0]["caught_up"] and s, what="caught up")
    assert st["events_total"] == 1 and st["trackers"][0]["delivered"] == 1
    assert [json.loads(x)["key"] for x in out.read_text().splitlines()] == ["x"]
    assert d.metrics("env4") == {"x": 1, "answer": 42}


# -- counting --------------------------------------------------------------------------------


def test_events_pending_and_delivered_count_metric_points(make_daemon: Callable[..., Daemon],
                                                          root: Path) -> None:
    out, gate = root / "m.jsonl", root / "fail"
    gate.touch()  # the tracker fails until this is removed: `pending` can be seen
    d = make_daemon(f"experiment_tracker:\n  type: test-recorder\n"
                    f"  config: {{path: '{out}', fail_file: '{gate}'}}\n").start()
    wait_for(lambda: d.status()["trackers"], what="tracker loaded")
    d.client("""
        from magnus import track_this, flush
        for i in range(1, 301):
            track_this(step=i, a=i, b=i, c=i)     # rows: three points a call
        for i in range(1, 101):
            track_this(step=i, loss=i)            # columnar: one point a call
        assert flush(10)
    """, MAGNUS_RUN_ID="unit2")
    st = d.status()
    (t,) = st["trackers"]
    assert st["events_total"] == 1000
    assert t["pending"] == 1000 and t["delivered"] == 0 and t["caught_up"] is False
    gate.unlink()
    t = wait_for(lambda: (x := d.status()["trackers"][0])["caught_up"] and x, timeout=60,
                 what="caught up")
    assert t["pending"] == 0 and t["delivered"] == 1000
    assert len(out.read_text().splitlines()) == 1000 + 1  # and the step end ("main")


def test_context_true_picks_the_tracker_for_the_client_context(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    d = make_daemon(f"""experiment_tracker:
  - type: test-recorder
    name: first
    config: {{path: '{root / "a.jsonl"}'}}
  - type: test-recorder
    name: second
    context: true
    config: {{path: '{root / "b.jsonl"}'}}
""").start()
    r = d.client("""
        from magnus import get_experiment_tracker_context
        with get_experiment_tracker_context() as ctx:
            print(ctx["path"])
    """, MAGNUS_RUN_ID="ctx1")
    assert r.stdout.strip() == str(root / "b.jsonl")


def test_context_true_on_two_trackers_is_a_config_error(daemon: Daemon, root: Path) -> None:
    cfg = root / "two.yaml"
    cfg.write_text("experiment_tracker:\n  - {type: file, name: a, context: true, "
                   "config: {path: /tmp/a}}\n  - {type: file, name: b, context: true, "
                   "config: {path: /tmp/b}}\n")
    r = daemon.cli("check-config", str(cfg), check=False)
    assert r.returncode != 0 and "context: true" in r.stdout + r.stderr


def test_the_checkpoint_keeps_open_attempts_privately(make_daemon: Callable[..., Daemon],
                                                      root: Path) -> None:
    d = make_daemon("").start()
    ready = root / "ready"
    client = d.popen(KILLABLE.format(ready=str(ready)), MAGNUS_RUN_ID="ck1")
    try:
        wait_for(ready.exists, timeout=60, what="the client in its step")
        d.stop()
        path = d.data / "runlog.checkpoint"
        ck = json.loads(path.read_text())
        assert [a[1:3] for a in ck["open_attempts"]] == [["ck1", ""]]
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        client.kill()
        client.communicate(timeout=10)
