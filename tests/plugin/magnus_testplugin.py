"""A plugin tracker written to the documented API only: it implements `log_metric` (the base
class's `log_batch` calls it with `self.run` set) and records everything it is given as JSON
lines. Test knobs: `fail_file` (while it exists, every call raises) and `delay` (seconds per
event, to make it fall behind)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import msgspec

from magnusd import BaseExperimentTracker, RunInfo


class RecorderConfig(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    fail_file: str = ""
    delay: float = 0.0


class Recorder(BaseExperimentTracker):
    service_name = "test-recorder"
    Config = RecorderConfig

    def _check(self) -> None:
        if self.config.fail_file and os.path.exists(self.config.fail_file):
            raise RuntimeError("injected failure: backend unavailable")

    def _write(self, obj: dict[str, Any]) -> None:
        with open(self.config.path, "a") as f:
            f.write(json.dumps(obj) + "\n")

    def log_metric(self, key: str, value: Any, step: int = 0) -> None:
        self._check()
        if self.config.delay:
            time.sleep(self.config.delay)
        r = self.run
        assert r is not None  # log_batch sets it
        self._write({"run_id": r.run_id, "tag": r.tag, "step_name": r.step_name,
                     "key": key, "value": value, "step": step})

    def on_step_end(self, run: RunInfo, status: str) -> None:
        self._check()
        self._write({"step_end": run.step_name, "run_id": run.run_id, "status": status})

    def context_state(self, run: RunInfo) -> dict[str, Any]:
        return {"served_by": os.getpid()}

    @contextlib.contextmanager
    def client_context(self, run: RunInfo, state: dict[str, Any]) -> Iterator[Any]:
        yield {"run_id": run.run_id, "tag": run.tag, "step_name": run.step_name,
               "path": self.config.path, **state}


class BrokenConstruct(BaseExperimentTracker):
    service_name = "test-broken-construct"

    def __init__(self, config: Any) -> None:
        raise ConnectionError("cannot reach the backend")


class FaultyConfig(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    fault: str = "none"  # none | segfault | exit | hang | leak | permanent
    on_values: list[int] = []  # events whose value is one of these trigger the fault
    leak_mb: int = 0  # for "leak": kept per triggering event


class Faulty(BaseExperimentTracker):
    """Records like Recorder, and misbehaves on chosen events the way real plugins do."""

    service_name = "test-faulty"
    Config = FaultyConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._leaked: list[bytearray] = []

    def log_metric(self, key: str, value: Any, step: int = 0) -> None:
        c = self.config
        if value in c.on_values:
            if c.fault == "segfault":
                import ctypes

                ctypes.string_at(0)  # a crash in a C extension
            elif c.fault == "exit":
                os._exit(3)
            elif c.fault == "hang":
                time.sleep(3600)  # a request without a timeout
            elif c.fault == "leak":
                self._leaked.append(bytearray(c.leak_mb << 20))
            elif c.fault == "permanent":
                from magnusd import PermanentError

                raise PermanentError(f"the backend refuses {key}={value!r}")
        r = self.run
        assert r is not None
        with open(c.path, "a") as f:
            f.write(json.dumps({"run_id": r.run_id, "key": key, "value": value,
                                "step": step}) + "\n")

    def on_step_end(self, run: RunInfo, status: str) -> None:
        with open(self.config.path, "a") as f:
            f.write(json.dumps({"step_end": run.step_name, "status": status}) + "\n")
