"""The MLflow tracker against real MLflow: a sqlite store and a local `mlflow server`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PY, Daemon, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

MLFLOW = str(Path(PY).parent / "mlflow")

TRACK = """
from magnus import track_this, flush
for s in range({first}, {last} + 1):
    track_this(step=s, loss=s / 10)
track_this(note="hi", ok=True, cfg={{"lr": 0.1, "opt": {{"name": "adam"}}}}, sizes=[1, 2],
           nothing=None, **{{"bad key!": 3}})
assert flush(20)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.root / "mlflow-server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{self.root}/server.db",
             "--default-artifact-root", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)
        log.close()
        wait_for(self.healthy, timeout=120, every=0.25, what="mlflow server")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                return bool(r.status == 200)  # urlopen's answer is untyped
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    s = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    s.start()
    yield s
    s.stop()


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def the_run(uri: str, experiment: str, run_id: str) -> Any:
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    assert runs[0].info.run_name == run_id
    return runs[0]


def drained(d: Daemon) -> bool:
    ts = d.status()["trackers"]
    return bool(ts) and all(t["pending"] == 0 and t["state"] == "running" for t in ts)


def mlflow_cfg(uri: str, name: str = "mlflow") -> str:
    return (f"experiment_tracker:\n  type: mlflow\n  name: {name}\n"
            f"  config: {{tracking_uri: '{uri}'}}\n")


@pytest.mark.parametrize("backend", ["sqlite", "server"])
@pytest.mark.timeout(180)  # "server" starts the module's `mlflow server`: 30-52 s here
def test_every_point_lands_in_one_run(make_daemon: Callable[..., Daemon], root: Path,
                                      request: pytest.FixtureRequest, backend: str) -> None:
    uri = (f"sqlite:///{root}/mlflow.db" if backend == "sqlite"
           else request.getfixturevalue("server").uri)
    tag = f"exp-{backend}"
    d = make_daemon(mlflow_cfg(uri)).start()
    d.client(TRACK.format(first=1, last=5000), MAGNUS_RUN_ID=f"m-{backend}", MAGNUS_RUN_TAG=tag,
             MAGNUS_STEP_NAME="train")
    wait_for(lambda: drained(d), timeout=120, what="mlflow tracker drained")
    # the step's end is delivered after its last event (marks are not counted in `pending`)
    run = wait_for(lambda: (r := the_run(uri, tag, f"m-{backend}")).info.status == "FINISHED"
                   and r, timeout=30, what="the run FINISHED")
    hist = client(uri).get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in hist) == [(s, s / 10) for s in range(1, 5001)]
    tags = run.data.tags
    assert tags["magnus.run_id"] == f"m-{backend}" and tags["magnus.tag"] == tag
    assert tags["magnus.step.train"] == "SUCCESS" and run.info.status == "FINISHED"
    assert (tags["note"], tags["ok"], tags["cfg.opt.name"], tags["sizes"], tags["nothing"]) == (
        "hi", "true", "adam", "[1, 2]", "null")
    assert run.data.metrics["cfg.lr"] == 0.1 and run.data.metrics["bad key_"] == 3
    assert "ok" not in run.data.metrics  # bool is not a number


def test_restart_and_a_second_process_write_the_same_run(make_daemon: Callable[..., Daemon],
                                                        root: Path) -> None:
    uri = f"sqlite:///{root}/same.db"
    d = make_daemon(mlflow_cfg(uri)).start()
    d.client(TRACK.format(first=1, last=100), MAGNUS_RUN_ID="same1", MAGNUS_STEP_NAME="s")
    wait_for(lambda: drained(d), timeout=120, what="drained")
    d.stop()
    d.start()
    d.client(TRACK.format(first=101, last=200), MAGNUS_RUN_ID="same1", MAGNUS_STEP_NAME="s")
    wait_for(lambda: drained(d), timeout=120, what="drained again")
    run = the_run(uri, "Default", "same1")
    assert len(client(uri).get_metric_history(run.info.run_id, "loss")) == 200


@pytest.mark.timeout(240)  # starts `mlflow server` twice: 65-72 s here
def test_server_outage_loses_nothing(make_daemon: Callable[..., Daemon], root: Path) -> None:
    srv = MlflowServer(root)
    srv.start()
    try:
        d = make_daemon(mlflow_cfg(srv.uri)).start()
        p = d.popen("""
            import time
            from magnus import track_this, flush
            for s in range(1, 3001):
                track_this(step=s, loss=s / 10)
                time.sleep(0.01)          # ~30 s of steady emission
            print(flush(30))
        """, MAGNUS_RUN_ID="outage", MAGNUS_RUN_TAG="o", MAGNUS_STEP_NAME="s")
        wait_for(lambda: d.status()["trackers"][0]["delivered"] > 0, timeout=60,
                 what="delivering")
        srv.stop()
        down = time.monotonic()
        st = wait_for(lambda: (t := d.status()["trackers"][0])["state"] == "failing" and t,
                      timeout=30, what="tracker failing")
        assert st["last_error"]
        pending_during = wait_for(lambda: (t := d.status()["trackers"][0])["pending"] > 100
                                  and t["pending"], timeout=30, what="pending growing")
        time.sleep(max(0.0, 20 - (time.monotonic() - down)))
        srv.start()
        out, err = p.communicate(timeout=120)
        assert out.strip() == "True", err
        wait_for(lambda: drained(d), timeout=120, what="caught up after the outage")
        run = the_run(srv.uri, "o", "outage")
        hist = client(srv.uri).get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in hist) == list(range(1, 3001)), (
            f"pending during the outage: {pending_during}")
        assert d.status()["trackers"][0]["errors"] > 0
    finally:
        srv.stop()


