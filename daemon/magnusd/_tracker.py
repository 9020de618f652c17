"""The tracker plugin API (design §9): `BaseExperimentTracker`, `Event`, `RunInfo`,
`PermanentError`.

A tracker is constructed as `TrackerClass(config)`, with `config` its `config:` block decoded
into `TrackerClass.Config` (a msgspec Struct) and kept as `self.config` — in the tracker's own
worker process (`_worker.py`), never in the daemon. Delivery calls come one at a time, so
blocking libraries are fine (`context_state` may run beside them). An exception from any method
is a failed delivery: the same events are retried with exponential backoff and jitter, kept in
the journal meanwhile; `PermanentError` marks events the backend will never take, which are
dead-lettered instead.

Lifecycle:  __init__(config) → start() → [on_run_start(run) → log_batch(events) →
            on_step_end(run, status)]* → close()

Only `log_metric` must be written; `log_batch` (one call per delivered batch) defaults to calling
`log_metric` per event, with `self.run` set to the event's run. Built-ins override `log_batch`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import msgspec


class RunInfo(msgspec.Struct, frozen=True):
    """The magnus identity an event belongs to."""

    run_id: str
    tag: str = ""
    step_name: str = ""


class Event(msgspec.Struct):
    """One tracked value, as trackers receive it.

    `rank` is the sending process's rank in a distributed job (None outside one). Values of
    a rank other than 0 must never overwrite rank 0's: log them under `name`
    (`rank<r>/<key>`), as the built-in trackers and the default `log_batch` do.
    """

    run_id: str
    tag: str
    step_name: str
    key: str
    value: Any
    step: int
    timestamp: float
    rank: int | None = None

    @property
    def run(self) -> RunInfo:
        return RunInfo(self.run_id, self.tag, self.step_name)

    @property
    def name(self) -> str:
        """The key to log under: `key` for rank 0 (or no rank), else `rank<r>/<key>`."""
        return f"rank{self.rank}/{self.key}" if self.rank else self.key


class PermanentError(Exception):
    """Raised by a tracker for events its backend will never accept (an invalid key, a value
    it refuses): the daemon isolates those events, writes them to the tracker's dead-letter
    file (`<data>/trackers/<name>.dead.jsonl`) and delivers their neighbours. Any other
    exception is retried."""


class NoConfig(msgspec.Struct, forbid_unknown_fields=True):
    """For trackers that take no configuration."""


class BaseExperimentTracker:
    """Base class of every tracker, built-in or plugin (entry-point group `experiment_tracker`)."""

    service_name: ClassVar[str] = ""
    Config: ClassVar[type[msgspec.Struct]] = NoConfig
    #: The extra to install when the tracker's library is missing, e.g. "mlflow".
    extra: ClassVar[str | None] = None

    def __init__(self, config: Any) -> None:
        self.config = config
        self.run: RunInfo | None = None  # the run of the event being delivered
        #: A directory of this tracker's own, kept across restarts and definition changes
        #: (one per tracker name); set by the daemon before start().
        self.state_dir = ""

    @classmethod
    def check_library(cls) -> None:
        """Raise ImportError when the library this tracker needs is not installed."""

    # -- lifecycle hooks (no-ops by default) ------------------------------------------------

    def start(self) -> None:
        """Connect or open what delivery needs. Raising makes the daemon retry later."""

    def close(self) -> None:
        """Flush and release resources; called when the tracker is removed or the daemon stops."""

    def on_run_start(self, run: RunInfo) -> None:
        """Called before the first event of `run` that this instance delivers."""

    def on_step_end(self, run: RunInfo, status: str) -> None:
        """A magnus step ended (status SUCCESS or FAIL)."""

    # -- delivery ---------------------------------------------------------------------------

    def log_metric(self, key: str, value: Any, step: int = 0) -> None:
        """Record one value of the current run (`self.run`)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement log_metric")

    def log_parameter(self, key: str, value: Any) -> None:
        """Record a parameter of the current run (for trackers that distinguish them)."""

    #: A forwarder (the `nats` tracker) gets the journal's records as clients sent them —
    #: events, step marks and environment metrics — through `log_records`, not events.
    raw_records: ClassVar[bool] = False

    def log_records(self, records: list[tuple[int, bytes]]) -> None:
        """Deliver journal records `(seq, msgpack payload)` in order (when `raw_records`)."""
        raise NotImplementedError(f"{type(self).__name__} does not forward records")

    def log_batch(self, events: list[Event]) -> None:
        """Deliver a batch, in order. Override for speed; the default calls `log_metric`."""
        for e in events:
            self.run = e.run
            self.log_metric(e.name, e.value, e.step)

    # -- the SDK side -----------------------------------------------------------------------

    def context_state(self, run: RunInfo) -> dict[str, Any]:
        """Daemon-side facts the client context needs (e.g. the tracker's own run id)."""
        return {}

    @contextlib.contextmanager
    def client_context(self, run: RunInfo, state: dict[str, Any]) -> Iterator[Any]:
        """The tracker's own client attached to `run`, built in the user's process."""
        yield None
