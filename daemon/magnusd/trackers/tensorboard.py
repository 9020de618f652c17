"""`tensorboard`: TensorBoard event files, one directory per run (install `magnusd[tensorboard]`).

Config: `log_dir` (a local directory; `~` is expanded, a relative path is relative to the
daemon's working directory) and `per_step` (default false). Point TensorBoard at `log_dir`:

    <log_dir>/<run id>/              one TensorBoard run per magnus run
    <log_dir>/<run id>/<step name>/  with `per_step: true`, one per magnus step

Run ids and step names are percent-encoded as in the data directory (`run_dirname`), so any id
is one safe path component. A step beyond the int64 range (possible in magnus, not in an event
file) is written as 2**63 - 1. The magnus run tag is not recorded (TensorBoard has no place for it).

Value mapping (design §9) — nothing is dropped:

- int and float (not bool): a scalar `key` at the event's step, with its timestamp as wall
  time. TensorBoard stores scalars as float32, so large ints and long decimals lose precision;
  an int too large for a float becomes text.
- str: a text summary of `key`, stored like `SummaryWriter.add_text` does, under the tag
  `key/text_summary` (TensorBoard's Text tab), at the event's step.
- bool: text "True" / "False"; None: text "null".
- list: text, its JSON.
- dict: flattened to dotted keys, recursively: {"cfg": {"lr": 0.1, "opt": {"name": "adam"}}}
  gives the scalar `cfg.lr` and the text `cfg.opt.name`; an empty dict is the text "{}".
- anything else a foreign client slipped in: text, its repr.

Delivery: the daemon writes events synchronously with tensorboardX's event-file writer and
fsyncs every file a batch touched before the batch counts as delivered. (tensorboardX's
`SummaryWriter` is not used daemon-side: it writes through a queue and a background thread, and
its `flush()` does not wait for the queue, so a "flushed" batch could still be in memory.) At
most `MAX_WRITERS` files are open, least recently used closed first. Each writer opened is a new
event file in its directory — TensorBoard reads every event file of a directory — named with the
process id and a random token, so none ever overwrites another. A batch that fails drops the
writers it touched, so its retry goes to fresh files; like every tracker, a retried batch may
repeat values (delivery is at least once).

Client context: `with magnus.get_experiment_tracker_context() as writer:` yields a
`tensorboardX.SummaryWriter` on the same directory the daemon writes that run (or run and step)
to, closed on exit; what it writes is a further event file beside the daemon's.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import msgspec

from .._runstore import run_dirname
from .._tracker import BaseExperimentTracker, Event, RunInfo


class TensorboardConfig(msgspec.Struct, forbid_unknown_fields=True):
    log_dir: str
    per_step: bool = False


_file_ids = itertools.count(1)
_STEP_MAX = (1 << 63) - 1  # an event file's step is an int64


def _file_suffix(who: str) -> str:
    """Event-file names carry only a 1 s timestamp and the host; this makes each one unique,
    and a process's files of one second sort (as TensorBoard reads them) in creation order."""
    return f".{who}.{os.getpid()}.{next(_file_ids):08d}.{secrets.token_hex(4)}"


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=repr)
    return repr(value)


