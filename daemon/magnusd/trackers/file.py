"""`file`: one JSON object per event, appended to `config.path` (JSON lines).

Each line: {"run_id", "tag", "step_name", "key", "value", "step", "timestamp", "rank"}; values
keep their JSON type (NaN/inf become null). A value of a rank other than 0 has the key
`rank<r>/<key>`, so a reader that ignores `rank` never mixes ranks. Each batch is one write,
flushed to the OS before the batch counts as delivered.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from .._tracker import BaseExperimentTracker, Event


class FileConfig(msgspec.Struct, forbid_unknown_fields=True):
    path: str


_encoder = msgspec.json.Encoder(enc_hook=repr)


class FileTracker(BaseExperimentTracker):
    service_name = "file"
    Config = FileConfig
    config: FileConfig

    def __init__(self, config: FileConfig) -> None:
        super().__init__(config)
        self._fd = -1

    def start(self) -> None:
        path = os.path.expanduser(self.config.path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def log_metric(self, key: str, value: Any, step: int = 0) -> None:
        run = self.run
        assert run is not None
        import time

        self.log_batch([Event(run.run_id, run.tag, run.step_name, key, value, step, time.time())])

    def log_batch(self, events: list[Event]) -> None:
        if self._fd < 0:
            self.start()
        if any(e.rank for e in events):
            events = [msgspec.structs.replace(e, key=e.name) if e.rank else e for e in events]
        data = _encoder.encode_lines(events)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
