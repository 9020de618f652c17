"""`mlflow`: one MLflow run per magnus run, delivered with `log_batch`.

Config: `tracking_uri` (sqlite:///…, file:…, http://…) and optional `experiment` (default: the
run's tag, or "Default" when it has none).

- Run: name = magnus run id; tags `magnus.run_id`, `magnus.tag` and `magnus.step.<name>` (the
  step's status: PROCESSING, then SUCCESS/FAIL). The MLflow run id is kept in the tracker's state
  directory (and found again by the `magnus.run_id` tag), so restarts and every process of a run
  write to the same MLflow run. A step end sets the run FINISHED, or FAILED once any step failed;
  events that arrive later set it RUNNING again.
- Values: int/float (not bool) → metrics at their step, with their timestamp (NaN and ±inf as
  they are: MLflow stores them). str → tag; bool and
  None → tag "true"/"false"/"null" (MLflow params are immutable, tags are not; the latest value of
  a key wins, the magnus run log keeps every step). dict → flattened to dotted keys, then the same
  rules per leaf. list → JSON-string tag. Tag values over MLflow's 8,000 characters are cut there
  and end with "…[truncated]".
- Keys are sanitised, never dropped: every character outside MLflow's `[\\w./\\- :]` becomes
  `_`; a key that MLflow would read as a path that is not its own (`a//b`, `./a`, `/a`, `a/`)
  gets its `/` replaced by `_`; keys are cut to 250 characters.
- Requests: ≤ 1000 metrics and ≤ 100 tags per `log_batch`, < 1 MB. MLflow's own HTTP retries are
  turned down (the daemon retries with backoff and keeps the events meanwhile).
- A request MLflow refuses as invalid (`INVALID_PARAMETER_VALUE`, `BAD_REQUEST`) raises
  `PermanentError`: the daemon narrows it down to the events at fault, dead-letters those and
  delivers the rest. Anything else (the server down, a timeout) is retried.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import threading
from collections.abc import Iterator
from typing import Any

import msgspec

from .._tracker import BaseExperimentTracker, Event, PermanentError, RunInfo

MAX_METRICS, MAX_TAGS, MAX_BYTES = 1000, 100, 900_000
MAX_KEY, MAX_TAG_VALUE = 250, 8000
_BAD = re.compile(r"[^\w./\- :]")


PERMANENT_CODES = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST"}


class MlflowConfig(msgspec.Struct, forbid_unknown_fields=True):
    tracking_uri: str = ""
    experiment: str | None = None
    server_url: str = ""  # magnus's name for tracking_uri: its configs work unchanged

    def __post_init__(self) -> None:
        if self.server_url and self.tracking_uri and self.server_url != self.tracking_uri:
            raise ValueError("set tracking_uri or server_url (its magnus name), not both")
        self.tracking_uri = self.tracking_uri or self.server_url
        if not self.tracking_uri:
            raise ValueError("tracking_uri is required (e.g. sqlite:///mlflow.db or "
                             "http://127.0.0.1:5000)")


def sanitize(key: str) -> str:
    k = _BAD.sub("_", key)
    norm = posixpath.normpath(k)
    if norm != k or norm.startswith(("/", ".")):
        k = k.replace("/", "_")
        if k.startswith("."):
            k = "_" + k[1:]
    return k[:MAX_KEY]


def flatten(key: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if type(value) is dict:
        if not value:
            out.append((key, "{}"))
        for k, v in value.items():
            flatten(f"{key}.{k}", v, out)
    else:
        out.append((key, value))


def tag_value(v: Any) -> str:
    s = v if type(v) is str else json.dumps(v, default=repr)
    return s if len(s) <= MAX_TAG_VALUE else s[: MAX_TAG_VALUE - 13] + "…[truncated]"


class MlflowTracker(BaseExperimentTracker):
    service_name = "mlflow"
    Config = MlflowConfig
    extra = "mlflow"
    config: MlflowConfig

    def __init__(self, config: MlflowConfig) -> None:
        super().__init__(config)
        self._lock = threading.Lock()  # run creation: deliveries and context requests
        self._runs: dict[tuple[str, str], str] = {}  # (experiment, magnus run) → MLflow run id
        self._steps: set[tuple[str, str]] = set()  # (MLflow run, step) tagged
        self._terminated: dict[str, str] = {}  # MLflow run → FINISHED/FAILED
        self._client: Any = None

    @classmethod
    def check_library(cls) -> None:
        import mlflow  # noqa: F401

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self.config.tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.config.tracking_uri)
        self._load_state()

    def _state_file(self) -> str:
        return os.path.join(self.state_dir, "runs.json") if self.state_dir else ""

    def _load_state(self) -> None:
        path = self._state_file()
        if path and os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            if saved.get("tracking_uri") == self.config.tracking_uri:
                self._runs = {(k.split("\x00", 1)[0], k.split("\x00", 1)[1]): v
                              for k, v in saved["runs"].items()}

    def _save_state(self) -> None:
        path = self._state_file()
        if not path:
            return
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"tracking_uri": self.config.tracking_uri,
                       "runs": {"\x00".join(k): v for k, v in self._runs.items()}}, f)
        os.replace(tmp, path)

    # -- runs -------------------------------------------------------------------------------

    def experiment_name(self, run: RunInfo) -> str:
        return self.config.experiment or run.tag or "Default"

    def mlflow_run(self, run: RunInfo) -> str:
        """The MLflow run of a magnus run, created on first need."""
        exp_name = self.experiment_name(run)
        key = (exp_name, run.run_id)
        with self._lock:
            found = self._runs.get(key)
            if found is not None:
                return found
            client = self._client
            exp = client.get_experiment_by_name(exp_name)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(exp_name)
            hits = client.search_runs(
                [exp_id], filter_string=f"tags.`magnus.run_id` = '{_quote(run.run_id)}'",
                max_results=1)
            if hits:
                run_id = str(hits[0].info.run_id)
            else:
                run_id = str(client.create_run(exp_id, run_name=run.run_id, tags={
                    "magnus.run_id": run.run_id, "magnus.tag": run.tag}).info.run_id)
            self._runs[key] = run_id
            self._save_state()
            return run_id

    def on_run_start(self, run: RunInfo) -> None:
        self.mlflow_run(run)

    def on_step_end(self, run: RunInfo, status: str) -> None:
        run_id = self.mlflow_run(run)
        self._client.set_tag(run_id, sanitize(f"magnus.step.{run.step_name}"), status)
        self._steps.add((run_id, run.step_name))
        state = "FAILED" if status == "FAIL" or self._terminated.get(run_id) == "FAILED" \
            else "FINISHED"
        self._client.set_terminated(run_id, status=state)
        self._terminated[run_id] = state

    # -- delivery ---------------------------------------------------------------------------

    def log_metric(self, key: str, value: Any, step: int = 0) -> None:
        import time

        assert self.run is not None
        r = self.run
        self.log_batch([Event(r.run_id, r.tag, r.step_name, key, value, step, time.time())])

    def log_batch(self, events: list[Event]) -> None:
        from mlflow.entities import Metric, RunTag

        by_run: dict[str, tuple[list[Any], dict[str, str]]] = {}
        for e in events:
            run_id = self.mlflow_run(e.run)
            metrics, tags = by_run.setdefault(run_id, ([], {}))
            if (run_id, e.step_name) not in self._steps:
                tags[sanitize(f"magnus.step.{e.step_name}")] = "PROCESSING"
            ts = int(e.timestamp * 1000)
            leaves: list[tuple[str, Any]] = []
            flatten(e.name, e.value, leaves)
            for k, v in leaves:
                t = type(v)
                if (t is int or t is float) and (t is float or abs(v) < 2**63):
                    metrics.append(Metric(sanitize(k), float(v) if t is int else v, ts, e.step))
                else:
                    tags[sanitize(k)] = tag_value(v)
        for run_id, (metrics, tags) in by_run.items():
            if run_id in self._terminated:  # more events after a step end: running again
                self._client.update_run(run_id, status="RUNNING")
                del self._terminated[run_id]
            try:
                self._send(run_id, metrics, [RunTag(k, v) for k, v in tags.items()])
            except Exception as e:
                if getattr(e, "error_code", None) in PERMANENT_CODES:
                    raise PermanentError(f"MLflow refused the batch: {e}") from e
                raise
            self._steps.update((run_id, e.step_name) for e in events)

    def _send(self, run_id: str, metrics: list[Any], tags: list[Any]) -> None:
        for i in range(0, len(metrics), MAX_METRICS):
            self._client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS])
        chunk: list[Any] = []
        size = 0
        for t in tags:
            n = len(t.key) + len(t.value.encode())
            if chunk and (len(chunk) >= MAX_TAGS or size + n > MAX_BYTES):
                self._client.log_batch(run_id, tags=chunk)
                chunk, size = [], 0
            chunk.append(t)
            size += n
        if chunk:
            self._client.log_batch(run_id, tags=chunk)

    # -- the SDK side -----------------------------------------------------------------------

    def context_state(self, run: RunInfo) -> dict[str, Any]:
        if self._client is None:
            self.start()
        return {"mlflow_run_id": self.mlflow_run(run)}

    @contextlib.contextmanager
    def client_context(self, run: RunInfo, state: dict[str, Any]) -> Iterator[Any]:
        import mlflow

        mlflow.set_tracking_uri(self.config.tracking_uri)
        with mlflow.start_run(run_id=state["mlflow_run_id"]) as active:
            yield active


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace("'", "\\'")

