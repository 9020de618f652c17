"""Trackers through the real daemon: plugins, fan-out, failures, hot reload (design §8–§9)."""

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


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def tracker(d: Daemon, name: str) -> dict[str, Any]:
    return next(t for t in d.status()["trackers"] if t["name"] == name)


def drained(d: Daemon, *names: str) -> bool:
    ts = [t for t in d.status()["trackers"] if not names or t["name"] in names]
    return bool(ts) and all(t["pending"] == 0 and t["state"] == "running" for t in ts)


def file_cfg(*defs: tuple[str, str, str]) -> str:
    out = ["experiment_tracker:"]
    for name, typ, cfg in defs:
        out += [f"  - type: {typ}", f"    name: {name}", f"    config: {cfg}"]
    return "\n".join(out) + "\n"


def test_plugin_receives_every_event_with_identity(make_daemon: Callable[..., Daemon],
                                                   root: Path) -> None:
    out = root / "rec.jsonl"
    d = make_daemon(file_cfg(("rec", "test-recorder", f"{{path: {out}}}"))).start()
    for run, tag, step in (("p1", "tagA", "train"), ("p2", "", "eval")):
        d.client("""
            from magnus import track_this, flush, step
            for i in range(1, 1001):
                track_this(step=i, loss=i / 4)
            track_this(note="x", flag=True, cfg={"a": 1})
            with step("inner"):
                track_this(k=1)
            assert flush(10)
        """, MAGNUS_RUN_ID=run, MAGNUS_RUN_TAG=tag, MAGNUS_STEP_NAME=step)
    wait_for(lambda: drained(d), what="recorder drained")
    got = lines(out)
    ev = [e for e in got if "key" in e]
    for run, tag, step in (("p1", "tagA", "train"), ("p2", "", "eval")):
        mine = [e for e in ev if e["run_id"] == run]
        loss = [(e["step"], e["value"]) for e in mine if e["key"] == "loss"]
        assert loss == [(i, i / 4) for i in range(1, 1001)]
        assert all(e["tag"] == tag for e in mine)
        assert {e["step_name"] for e in mine if e["key"] == "loss"} == {step}
        assert {(e["key"], json.dumps(e["value"])) for e in mine if e["step"] == 0} == {
            ("note", '"x"'), ("flag", "true"), ("cfg", '{"a": 1}'), ("k", "1")}
        assert next(e for e in mine if e["key"] == "k")["step_name"] == "inner"
        assert {"step_end": "inner", "run_id": run, "status": "SUCCESS"} in got
    st = tracker(d, "rec")
    assert st["delivered"] == len(ev) and st["errors"] == 0 and st["type"] == "test-recorder"


def test_env_metrics_are_not_sent_to_trackers(make_daemon: Callable[..., Daemon],
                                              root: Path) -> None:
    out = root / "f.jsonl"
    d = make_daemon(file_cfg(("f", "file", f"{{path: {out}}}"))).start()
    d.client("from magnus import track_this, flush\ntrack_this(a=1)\nassert flush(10)",
             MAGNUS_RUN_ID="env1", MAGNUS_TRACK_secret_env="7")
    wait_for(lambda: drained(d), what="drained")
    assert [e["key"] for e in lines(out)] == ["a"]
    assert d.metrics("env1") == {"a": 1, "secret_env": 7}