def flatten(key: str, value: Any) -> Iterator[tuple[str, float | None, str]]:
    """(tag, number, text) per leaf: number is None for a text leaf."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            yield key, float(value), ""
            return
        except OverflowError:  # an int beyond float range: keep its digits
            yield key, None, str(value)
            return
    if isinstance(value, dict):
        if not value:
            yield key, None, "{}"
            return
        for k, v in value.items():
            yield from flatten(f"{key}.{k}", v)
        return
    yield key, None, _text(value)


class _Writer:
    """One event file, written synchronously (tensorboardX's EventsWriter)."""

    def __init__(self, lib: Any, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.lib = lib
        self.path = path
        self.closed = False
        self.ev = lib.EventsWriter(os.path.join(path, "events"), _file_suffix("magnusd"))

    def write(self, tag: str, number: float | None, text: str, step: int,
              walltime: float) -> None:
        if number is not None:
            summ = self.lib.Summary(value=[self.lib.Summary.Value(tag=tag, simple_value=number)])
        else:
            summ = self.lib.text(tag, text)
        self.ev.write_event(self.lib.Event(wall_time=walltime, step=min(step, _STEP_MAX),
                                           summary=summ))

    def flush(self) -> None:
        if not self.closed:
            self.ev.flush()  # file flush + fsync

    def close(self) -> None:
        if not self.closed:
            try:
                self.ev.flush()
            finally:
                self.closed = True
                self.ev.close()

    def discard(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.ev.close()


class _Lib:
    """The tensorboardX pieces the daemon side uses, imported on first need."""

    def __init__(self) -> None:
        from tensorboardX import summary
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        self.EventsWriter = EventsWriter
        self.Event = Event
        self.Summary = Summary
        self.text = summary.text


class TensorboardTracker(BaseExperimentTracker):
    service_name = "tensorboard"
    extra = "tensorboard"
    Config = TensorboardConfig
    config: TensorboardConfig

    #: Event files kept open at once; the least recently used is closed first.
    MAX_WRITERS = 64

    def __init__(self, config: TensorboardConfig) -> None:
        super().__init__(config)
        self._lib: _Lib | None = None
        self._writers: OrderedDict[str, _Writer] = OrderedDict()

    @classmethod
    def check_library(cls) -> None:
        try:
            _Lib()
        except ImportError:
            raise
        except Exception as e:  # e.g. a protobuf the installed tensorboardX cannot use
            raise ImportError(f"tensorboardX failed to import: {type(e).__name__}: {e}") from e

    # -- paths (pure: context_state may run concurrently with delivery) ---------------------

    def root(self) -> str:
        return os.path.abspath(os.path.expanduser(self.config.log_dir))

    def run_dir(self, run_id: str, step_name: str = "") -> str:
        """Where `run` (with per_step: run and step) is written; no step name: the run's."""
        path = os.path.join(self.root(), run_dirname(run_id))
        if self.config.per_step and step_name:
            path = os.path.join(path, run_dirname(step_name))
        return path

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._lib is None:
            self._lib = _Lib()
        os.makedirs(self.root(), exist_ok=True)

    def close(self) -> None:
        writers = list(self._writers.values())
        self._writers.clear()
        first: Exception | None = None
        for w in writers:
            try:
                w.close()
            except Exception as e:  # close the rest, then report
                first = first or e
        if first is not None:
            raise first

    def on_step_end(self, run: RunInfo, status: str) -> None:
        if self.config.per_step and run.step_name:
            w = self._writers.pop(self.run_dir(run.run_id, run.step_name), None)
            if w is not None:
                w.close()

    # -- delivery ---------------------------------------------------------------------------

    def _writer(self, run_id: str, step_name: str) -> _Writer:
        path = self.run_dir(run_id, step_name)
        w = self._writers.get(path)
        if w is not None:
            self._writers.move_to_end(path)
            return w
        if self._lib is None:
            self._lib = _Lib()
        while len(self._writers) >= max(1, self.MAX_WRITERS):
            _, old = self._writers.popitem(last=False)
            old.close()
        w = self._writers[path] = _Writer(self._lib, path)
        return w

    def _deliver(self, events: list[tuple[str, str, str, Any, int, float]]) -> None:
        touched: dict[int, _Writer] = {}
        try:
            for run_id, step_name, key, value, step, ts in events:
                w = self._writer(run_id, step_name)
                touched[id(w)] = w
                for tag, number, text in flatten(key, value):
                    w.write(tag, number, text, step, ts)
            for w in touched.values():
                w.flush()
        except BaseException:
            # The retry writes the batch again: to fresh files, never after a half record.
            for w in touched.values():
                if self._writers.get(w.path) is w:
                    del self._writers[w.path]
                w.discard()
            raise

    def log_batch(self, events: list[Event]) -> None:
        self._deliver([(e.run_id, e.step_name, e.name, e.value, e.step, e.timestamp)
                       for e in events])

    def log_metric(self, key: str, value: Any, step: int = 0) -> None:
        run = self.run
        assert run is not None, "log_metric needs self.run"
        self._deliver([(run.run_id, run.step_name, key, value, step, time.time())])

    def log_parameter(self, key: str, value: Any) -> None:
        self.log_metric(key, value, 0)

    # -- the SDK side -----------------------------------------------------------------------

    def context_state(self, run: RunInfo) -> dict[str, Any]:
        # The daemon's absolute path: a relative log_dir or `~` means the daemon's.
        return {"dir": self.run_dir(run.run_id, run.step_name)}

    @contextlib.contextmanager
    def client_context(self, run: RunInfo, state: dict[str, Any]) -> Iterator[Any]:
        from tensorboardX import SummaryWriter

        path = state.get("dir") or self.run_dir(run.run_id, run.step_name)
        writer = SummaryWriter(logdir=path, filename_suffix=_file_suffix("client"))
        try:
            yield writer
        finally:
            writer.close()
