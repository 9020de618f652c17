"""Many hosts, one record (design §13, §14): edge daemons forward their journals through a real
`nats-server` (JetStream, on loopback, a temporary store) to a central daemon, which journals
each original record exactly once, across outages and kills on every side."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from conftest import Daemon, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("nats-server") is None,
                                 reason="nats-server is not installed (make test installs it)")]
pytest.importorskip("nats")
STREAM = """
    from magnus import step, track_this, flush
    with step("train"):
        for i in range(1, {n} + 1):
            track_this(step=i, x=i)
            if i % {every} == 0:
                assert flush(60)
    assert flush(60)
"""


# About 30 s of streaming: still going through the outages and kills below.
SLOW = """
    import time
    from magnus import step, track_this, flush
    with step("train"):
        for i in range(1, {n} + 1):
            track_this(step=i, x=i)
            if i % {every} == 0:
                assert flush(60)
                time.sleep(1)
    assert flush(60)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nats:
    """A real nats-server with JetStream on 127.0.0.1, its store under the test's directory."""

    def __init__(self, root: Path, auth: str = "") -> None:
        self.port = free_port()
        self.store = root / "nats-store"
        self.conf = root / "nats.conf"
        self.conf.write_text(f"listen: 127.0.0.1:{self.port}\nmax_payload: 8MB\n"
                             f"jetstream {{ store_dir: '{self.store}' }}\n{auth}")
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log = root / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nats:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["nats-server", "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.up, timeout=20, what="nats-server listening")
        return self

    def up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def nats_server(root: Path) -> Iterator[Nats]:
    n = Nats(root).start()
    yield n
    n.kill()


def edge_cfg(url: str, extra: str = "") -> str:
    return f"experiment_tracker:\n  - {{type: nats, config: {{url: '{url}'}}}}\n{extra}"


def central_cfg(url: str, extra: str = "") -> str:
    return (f"sources:\n  - type: nats\n    config: {{url: '{url}', stream: MAGNUS, "
            f"durable: central}}\n{extra}")


def make_host(make_daemon: Callable[..., Daemon], root: Path, name: str, config: str) -> Daemon:
    d = make_daemon(config, extra_env={"MAGNUS_HOST": name, "MAGNUS_UI_LISTEN": "127.0.0.1:0"})
    d.root = root / name
    d.root.mkdir()
    d.sock = str(d.root / "s" / "d.sock")
    d.data = d.root / "data"
    d.config = d.root / "config.yaml"
    d.config.write_text(config)
    d.log = d.root / "daemon.log"
    return d


def xs(d: Daemon, run_id: str, step: str = "train") -> dict[str, Any]:
    return (d.metrics(run_id, step) or {})


def forwarded(d: Daemon) -> bool:
    ts = d.status()["trackers"]
    return bool(ts) and all(t["caught_up"] for t in ts)


def complete(d: Daemon, run_id: str, n: int) -> dict[str, Any] | None:
    """The run's x values once all n of them are there (for wait_for)."""
    x = xs(d, run_id)
    return x if len(x) == n else None


def test_three_edges_one_central_every_event_once_with_its_host(
        make_daemon: Callable[..., Daemon], root: Path, nats_server: Nats) -> None:
    central = make_host(make_daemon, root, "central", central_cfg(nats_server.url)).start()
    edges = [make_host(make_daemon, root, f"host{i}", edge_cfg(nats_server.url)).start()
             for i in range(3)]
    clients = [e.popen(STREAM.format(n=100_000, every=10_000), MAGNUS_RUN_ID=f"run-h{i}")
               for i, e in enumerate(edges)]
    for c in clients:
        _, err = c.communicate(timeout=300)
        assert c.returncode == 0, err
    for e in edges:
        wait_for(partial(forwarded, e), timeout=120, what="edge forwarded")
    for i in range(3):
        m = wait_for(partial(complete, central, f"run-h{i}", 100_000), timeout=120,
                     what=f"run-h{i} complete at the central daemon")
        assert all(m[f"x_{k}"] == k for k in range(1, 100_001))
        (attempt,) = central.show(f"run-h{i}")["steps"]["train"]["attempts"]  # type: ignore[index]
        assert attempt["host"] == f"host{i}" and attempt["status"] == "SUCCESS"
    st = central.status()
    (src,) = st["sources"]
    assert src["state"] == "running" and src["errors"] == 0, (src, central.log_text())
    assert st["events_total"] == 300_000  # each original exactly once
    assert st["duplicates_skipped"] == 0


def test_a_job_across_two_hosts_is_one_run(make_daemon: Callable[..., Daemon], root: Path,
                                           nats_server: Nats) -> None:
    central = make_host(make_daemon, root, "central", central_cfg(nats_server.url)).start()
    edges = [make_host(make_daemon, root, f"node{i}", edge_cfg(nats_server.url)).start()
             for i in range(2)]
    procs = []
    for rank in range(4):
        e = edges[rank // 2]
        procs.append(e.popen("""
            import os
            from magnus import step, track_this, flush
            r = int(os.environ["RANK"])
            with step("train"):
                for i in range(1, 101):
                    track_this(step=i, loss=r * 1000 + i)
            assert flush(30)
        """, TORCHELASTIC_RUN_ID="job-77", RANK=str(rank), MAGNUS_HOST=f"node{rank // 2}"))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    log = wait_for(lambda: (r := central.show("job-77")) and r["status"] == "SUCCESS"
                   and len(r["steps"]["train"]["attempts"]) == 4 and r, timeout=120,
                   what="the job's four attempts at the central daemon")
    attempts = log["steps"]["train"]["attempts"]
    assert sorted((a["host"], a["rank"]) for a in attempts) == [
        ("node0", 0), ("node0", 1), ("node1", 2), ("node1", 3)]
    step = log["steps"]["train"]
    assert step["user_defined_metrics"] == {f"loss_{i}": i for i in range(1, 101)}
    assert sorted(step["rank_metrics"]) == ["1", "2", "3"]


@pytest.mark.timeout(240)  # outages of 20 s on each side; 38-49 s here
def test_outages_and_kills_on_every_side_lose_nothing_and_double_nothing(
        make_daemon: Callable[..., Daemon], root: Path, nats_server: Nats) -> None:
    central = make_host(make_daemon, root, "central", central_cfg(nats_server.url)).start()
    edge = make_host(make_daemon, root, "edge", edge_cfg(nats_server.url)).start()
    client = edge.popen(SLOW.format(n=150_000, every=5_000), MAGNUS_RUN_ID="chaos")
    wait_for(lambda: len(xs(central, "chaos")) > 10_000, timeout=120, what="flowing")
    nats_server.kill()  # the server down for a while, mid-stream
    wait_for(lambda: edge.status()["trackers"][0]["state"] == "failing", timeout=60,
             what="the edge's nats tracker failing")
    assert edge.status()["trackers"][0]["last_error"]
    time.sleep(20)  # a 20 s outage: the edge journals on meanwhile
    nats_server.start()  # the same store
    wait_for(lambda: len(xs(central, "chaos")) > 50_000, timeout=120, what="flowing again")
    central.kill9()  # the central daemon killed mid-stream
    central.start()
    wait_for(lambda: len(xs(central, "chaos")) > 80_000, timeout=120, what="flowing again")
    edge.kill9()  # the edge killed mid-forward: it re-sends its unacknowledged tail
    edge.start()
    _, err = client.communicate(timeout=300)  # the client spooled while its edge was down
    assert client.returncode == 0, err
    wait_for(lambda: forwarded(edge), timeout=120, what="edge forwarded everything")
    try:
        m = wait_for(lambda: len(x := xs(central, "chaos")) == 150_000 and x, timeout=120,
                     what="every event at the central daemon")
    except AssertionError:
        raise AssertionError((len(xs(central, "chaos")), edge.status()["trackers"],
                              central.status()["sources"], edge.log_text()[-1500:],
                              central.log_text()[-1500:])) from None
    assert all(m[f"x_{k}"] == k for k in range(1, 150_001))
    # nothing doubled: the central journal holds each original once
    assert central_events(central, "chaos") == 150_000


def central_events(d: Daemon, run_id: str) -> int:
    """Metric points of a run in the central journal (its run log copy), duplicates counted."""
    from magnus._protocol import Batch
    from magnusd._runlog import _message_decoder, _stored
    from magnusd._runstore import run_dirname

    n = 0
    for _, payload in _stored(str(d.data / "runs" / run_dirname(run_id) / "log")):
        msg = _message_decoder.decode(payload)
        if isinstance(msg, Batch) and msg.track:
            n += msg.count()
    return n


@pytest.mark.timeout(150)  # two waits of up to 60 s for the errors to be reported
def test_wrong_credentials_and_an_unreachable_server_are_status_errors(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    guarded = Nats(root, auth="authorization { token: right-token }\n").start()
    try:
        edge = make_host(make_daemon, root, "edge", f"experiment_tracker:\n  type: nats\n"
                         f"  config: {{url: '{guarded.url}', token: wrong-token}}\n").start()
        central = make_host(make_daemon, root, "central",
                            "sources:\n  - type: nats\n    config: {url: 'nats://127.0.0.1:1'}\n"
                            ).start()
        # nats-server answers a wrong token with -ERR and a close: a connection attempt may see
        # only the reset; a retry reads the authorization error
        t = wait_for(lambda: (t := edge.status()["trackers"])
                     and "authorization" in t[0]["last_error"].lower() and t[0],
                     timeout=60, what="the edge's authorization error")
        assert t["state"] == "failing" and "authorization" in t["last_error"].lower(), t
        assert "wrong-token" not in json.dumps(edge.status())
        s = wait_for(lambda: (s := central.status()["sources"]) and s[0]["state"] == "failing"
                     and s[0], timeout=60, what="the central's source error")
        assert s["last_error"] and s["errors"] >= 1
        assert edge.alive() and central.alive()
    finally:
        guarded.kill()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.timeout(240)  # an `mlflow server` start (its own wait allows 2 minutes), 24-33 s here
def test_the_central_daemon_feeds_one_mlflow_server_for_every_host(
        make_daemon: Callable[..., Daemon], root: Path, nats_server: Nats) -> None:
    from test_tracker_mlflow import MlflowServer, client

    server = MlflowServer(root)
    server.start()
    try:
        # the central daemon feeds MLflow; the fixture stops it
        make_host(make_daemon, root, "central", central_cfg(
            nats_server.url, f"experiment_tracker:\n  type: mlflow\n"
                             f"  config: {{tracking_uri: '{server.uri}'}}\n")).start()
        edges = [make_host(make_daemon, root, f"h{i}", edge_cfg(nats_server.url)).start()
                 for i in range(3)]
        for i, e in enumerate(edges):
            e.client(STREAM.format(n=3000, every=1000), MAGNUS_RUN_ID=f"team-{i}",
                     MAGNUS_RUN_TAG="team")
        c = client(server.uri)

        def histories() -> dict[str, list[int]] | None:
            exp = c.get_experiment_by_name("team")
            if exp is None:
                return None
            runs = c.search_runs([exp.experiment_id])
            got = {r.info.run_name: sorted(m.step for m in
                                           c.get_metric_history(r.info.run_id, "x"))
                   for r in runs}
            return got if len(got) == 3 and all(len(v) == 3000 for v in got.values()) else None

        got = wait_for(histories, timeout=180, every=1.0, what="three runs in MLflow")
        assert got == {f"team-{i}": list(range(1, 3001)) for i in range(3)}  # each point once
    finally:
        server.stop()