def test_hot_swap_under_load(make_daemon: Callable[..., Daemon], root: Path) -> None:
    a, b, c, extra = (root / f"{n}.jsonl" for n in ("a", "b", "c", "extra"))
    main = ("main", "file", "{path: %s}")
    d = make_daemon(file_cfg((main[0], main[1], main[2] % a))).start()
    n_total = 200_000
    client = d.popen(f"""
        import time
        from magnus import track_this, flush
        i = 0
        t0 = time.monotonic()
        while i < {n_total}:
            for _ in range(500):
                i += 1
                track_this(step=i, v=i)
            time.sleep(max(0.0, t0 + i / 25000 - time.monotonic()))  # 25k events/s, steady
        print(flush(30))
    """, MAGNUS_RUN_ID="swap", MAGNUS_STEP_NAME="s")
    cfg = d.config
    time.sleep(1.5)
    write_atomic(cfg, file_cfg((main[0], main[1], main[2] % b)))
    time.sleep(1.5)
    write_atomic(cfg, file_cfg((main[0], main[1], main[2] % c)))
    time.sleep(1.5)
    write_atomic(cfg, file_cfg((main[0], main[1], main[2] % c),
                               ("extra", "file", f"{{path: {extra}}}")))
    time.sleep(1.5)
    write_atomic(cfg, "experiment_tracker: [\n  - type: file\n")  # invalid YAML
    out, err = client.communicate(timeout=120)
    assert out.strip() == "True", err
    wait_for(lambda: drained(d, "main", "extra"), timeout=60, what="trackers drained")
    st = d.status()
    assert st["config"]["error"] and "YAML" in st["config"]["error"]
    assert sorted(t["name"] for t in st["trackers"]) == ["extra", "main"]
    # main: every event exactly once, in order, across the three files it wrote in turn
    steps = [e["step"] for p in (a, b, c) for e in lines(p)]
    assert steps == list(range(1, n_total + 1))
    assert all(lines(p) for p in (a, b, c)), "each definition of main delivered a share"
    # extra: every event from the moment it was added
    xs = [e["step"] for e in lines(extra)]
    assert xs and xs == list(range(xs[0], n_total + 1)) and xs[0] > 1
    m = d.metrics("swap", "s") or {}
    assert len(m) == n_total
    assert "rejected" in d.log_text() and "applied" in d.log_text()
    # the run log records the definitions that were loaded
    rc = (d.show("swap") or {})["run_config"]["experiment_tracker"]
    assert [t["name"] for t in rc] == ["main", "extra"]


def test_kill_9_while_a_tracker_is_behind(make_daemon: Callable[..., Daemon], root: Path) -> None:
    out = root / "slow.jsonl"
    d = make_daemon(file_cfg(("slow", "test-recorder", f"{{path: {out}, delay: 0.0002}}"))).start()
    n = 20_000
    d.client(f"""
        from magnus import track_this, flush
        for i in range(1, {n + 1}):
            track_this(step=i, v=i)
        assert flush(10)
    """, MAGNUS_RUN_ID="behind", MAGNUS_STEP_NAME="s")
    wait_for(lambda: len(lines(out)) > 0 and tracker(d, "slow")["pending"] > 0,
             what="tracker part-way")
    d.kill9()
    d.start()
    wait_for(lambda: drained(d), timeout=60, what="tracker caught up after restart")
    steps = [e["step"] for e in lines(out) if "key" in e]
    assert set(steps) == set(range(1, n + 1))
    dups = len(steps) - n
    print(f"duplicates after kill -9: {dups}")
    assert dups <= 5000  # at most the op in flight (fan-out OP_EVENTS)


