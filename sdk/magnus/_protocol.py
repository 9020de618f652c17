"""The wire protocol shared by the SDK and the daemon.

A stream of frames: a 4-byte big-endian length, then one msgpack-encoded message. Every message
is a `msgspec.Struct` of one tagged union (array-like, so field names are not on the wire).
Schema changes only append fields with defaults: an older peer ignores trailing fields.

Client → daemon: `Hello` first, then `Batch`, `StepMark`, `Sync`, `StatusRequest`.
Daemon → client: `Welcome`, `Ack` (after the journal fsync covering a `Sync`), `StatusReply`,
and `Error` just before it closes a connection it refuses.

The same framing is used by spool files and, with a CRC header, by the daemon's journal, so one
decoder reads all three.

Client ids: a client id names one in-order stream of seqs. The daemon journals a message only
when its seq is above the last it journaled for that id, so a resend after a reconnect is
dropped exactly. A client that writes its undelivered messages to a spool file must therefore
continue under a new client id: the spool file is ingested in its own time, and messages sent
meanwhile on a connection under the old id would make the daemon skip the spooled ones (or the
reverse). Step ends the daemon writes itself use `DAEMON_CLIENT_ID` (below).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ._limits import MAX_FRAME, MAX_KEY_LEN
from ._limits import PROTOCOL_VERSION as PROTOCOL_VERSION

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LEN)]
Step = Annotated[int, msgspec.Meta(ge=0)]
# A metric value's top-level type; nested values are whatever msgpack holds except ext types.
Value = None | bool | int | float | str | list[Any] | dict[str, Any]
# One `track_this` call: (step, unix time, {key: value}).
Record = tuple[Step, float, dict[Key, Value]]
# Identity strings are file names in the run store and labels in trackers: keep them bounded.
RunId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Label = Annotated[str, msgspec.Meta(max_length=200)]


class Hello(msgspec.Struct, tag="hello", array_like=True):
    version: int
    client_id: str
    pid: int = 0


class Welcome(msgspec.Struct, tag="welcome", array_like=True):
    version: int
    daemon_pid: int


class Batch(msgspec.Struct, tag="batch", array_like=True):
    """Metric records of one run and step; identity is carried once per batch.

    `client_id` + `seq` identify the message so a resend after a broken connection (or a spool
    file) is journaled once. `track=False` marks environment metrics (`MAGNUS_TRACK_*`): they go
    to the run log only, never to trackers.
    """

    client_id: str
    seq: int
    run_id: RunId
    tag: Label
    step_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    records: list[Record]
    track: bool = True
    # Columnar form (records empty): every call tracked the same single key, so the key is sent
    # once and steps, times and values as typed arrays — several times cheaper to validate.
    keys: list[Key] = []
    steps: list[Step] = []
    ts: list[float] = []
    values: list[Value] = []
    # The sending process's rank in a distributed job (design §14); None outside one.
    rank: int | None = None

    def count(self) -> int:
        """Metric points (design §6: one key with its value at one step)."""
        if self.keys:
            return len(self.steps)
        return sum([len(m) for _, _, m in self.records])

    def rows(self) -> list[tuple[int, float, dict[str, Any]]]:
        """The records, whichever form they came in."""
        if not self.keys:
            return self.records
        key = self.keys[0]
        return [(s, t, {key: v}) for s, t, v in zip(self.steps, self.ts, self.values,
                                                     strict=True)]

    def malformed(self) -> str | None:
        if self.keys and (len(self.keys) != 1 or self.records
                          or not len(self.steps) == len(self.ts) == len(self.values)):
            return "a columnar batch needs one key and steps, ts and values of one length"
        return None


class StepMark(msgspec.Struct, tag="mark", array_like=True):
    """A step's start or end (`status` is SUCCESS or FAIL on `end`).

    `attempt` names one process running one step: the start and the end of an attempt carry
    the same id whatever connection, client id or spool file they travel by. A start also says
    who runs it (`host`, `pid`, `pid_start` — the process's start time in clock ticks since
    boot, so a reused pid is told apart — and `rank`). An end written by the daemon for a
    process that died carries `end_reason`; the process's own end, should it arrive later,
    wins over it.
    """

    client_id: str
    seq: int
    run_id: RunId
    tag: Label
    step_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    kind: Literal["start", "end"]
    ts: float
    status: str = ""
    attempt: Annotated[str, msgspec.Meta(max_length=200)] = ""
    host: Label = ""
    pid: int = 0
    pid_start: int = 0
    rank: int | None = None
    end_reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    pid_ns: int = 0  # the pid namespace `pid` belongs to (a container's differs)


class Sync(msgspec.Struct, tag="sync", array_like=True):
    """Ask for an `Ack` once everything sent before it is durable.

    Not urgent: answered after the daemon's next scheduled fsync; urgent (`flush()`): now.
    """

    seq: int
    urgent: bool = False


class Ack(msgspec.Struct, tag="ack", array_like=True):
    seq: int


class StatusRequest(msgspec.Struct, tag="status", array_like=True):
    pass


class StatusReply(msgspec.Struct, tag="status_reply", array_like=True):
    body: dict[str, Any]


class Error(msgspec.Struct, tag="error", array_like=True):
    message: str


class ContextRequest(msgspec.Struct, tag="context", array_like=True):
    """Which tracker is active, for `get_experiment_tracker_context()` in this run."""

    run_id: str
    tag: str
    step_name: str


class ContextReply(msgspec.Struct, tag="context_reply", array_like=True):
    """The first active tracker (`tracker_type` empty when none), its config and state."""

    tracker_type: str
    name: str = ""
    config: dict[str, Any] = {}
    state: dict[str, Any] = {}


Message = (Hello | Welcome | Batch | StepMark | Sync | Ack | StatusRequest | StatusReply | Error
           | ContextRequest | ContextReply)
# Messages that change stored state: the only ones journaled and spooled.
Journaled = Batch | StepMark
class BatchHead(msgspec.Struct, tag="batch", array_like=True):
    """The first fields of a `Batch`: what the run store needs to file it (array-like structs
    decode a prefix of a message and skip the rest, so values are never decoded here)."""

    client_id: str
    seq: int
    run_id: str
    tag: str
    step_name: str


class MarkHead(msgspec.Struct, tag="mark", array_like=True):
    """The first fields of a `StepMark`."""

    client_id: str
    seq: int
    run_id: str
    tag: str
    step_name: str


class BatchSteps(msgspec.Struct, tag="batch", array_like=True):
    """A `Batch` up to its steps (its values, the costly part, not decoded)."""

    client_id: str
    seq: int
    run_id: str
    tag: str
    step_name: str
    records: list[Any]
    track: bool = True
    keys: list[str] = []
    steps: list[int] = []


head_decoder: msgspec.msgpack.Decoder[BatchHead | MarkHead] = msgspec.msgpack.Decoder(
    BatchHead | MarkHead)
steps_decoder: msgspec.msgpack.Decoder[BatchSteps | MarkHead] = msgspec.msgpack.Decoder(
    BatchSteps | MarkHead)


# The client id of step ends the daemon writes itself (for processes that died mid-step), as
# "magnusd@<host>", with the journal seq as their seq: unique wherever they are forwarded.
DAEMON_CLIENT_ID = "magnusd"

def _no_ext(code: int, data: memoryview) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


encoder = msgspec.msgpack.Encoder()
decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message, ext_hook=_no_ext)
# What the journal and spool files hold (and trackers are fed from).
journaled_decoder: msgspec.msgpack.Decoder[Batch | StepMark] = msgspec.msgpack.Decoder(
    Journaled, ext_hook=_no_ext)


def for_trackers(msg: Batch | StepMark | BatchSteps | MarkHead) -> bool:
    """Whether trackers receive `msg`'s metric points: a tracked batch's, yes; environment
    metrics (`track=False`: the run log only) and step marks, no. The one place that says."""
    return (type(msg) is Batch or type(msg) is BatchSteps) and msg.track


def tracker_points(msg: Batch | StepMark | BatchSteps | MarkHead) -> int:
    """How many metric points trackers receive from `msg` (design §6's event unit)."""
    if not for_trackers(msg):
        return 0
    if type(msg) is Batch:
        return msg.count()
    assert type(msg) is BatchSteps
    return len(msg.steps) if msg.keys else sum([len(r[2]) for r in msg.records])


def frame(msg: msgspec.Struct) -> bytes:
    payload = encoder.encode(msg)
    return len(payload).to_bytes(4, "big") + payload


def split_frames(buf: bytearray | bytes, max_frame: int = MAX_FRAME
                 ) -> tuple[list[bytes], int, str | None]:
    """Cut every complete frame out of `buf`.

    Returns the payloads, the bytes consumed, and an error message when a frame header breaks
    the protocol (the frames before it are still returned).
    """
    out = []
    pos = 0
    end = len(buf)
    error = None
    with memoryview(buf) as view:
        while end - pos >= 4:
            n = int.from_bytes(view[pos : pos + 4], "big")
            if n == 0:
                error = "frame of length 0"
                break
            if n > max_frame:
                error = f"frame of {n} bytes exceeds the maximum of {max_frame}"
                break
            if end - pos - 4 < n:
                break
            out.append(bytes(view[pos + 4 : pos + 4 + n]))
            pos += 4 + n
    return out, pos, error
