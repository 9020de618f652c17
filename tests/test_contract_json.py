"""The JSON contracts, byte for byte: `magnusd status --json` (design §6), `magnusd show RUN
--json` and `magnusd runs --json` (§7), and the viewer's run API (§12), against golden files.

A real daemon with a `file` tracker serves runs that cover the fields: several steps, a failed
step, environment metrics, a rank other than 0, and an attempt whose process was killed with
kill -9. Values that vary from one run of the test to the next (times, pids, sequence numbers,
sizes, paths, ports) are replaced by their JSON type; everything else, and every key with its
order, must match the golden files exactly. `MAGNUS_RECORD_GOLDEN=1` writes the golden files
again (review the diff: it is a change of contract).
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Daemon, wait_for

GOLDEN = Path(__file__).parent / "golden"
RECORD = os.environ.get("MAGNUS_RECORD_GOLDEN") == "1"

# Paths (with "*" for any key or index) whose values vary between runs of this test.
VOLATILE: dict[str, list[tuple[str, ...]]] = {
    "status": [
        ("pid",), ("uptime_s",), ("messages_total",), ("clients",), ("config", "loaded_at"),
        ("trackers", "*", "cursor"), ("trackers", "*", "pid"), ("trackers", "*", "rss_mb"),
        ("trackers", "*", "in_flight_s"),
        ("journal", "last_seq"), ("journal", "durable_seq"), ("journal", "bytes"),
        ("runlog", "applied_seq"), ("runlog", "checkpoint_seq"), ("ui", "url"),
    ],
    "show": [
        ("steps", "*", "attempts", "*", "start_time"), ("steps", "*", "attempts", "*", "end_time"),
        ("steps", "*", "attempts", "*", "host"), ("steps", "*", "attempts", "*", "pid"),
    ],
    "runs": [("*", "updated")],
    "api_runs": [("*", "started"), ("*", "updated"), ("*", "hosts", "*")],
    "api_run": [
        ("steps", "*", "attempts", "*", "start_time"), ("steps", "*", "attempts", "*", "end_time"),
        ("steps", "*", "attempts", "*", "host"), ("steps", "*", "attempts", "*", "pid"),
    ],
}


def _type(v: Any) -> str:
    return f"<{'null' if v is None else type(v).__name__}>"


def _matches(path: tuple[Any, ...], pattern: tuple[str, ...]) -> bool:
    return len(path) == len(pattern) and all(p == "*" or p == k for k, p in zip(path, pattern,
                                                                                 strict=True))


def normalize(obj: Any, kind: str, root: str, path: tuple[Any, ...] = ()) -> Any:
    """`obj` with its volatile values replaced by their type (`<int>`, `<str>`, `<null>` …), the
    test's temporary directory by `<root>` and pids inside messages by `<pid>`."""
    if any(_matches(path, p) for p in VOLATILE[kind]):
        return _type(obj)
    if isinstance(obj, dict):
        return {k: normalize(v, kind, root, (*path, k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [normalize(v, kind, root, (*path, i)) for i, v in enumerate(obj)]
    if isinstance(obj, str):
        return re.sub(r"pid \d+", "pid <pid>", obj.replace(root, "<root>"))
    return obj


def check(name: str, got: Any, kind: str, root: Path) -> None:
    text = json.dumps(normalize(got, kind, str(root)), indent=1) + "\n"
    path = GOLDEN / f"{name}.json"
    if RECORD:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name}: the JSON contract changed (see {path})"


def test_normalize_keeps_key_order_and_types() -> None:
    """The comparison can fail: a renamed key, a reordered key, a changed type all show."""
    def text(obj: Any) -> str:
        return json.dumps(normalize(obj, "status", "/r"))

    base = text({"pid": 3, "a": 1, "b": {"c": 2}})
    assert base == text({"pid": 4, "a": 1, "b": {"c": 2}})  # a volatile value
    assert base != text({"a": 1, "pid": 3, "b": {"c": 2}})  # key order
    assert base != text({"pid": 3, "a": 1.0, "b": {"c": 2}})  # int → float
    assert base != text({"pid": 3, "A": 1, "b": {"c": 2}})  # a key's name
    assert base != text({"pid": 3.0, "a": 1, "b": {"c": 2}})  # a volatile value's type
    assert base != text({"pid": 3, "a": 1, "b": {"c": 3}})  # a stable value
    assert normalize({"pid": 7}, "status", "/r") == {"pid": "<int>"}
    assert normalize({"pid": None}, "status", "/r") == {"pid": "<null>"}


TRAIN = """
    from magnus import step, track_this, flush
    with step("train"):
        for i in range(1, 4):
            track_this(step=i, loss=1 / i)
        track_this(answer=42, note="x", cfg={"a": [1, 2]}, ok=True)
        track_this(step=2, loss=0.75)
    try:
        with step("eval"):
            track_this(acc=0.5)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert flush(30)
"""
RANK1 = """
    from magnus import step, track_this, flush
    with step("train"):
        track_this(step=1, loss=2.0)
        track_this(world=2)
    assert flush(30)
"""
KILLABLE = """
    import time
    from magnus import step, track_this, flush
    with step("train"):
        track_this(loss=0.5)
        assert flush(30)
        open({ready!r}, "w").close()
        time.sleep(600)
"""


def _api(base: str, token: str, path: str) -> Any:
    with urllib.request.urlopen(f"{base}{path}?token={token}", timeout=30) as r:
        assert r.status == 200
        return json.loads(r.read())


def test_status_show_runs_and_viewer_json_match_the_golden_files(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    out = root / "f.jsonl"
    d = make_daemon(f"experiment_tracker:\n  - type: file\n    name: f\n"
                    f"    config: {{path: '{out}'}}\n").start()
    wait_for(lambda: d.status()["trackers"][0]["state"] == "running", what="tracker running")
    d.client(TRAIN, MAGNUS_RUN_ID="g1", MAGNUS_RUN_TAG="golden", MAGNUS_TRACK_lr="0.1",
             MAGNUS_TRACK_note="env")
    d.client(RANK1, MAGNUS_RUN_ID="g1", MAGNUS_RUN_TAG="golden", RANK="1")
    ready = root / "ready"
    client = d.popen(KILLABLE.format(ready=str(ready)), MAGNUS_RUN_ID="g2")
    wait_for(ready.exists, timeout=60, what="the client in its step")
    os.kill(client.pid, signal.SIGKILL)
    wait_for(lambda: (r := d.show("g2")) and r["status"] == "FAIL", what="g2 FAIL")
    client.communicate(timeout=10)
    wait_for(lambda: (r := d.show("g1")) and r["status"] == "FAIL", what="g1 FAIL")

    def settled() -> dict[str, Any] | None:
        st = d.status()
        t = st["trackers"][0]
        quiet = (t["caught_up"] and t["pending"] == 0 and t["in_flight_s"] is None
                 and st["runlog"]["applied_seq"] == st["journal"]["last_seq"]
                 and st["journal"]["durable_seq"] == st["journal"]["last_seq"])
        return st if quiet else None

    status = wait_for(settled, what="everything delivered and applied")
    check("status", status, "status", root)
    for run in ("g1", "g2"):
        check(f"show_{run}", d.show(run), "show", root)
    check("runs", json.loads(d.cli("runs", "--json").stdout), "runs", root)

    url = d.cli("ui", "--print-url").stdout.strip()
    base, token = url.split("/?token=", 1)
    check("api_runs", _api(base, token, "/api/runs"), "api_runs", root)
    check("api_run_g1", _api(base, token, "/api/runs/g1"), "api_run", root)


@pytest.mark.parametrize("name", ["status", "show_g1", "show_g2", "runs", "api_runs",
                                  "api_run_g1"])
def test_golden_files_are_committed(name: str) -> None:
    assert (GOLDEN / f"{name}.json").is_file()
