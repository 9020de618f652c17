"""The daemon's status (design §6) as msgspec Structs: `msgspec.json.encode(status)` is, byte for
byte, the JSON `magnusd status --json` prints (tests/test_contract_json.py holds it to golden
files), and its builtins are the body of the socket's `StatusReply`.

Invariants: field order is the JSON's key order, and every field is always written (null where
unknown, never omitted), so fields are added at the end of their Struct or not at all. States
are StrEnums: a state compares equal to, and encodes as, its string. Each service builds its
own part (`Ingress.stats`, `Journal.stats`, `RunStore.stats`, `Runner.status`, `Source.status`,
`Viewer.status`) and the `Daemon` assembles the whole; this module imports no other daemon
module, so that every service can import it.
"""

from __future__ import annotations

import enum

import msgspec


class TrackerState(enum.StrEnum):
    """A tracker's worker: `disabled` when it could not be set up (see `last_error`)."""

    STARTING = "starting"
    RUNNING = "running"
    FAILING = "failing"  # its calls fail; they are retried
    RESTARTING = "restarting"  # its worker died; restarted with backoff
    STOPPED = "stopped"
    DISABLED = "disabled"


class SourceState(enum.StrEnum):
    """A source (fan-in, design §13): `failing` while its server cannot be read (retried)."""

    STARTING = "starting"
    RUNNING = "running"
    FAILING = "failing"
    STOPPED = "stopped"


class IngressStats(msgspec.Struct):
    """Counted by the ingress since the daemon started (spread at the top of `Status`)."""

    events_total: int  # metric points journaled (environment metrics not counted)
    clients: int  # connected now
    messages_total: int
    refused_clients: int


class ConfigStatus(msgspec.Struct):
    path: str
    loaded_at: float | None  # time.time() of the last load, None before the first
    error: str | None


class TrackerStatus(msgspec.Struct):
    """One tracker: `pending` journaled events it has not had yet, `caught_up` when everything
    journaled (events and step ends) has reached it."""

    name: str
    type: str
    state: TrackerState
    pending: int
    delivered: int
    errors: int
    last_error: str | None
    cursor: int  # the last journal seq it has had
    caught_up: bool
    restarts: int
    dead_lettered: int
    in_flight_s: float | None  # how long its worker has been in the call in hand
    pid: int | None  # its worker's
    rss_mb: float | None


class SourceStatus(msgspec.Struct):
    name: str
    type: str
    state: SourceState
    lag: int | None  # messages the server holds that are not journaled yet, when known
    received: int
    journaled: int
    refused: int
    errors: int
    last_error: str | None


class JournalRecovery(msgspec.Struct):
    """What the last start found at the end of the journal."""

    truncated_bytes: int
    salvaged_records: int
    damaged_copies: list[str]  # paths of the damaged tails kept aside


class JournalStatus(msgspec.Struct):
    """The journal's own figures, then its cap (set by the daemon: `Journal.stats` leaves the
    defaults)."""

    last_seq: int
    durable_seq: int
    segments: int
    bytes: int
    error: str | None
    fsync_failures: int
    skipped_bytes: int
    recovery: JournalRecovery
    max_bytes: int = 0
    cap_hit: bool = False
    cap_deleted_segments: int = 0


class RunStoreStatus(msgspec.Struct):
    applied_seq: int
    checkpoint_seq: int
    error: str | None


class AttemptsStatus(msgspec.Struct):
    open: int  # attempts of live processes
    closed_dead: int  # attempts the daemon closed for dead processes, since it started


class UiStatus(msgspec.Struct):
    url: str | None  # None when the viewer is not listening (see `error`)
    error: str | None
    live_streams: int


class Status(msgspec.Struct):
    """What `magnusd status --json` prints."""

    pid: int
    uptime_s: float
    events_total: int
    clients: int
    messages_total: int
    refused_clients: int
    config: ConfigStatus
    trackers: list[TrackerStatus]
    sources: list[SourceStatus]
    socket: str
    socket_activated: bool
    data_dir: str
    journal: JournalStatus
    runlog: RunStoreStatus
    attempts: AttemptsStatus
    duplicates_skipped: int
    accept_errors: int
    ui: UiStatus
    disk_full: bool  # while the daemon cannot write, nothing is acknowledged
    storage_errors: list[str]