def test_failing_tracker_does_not_slow_others_and_catches_up(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    flaky, good, fail = root / "flaky.jsonl", root / "good.jsonl", root / "FAIL"
    fail.touch()
    d = make_daemon(file_cfg(
        ("flaky", "test-recorder", f"{{path: {flaky}, fail_file: {fail}}}"),
        ("good", "file", f"{{path: {good}}}"))).start()
    r = d.client("""
        import time
        from magnus import track_this, flush
        t = time.monotonic()
        for i in range(1, 10001):
            track_this(step=i, v=i)
        assert flush(10)
        print(time.monotonic() - t)
    """, MAGNUS_RUN_ID="flaky1", MAGNUS_STEP_NAME="s")
    assert float(r.stdout) < 5
    wait_for(lambda: drained(d, "good"), what="good tracker drained")
    assert [e["step"] for e in lines(good)] == list(range(1, 10001))
    st = wait_for(lambda: (t := tracker(d, "flaky"))["errors"] >= 2 and t, what="retries")
    assert st["state"] == "failing" and st["pending"] == 10000
    assert "injected failure" in st["last_error"]
    assert not lines(flaky)
    fail.unlink()
    wait_for(lambda: drained(d, "flaky"), timeout=40, what="flaky caught up")
    assert [e["step"] for e in lines(flaky) if "key" in e] == list(range(1, 10001))
    assert tracker(d, "flaky")["state"] == "running"


def test_new_tracker_starts_at_head_backfill_replays_removed_stops(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    first, late, replay = root / "first.jsonl", root / "late.jsonl", root / "replay.jsonl"
    d = make_daemon(file_cfg(("first", "file", f"{{path: {first}}}"))).start()
    emit = ("from magnus import track_this, flush\n"
            "for i in range({a}, {b}): track_this(step=i, v=i)\nassert flush(10)")
    d.client(emit.format(a=1, b=101), MAGNUS_RUN_ID="bf")
    wait_for(lambda: drained(d), what="first drained")
    write_atomic(d.config, file_cfg(("first", "file", f"{{path: {first}}}"),
                                    ("late", "file", f"{{path: {late}}}"))
                 + f"  - type: file\n    name: replay\n    backfill: true\n"
                   f"    config: {{path: {replay}}}\n")
    wait_for(lambda: len(d.status()["trackers"]) == 3, what="reload")
    d.client(emit.format(a=101, b=151), MAGNUS_RUN_ID="bf")
    wait_for(lambda: drained(d), what="all drained")
    assert [e["step"] for e in lines(late)] == list(range(101, 151))
    assert [e["step"] for e in lines(replay)] == list(range(1, 151))
    write_atomic(d.config, file_cfg(("first", "file", f"{{path: {first}}}")))
    wait_for(lambda: [t["name"] for t in d.status()["trackers"]] == ["first"], what="removal")
    wait_for(lambda: not list((d.data / "trackers").glob("late*")), what="cursor removed")
    d.client(emit.format(a=151, b=161), MAGNUS_RUN_ID="bf")
    wait_for(lambda: drained(d), what="drained")
    assert [e["step"] for e in lines(late)] == list(range(101, 151))
    assert [e["step"] for e in lines(first)] == list(range(1, 161))


def test_sighup_reloads_and_unchanged_content_is_a_no_op(make_daemon: Callable[..., Daemon],
                                                       root: Path) -> None:
    out = root / "h.jsonl"
    d = make_daemon(file_cfg(("h", "file", f"{{path: {out}}}"))).start()
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload (SIGHUP)" in d.log_text() and "unchanged" in d.log_text(),
             what="SIGHUP handled")
    assert d.alive()


def test_trackers_that_fail_to_load_are_disabled_the_rest_run(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    out = root / "ok.jsonl"
    d = make_daemon("experiment_tracker:\n"
                    "  - {type: test-broken-import, name: bi}\n"
                    "  - {type: test-broken-construct, name: bc}\n"
                    f"  - {{type: file, name: ok, config: {{path: {out}}}}}\n").start()
    d.client("from magnus import track_this, flush\ntrack_this(a=1)\nassert flush(10)",
             MAGNUS_RUN_ID="dis")
    wait_for(lambda: drained(d, "ok"), what="ok drained")
    assert [e["key"] for e in lines(out)] == ["a"]
    st = {t["name"]: t for t in d.status()["trackers"]}
    assert st["bi"]["state"] == "disabled" and "failed to import" in st["bi"]["last_error"]
    assert st["bc"]["state"] == "disabled" and "cannot reach the backend" in st["bc"]["last_error"]
    assert d.status()["config"]["error"]


def test_reload_that_fails_to_construct_keeps_the_old_set(make_daemon: Callable[..., Daemon],
                                                         root: Path) -> None:
    out = root / "keep.jsonl"
    good = file_cfg(("keep", "file", f"{{path: {out}}}"))
    d = make_daemon(good).start()
    write_atomic(d.config, good + "  - {type: test-broken-construct, name: bc}\n")
    wait_for(lambda: d.status()["config"]["error"], what="rejected reload")
    assert "cannot reach the backend" in d.status()["config"]["error"]
    assert [t["name"] for t in d.status()["trackers"]] == ["keep"]
    d.client("from magnus import track_this, flush\ntrack_this(a=1)\nassert flush(10)",
             MAGNUS_RUN_ID="keep1")
    wait_for(lambda: [e["key"] for e in lines(out)] == ["a"], what="old set still delivers")
    write_atomic(d.config, good)  # back to valid: the error clears
    wait_for(lambda: d.status()["config"]["error"] is None, what="error cleared")


def test_secrets_from_variables_stay_out_of_the_run_log(make_daemon: Callable[..., Daemon],
                                                       root: Path) -> None:
    out = root / "s.jsonl"
    d = make_daemon("experiment_tracker:\n  type: file\n  config: {path: '${dest}'}\n",
                    extra_env={"MAGNUS_VAR_dest": str(out)}).start()
    d.client("from magnus import track_this, flush\ntrack_this(a=1)\nassert flush(10)",
             MAGNUS_RUN_ID="sec")
    wait_for(lambda: lines(out), what="delivered to the substituted path")
    rc = json.dumps((d.show("sec") or {})["run_config"])
    assert "${dest}" in rc and str(out) not in rc


def test_client_context_is_built_from_the_active_tracker(make_daemon: Callable[..., Daemon],
                                                        root: Path) -> None:
    out = root / "ctx.jsonl"
    d = make_daemon(file_cfg(("rec", "test-recorder", f"{{path: {out}}}"))).start()
    r = d.client("""
        import json
        from magnus import get_experiment_tracker_context
        with get_experiment_tracker_context() as c:
            print(json.dumps(c))
    """, MAGNUS_RUN_ID="ctx1", MAGNUS_RUN_TAG="t", MAGNUS_STEP_NAME="s")
    c = json.loads(r.stdout)
    (worker,) = [t["pid"] for t in d.status()["trackers"]]
    assert c == {"run_id": "ctx1", "tag": "t", "step_name": "s", "path": str(out),
                 "served_by": worker}  # context_state ran in the tracker's worker process
    assert d.proc is not None and worker != d.proc.pid


@pytest.mark.parametrize(
    "cfg", ["", "experiment_tracker:\n  type: file\n  config: {path: /tmp/x}\n"])
def test_no_context_without_a_context_capable_tracker(daemon: Daemon, cfg: str) -> None:
    write_atomic(daemon.config, cfg)
    r = daemon.client("""
        from magnus import get_experiment_tracker_context
        with get_experiment_tracker_context() as c:
            print(c)
    """)
    assert r.stdout.strip() == "None"


def test_retention_and_disk_cap(make_daemon: Callable[..., Daemon], root: Path) -> None:
    out, fail, stuck = root / "r.jsonl", root / "FAIL", root / "stuck.jsonl"
    small = {"MAGNUS_JOURNAL_SEGMENT_BYTES": "65536"}
    d = make_daemon(file_cfg(("r", "file", f"{{path: {out}}}")), extra_env=small).start()
    emit = ("from magnus import track_this, flush\n"
            "for i in range(1, 50001): track_this(step=i, v=i)\nassert flush(10)")
    d.client(emit, MAGNUS_RUN_ID="ret")
    wait_for(lambda: drained(d), what="drained")
    # every consumer passed the old segments: they go (checked every few seconds)
    wait_for(lambda: d.status()["journal"]["segments"] <= 2, timeout=20, what="segments deleted")
    assert not d.status()["journal"]["cap_hit"]
    d.stop()
    # A tracker that never delivers would keep the journal forever: the cap bounds it.
    fail.touch()
    d.extra_env = small | {"MAGNUS_JOURNAL_MAX_BYTES": "300000"}
    write_atomic(d.config, file_cfg(("stuck", "test-recorder",
                                     f"{{path: {stuck}, fail_file: {fail}}}")))
    d.start()
    d.client(emit, MAGNUS_RUN_ID="cap")
    st = wait_for(lambda: (s := d.status())["journal"]["cap_hit"] and s, timeout=20,
                  what="cap reported")
    assert st["journal"]["bytes"] <= 300000 + 65536 * 2
    assert st["journal"]["cap_deleted_segments"] > 0
    assert "over its cap" in d.log_text()
    m = d.metrics("cap") or {}
    assert len(m) == 50000  # the run log is not subject to the cap