def test_client_context_is_the_same_mlflow_run(make_daemon: Callable[..., Daemon],
                                               root: Path) -> None:
    uri = f"sqlite:///{root}/ctx.db"
    d = make_daemon(mlflow_cfg(uri)).start()
    d.client("""
        import mlflow
        from magnus import track_this, flush, get_experiment_tracker_context
        track_this(step=1, loss=0.5)
        assert flush(10)
        with get_experiment_tracker_context() as run:
            mlflow.log_text("hello from the user", "notes/hello.txt")
            mlflow.log_param("batch_size", 32)
            print(run.info.run_id)
    """, MAGNUS_RUN_ID="ctx-ml", MAGNUS_RUN_TAG="ctx", MAGNUS_STEP_NAME="s")
    wait_for(lambda: drained(d), timeout=120, what="drained")
    run = the_run(uri, "ctx", "ctx-ml")
    assert run.data.params == {"batch_size": "32"}
    assert [f.path for f in client(uri).list_artifacts(run.info.run_id, "notes")] == [
        "notes/hello.txt"]
    assert client(uri).get_metric_history(run.info.run_id, "loss")[0].value == 0.5


def test_missing_extra_is_named(make_daemon: Callable[..., Daemon], root: Path) -> None:
    fake = root / "fake"
    (fake / "mlflow").mkdir(parents=True)
    (fake / "mlflow" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'mlflow'\")\n")
    cfg = root / "m.yaml"
    cfg.write_text(mlflow_cfg("sqlite:///x.db"))
    env = {**os.environ, "PYTHONPATH": str(fake)}
    r = subprocess.run([str(Path(PY).parent / "magnusd"), "check-config", str(cfg)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "magnusd[mlflow]" in r.stderr, r.stderr
    d = make_daemon(mlflow_cfg("sqlite:///x.db"), extra_env={"PYTHONPATH": str(fake)}).start()
    t = d.status()["trackers"]
    st = wait_for(lambda: (t := d.status()["trackers"]) and t[0], what="tracker listed")
    assert st["state"] == "disabled" and "magnusd[mlflow]" in st["last_error"], t


def test_a_failed_step_fails_the_run(make_daemon: Callable[..., Daemon], root: Path) -> None:
    uri = f"sqlite:///{root}/fail.db"
    d = make_daemon(mlflow_cfg(uri)).start()
    d.client("""
        import magnus
        with magnus.step("ok"):
            magnus.track_this(a=1)
        try:
            with magnus.step("bad"):
                magnus.track_this(b=2)
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        assert magnus.flush(10)
    """, MAGNUS_RUN_ID="fail-ml")
    run = wait_for(lambda: (r := the_run(uri, "Default", "fail-ml")).info.status == "FAILED"
                   and r, timeout=120, what="the run FAILED")
    assert run.data.tags["magnus.step.ok"] == "SUCCESS"
    assert run.data.tags["magnus.step.bad"] == "FAIL"


def test_a_killed_client_fails_the_mlflow_run_set_up_with_magnus_server_url(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    uri = f"sqlite:///{root}/killed.db"
    d = make_daemon(f"experiment_tracker:\n  type: mlflow\n  config: {{server_url: '{uri}'}}\n"
                    ).start()  # magnus's name for tracking_uri
    ready = root / "ready"
    p = d.popen(f"""
import time, magnus
with magnus.step("train"):
    magnus.track_this(step=1, loss=0.5)
    assert magnus.flush(10)
    open({str(ready)!r}, "w").close()
    time.sleep(600)
""", MAGNUS_RUN_ID="killed-ml")
    wait_for(ready.exists, timeout=60, what="the client in its step")
    p.kill()
    p.communicate(timeout=10)
    run = wait_for(lambda: (r := the_run(uri, "Default", "killed-ml")).info.status == "FAILED"
                   and r, timeout=120, what="the MLflow run FAILED")
    assert run.data.tags["magnus.step.train"] == "FAIL"
    assert [(m.step, m.value) for m in client(uri).get_metric_history(run.info.run_id, "loss")
            ] == [(1, 0.5)]


def test_requests_mlflow_refuses_as_invalid_are_permanent_errors(tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

    from magnusd import Event, PermanentError
    from magnusd.trackers.mlflow import MlflowConfig, MlflowTracker

    t = MlflowTracker(MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/p.db"))
    t.state_dir = str(tmp_path)
    t.start()
    events = [Event("perm1", "", "main", "loss", 0.5, 1, time.time())]
    t.log_batch(events)  # the real store takes it

    def refuse(code: int) -> Callable[..., None]:
        def log_batch(*args: Any, **kwargs: Any) -> None:
            raise MlflowException("refused", error_code=code)
        return log_batch

    t._client.log_batch = refuse(INVALID_PARAMETER_VALUE)
    with pytest.raises(PermanentError, match="refused"):
        t.log_batch(events)
    t._client.log_batch = refuse(INTERNAL_ERROR)  # may pass: retried, not dead-lettered
    with pytest.raises(MlflowException):
        t.log_batch(events)
    t.close()
