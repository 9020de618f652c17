"""The viewer's JSON API, its security and the terminal views (design §12), against a real
daemon and real clients."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import MAGNUSD, Daemon, wait_for
from harness import bulk_runs_spool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Viewer:
    def __init__(self, d: Daemon, port: int) -> None:
        self.d, self.port = d, port
        url = d.cli("ui", "--print-url").stdout.strip()
        self.token = url.split("token=", 1)[1]
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, token: bool = True, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, Any, dict[str, str]]:
        sep = "&" if "?" in path else "?"
        url = self.base + path + (f"{sep}token={self.token}" if token else "")
        req = urllib.request.Request(url, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null"), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null"), dict(e.headers)

    def json(self, path: str) -> Any:
        status, body, _ = self.get(path)
        assert status == 200, (path, status, body)
        return body


@pytest.fixture
def viewer(make_daemon: Callable[..., Daemon]) -> Viewer:
    port = free_port()
    d = make_daemon("", extra_env={"MAGNUS_UI_LISTEN": f"127.0.0.1:{port}"}).start()
    return Viewer(d, port)


def test_runs_run_and_series_answer_what_clients_tracked(viewer: Viewer) -> None:
    d = viewer.d
    for run, tag, ok in (("v1", "exp", True), ("v2", "exp", False), ("v3", "other", True)):
        d.client(f"""
            from magnus import step, track_this, flush
            try:
                with step("train"):
                    for i in range(1, 201):
                        track_this(step=i, loss=1 / i, acc=i / 200)
                    track_this(lr=0.01, note="n")
                    assert {ok}, "boom"
            except AssertionError:
                pass
            assert flush(10)
        """, MAGNUS_RUN_ID=run, MAGNUS_RUN_TAG=tag)
    runs = wait_for(lambda: len(r := viewer.json("/api/runs")) == 3 and r, what="3 runs")
    assert {r["run_id"] for r in runs} == {"v1", "v2", "v3"}
    v2 = next(r for r in runs if r["run_id"] == "v2")
    assert v2["status"] == "FAIL" and v2["tag"] == "exp" and v2["steps"] == ["train"]
    assert v2["last_step"] == 200 and v2["hosts"] == [os.uname().nodename]
    assert v2["started"] <= v2["updated"]
    assert {r["run_id"] for r in viewer.json("/api/runs?tag=exp")} == {"v1", "v2"}
    assert [r["run_id"] for r in viewer.json("/api/runs?status=FAIL")] == ["v2"]

    run = viewer.json("/api/runs/v1")
    assert run["status"] == "SUCCESS"
    assert run["steps"]["train"]["user_defined_metrics"] == {"lr": 0.01, "note": "n"}
    series = {(s["step_name"], s["key"]): s for s in run["series"]}
    assert series[("train", "loss")]["points"] == 200
    assert series[("train", "loss")]["last_step"] == 200
    assert series[("train", "acc")]["last_value"] == 1.0

    s = viewer.json("/api/runs/v1/series?key=loss&step_name=train")
    assert s["steps"] == list(range(1, 201)) and s["values"] == [1 / i for i in range(1, 201)]
    assert s["downsampled"] is False and len(s["times"]) == 200
    s = viewer.json("/api/runs/v1/series?key=loss&step_name=train&max_points=20")
    assert s["downsampled"] is True and len(s["steps"]) <= 20 and s["values"][0] == 1.0
    assert viewer.get("/api/runs/nope")[0] == 404
    assert viewer.get("/api/runs/v1/series?key=nope&step_name=train")[0] == 404
    assert viewer.get("/api/runs/v1/series?step_name=train")[0] == 400


def test_a_million_point_series_keeps_its_spike_in_two_thousand(viewer: Viewer) -> None:
    viewer.d.client("""
        from magnus import track_this, flush
        for i in range(1, 1_000_001):
            track_this(step=i, loss=1000.0 if i == 777_777 else 1.0 / i)
        assert flush(60)
    """, MAGNUS_RUN_ID="big")
    wait_for(lambda: any(s["points"] == 1_000_000 for s in viewer.json("/api/runs/big")["series"]),
             timeout=60, what="the series written")
    t0 = time.monotonic()
    s = viewer.json("/api/runs/big/series?key=loss&step_name=main&max_points=2000")
    took = time.monotonic() - t0
    assert s["points"] == 1_000_000 and s["downsampled"] and len(s["values"]) <= 2000
    assert max(s["values"]) == 1000.0 and s["steps"][s["values"].index(1000.0)] == 777_777
    assert s["steps"] == sorted(s["steps"]) and s["steps"][0] == 1
    print(f"1M-point series downsampled to {len(s['values'])} in {took:.3f} s")


def test_ten_thousand_runs_are_listed(viewer: Viewer) -> None:
    d = viewer.d
    assert d.stop() == 0
    spool = d.data / "spool"
    (spool / "bulk.spool").write_bytes(bulk_runs_spool(10_000))
    d.start()
    wait_for(lambda: len(r := viewer.json("/api/runs")) == 10_000
             and all(x["status"] == "SUCCESS" and x["last_step"] == 1 for x in r), timeout=120,
             what="10,000 runs listed, each with its end and its point")
    t0 = time.monotonic()
    again = viewer.json("/api/runs")
    took = time.monotonic() - t0
    assert len(again) == 10_000 and {r["last_step"] for r in again} == {1}
    assert len(viewer.json("/api/runs?tag=odd")) == 5_000
    print(f"/api/runs with 10,000 runs: {took:.3f} s")


def test_server_sent_events_carry_new_points_and_step_marks(viewer: Viewer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", viewer.port, timeout=30)
    conn.request("GET", f"/api/events?run_id=live1&token={viewer.token}")
    resp = conn.getresponse()
    assert resp.status == 200
    assert (resp.getheader("content-type") or "").startswith("text/event-stream")
    assert resp.readline() == b": live\n"
    proc = viewer.d.popen("""
        from magnus import step, track_this, flush
        with step("s"):
            for i in range(1, 101):
                track_this(step=i, loss=i / 100)
        assert flush(10)
    """, MAGNUS_RUN_ID="live1")
    got: dict[int, float] = {}
    marks: list[tuple[str, str]] = []
    deadline = time.monotonic() + 30
    while (len(got) < 100 or len(marks) < 2) and time.monotonic() < deadline:
        line = resp.readline()
        if line.startswith(b"data: "):
            msg = json.loads(line[6:])
            for s in msg["series"]:
                assert (s["run_id"], s["step_name"], s["key"]) == ("live1", "s", "loss")
                got.update(zip(s["steps"], s["values"], strict=True))
            marks += [(m["kind"], m["status"]) for m in msg["marks"]]
    proc.communicate(timeout=30)
    conn.close()
    assert got == {i: i / 100 for i in range(1, 101)}
    assert marks == [("start", ""), ("end", "SUCCESS")]


def test_only_the_token_and_the_own_host_get_in(viewer: Viewer) -> None:
    assert viewer.get("/api/runs", token=False)[0] == 401
    assert viewer.get("/", token=False)[0] == 401
    assert viewer.get("/api/runs?token=wrong", token=False)[0] == 401
    assert viewer.get("/api/runs", headers={"Host": "evil.example:80"})[0] == 403
    assert viewer.get("/api/runs", method="POST")[0] == 405
    status, _, headers = viewer.get("/api/runs")
    assert status == 200 and "access-control-allow-origin" not in {k.lower() for k in headers}
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    assert viewer.get("/api/runs", token=False, headers={"Cookie": cookie})[0] == 200
    token_file = Path(viewer.d.sock + ".token")
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert viewer.token not in viewer.d.log.read_text()
    assert viewer.get("/favicon.ico")[0] == 204
    with urllib.request.urlopen(f"{viewer.base}/?token={viewer.token}", timeout=10) as r:
        assert b"magnusd" in r.read() and r.headers["content-type"].startswith("text/html")


def test_a_port_in_use_is_reported_not_fatal(make_daemon: Callable[..., Daemon],
                                             root: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        d = make_daemon("", extra_env={"MAGNUS_UI_LISTEN": f"127.0.0.1:{port}"}).start()
        ui = d.status()["ui"]
        assert ui["url"] is None and f"127.0.0.1:{port}" in ui["error"]
        d.client("from magnus import track_this, flush\ntrack_this(x=1)\nassert flush(10)",
                 MAGNUS_RUN_ID="stillok")
        assert d.metrics("stillok") == {"x": 1}
        r = d.cli("ui", "--print-url", check=False)
        assert r.returncode != 0 and "no viewer" in r.stderr
    finally:
        busy.close()
    assert d.stop() == 0
    d.start(args=("--no-ui",))
    assert d.status()["ui"] == {"url": None, "error": "disabled (--no-ui)", "live_streams": 0}


# -- the terminal ----------------------------------------------------------------------------


def test_tail_prints_live_events(daemon: Daemon) -> None:
    tail = subprocess.Popen([MAGNUSD, "tail", "--run", "t1"], env=daemon.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert tail.stderr is not None
        assert tail.stderr.readline().startswith("following ")  # from the journal's end on
        daemon.client("""
            from magnus import step, track_this, flush
            with step("train"):
                track_this(step=3, loss=0.25)
            track_this(step=1, other=1)
            assert flush(10)
        """, MAGNUS_RUN_ID="t1")
        daemon.client("from magnus import track_this, flush\ntrack_this(y=2)\nassert flush(5)",
                      MAGNUS_RUN_ID="t2")
        lines: list[str] = []
        assert tail.stdout is not None
        while len(lines) < 6:
            lines.append(tail.stdout.readline().strip().split(" ", 1)[1])
    finally:
        tail.terminate()
        tail.communicate(timeout=10)
    assert lines == ["t1 train started", "t1 train loss@3 = 0.25", "t1 train ended SUCCESS",
                     "t1 main started", "t1 main other@1 = 1", "t1 main ended SUCCESS"]


def test_compare_and_plot(daemon: Daemon) -> None:
    for run, scale in (("c1", 1.0), ("c2", 2.0)):
        daemon.client(f"""
            from magnus import track_this, flush
            for i in range(1, 101):
                track_this(step=i, loss={scale} / i)
            assert flush(10)
        """, MAGNUS_RUN_ID=run)
    out = daemon.cli("compare", "c1", "c2").stdout.splitlines()
    assert out[0].split() == ["metric", "c1", "last", "/", "min", "/", "max", "c2", "last",
                              "/", "min", "/", "max"]
    (row,) = [x for x in out if x.startswith("loss")]
    assert row.split() == ["loss", "0.01", "/", "0.01", "/", "1", "0.02", "/", "0.02", "/", "2"]
    assert daemon.cli("compare", "c1", "nope", check=False).returncode != 0
    plot = daemon.cli("show", "c1", "--plot", "loss").stdout
    assert "c1 main/loss  (100 points)" in plot
    assert any("\u2800" <= ch <= "\u28ff" for ch in plot)  # braille dots: the curve
    assert daemon.cli("show", "c1", "--plot", "nope", check=False).returncode != 0


def test_series_grow_across_a_restart(viewer: Viewer) -> None:
    d = viewer.d
    track = "from magnus import track_this, flush\nfor i in range({a}, {b}):\n" \
            "    track_this(step=i, x=i)\nassert flush(10)\n"
    d.client(track.format(a=1, b=1001), MAGNUS_RUN_ID="grow")
    assert d.stop() == 0
    d.start()
    d.client(track.format(a=1001, b=2001), MAGNUS_RUN_ID="grow")
    st = wait_for(lambda: (s := d.status())["runlog"]["applied_seq"] == s["journal"]["last_seq"]
                  and s, what="the run store caught up")
    assert st["runlog"]["error"] is None
    s = Viewer(d, viewer.port).json("/api/runs/grow/series?key=x&step_name=main")
    assert s["steps"] == list(range(1, 2001)) and s["downsampled"] is False
