"""Messages between the daemon and a tracker worker process, over the worker's stdin/stdout.

Frames as on the client socket: a 4-byte big-endian length, then one msgpack message of this
module's tagged union. The worker reads the journal itself; these messages carry only control:

    daemon → worker   Spec (first), Go (cursor; start delivering), Tail (the journal grew),
                      Stop (finish the op in hand, close, exit), Ask (context_state for a run)
    worker → daemon   Ready (constructed, or why not), Begin (a call to the tracker starts),
                      Done (an op delivered: the cursor may move), Health (failing/recovered),
                      Answer (to Ask)

`Begin` before every call lets the daemon time a hung call and know which op a crash was in.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Spec(msgspec.Struct, tag="spec", array_like=True):
    name: str
    tracker_type: str
    config: dict[str, Any]
    journal_dir: str
    state_dir: str
    dead_letter: str  # the tracker's dead-letter file (JSON lines)


class Go(msgspec.Struct, tag="go", array_like=True):
    """Deliver from the record after `seq`. `isolate`: the first seq of an op that crashed
    workers repeatedly: deliver it one event at a time. `skip`: (seq, index) of events found
    to crash the worker: dead-lettered, never delivered."""

    seq: int
    mark: int
    isolate: int = 0
    skip: list[tuple[int, int]] = []


class Tail(msgspec.Struct, tag="tail", array_like=True):
    last_seq: int


class Stop(msgspec.Struct, tag="stop", array_like=True):
    pass


class Ask(msgspec.Struct, tag="ask", array_like=True):
    id: int
    run_id: str
    tag: str
    step_name: str


class Ready(msgspec.Struct, tag="ready", array_like=True):
    error: str | None = None


class Begin(msgspec.Struct, tag="begin", array_like=True):
    """A call starts: on the op whose first record is `first_seq` (`index` ≥ 0: one event of
    an isolated op, described in `event` for the dead-letter file should it crash)."""

    first_seq: int
    events: int
    index: int = -1
    seq: int = 0
    event: str = ""


class Done(msgspec.Struct, tag="done", array_like=True):
    seq: int  # 0: the op completed no record (a piece of a large one)
    mark: int
    delivered: int
    dead: int = 0


class Health(msgspec.Struct, tag="health", array_like=True):
    state: str  # "failing" | "running"
    error: str | None = None


class Answer(msgspec.Struct, tag="answer", array_like=True):
    id: int
    state: dict[str, Any] = {}
    error: str | None = None


ToWorker = Spec | Go | Tail | Stop | Ask
FromWorker = Ready | Begin | Done | Health | Answer

encoder = msgspec.msgpack.Encoder()
to_worker = msgspec.msgpack.Decoder(ToWorker)
from_worker = msgspec.msgpack.Decoder(FromWorker)


def frame(msg: msgspec.Struct) -> bytes:
    payload = encoder.encode(msg)
    return len(payload).to_bytes(4, "big") + payload


def split(buf: bytearray) -> list[bytes]:
    """Cut the complete frames out of `buf` (in place)."""
    out = []
    pos = 0
    while len(buf) - pos >= 4:
        n = int.from_bytes(buf[pos : pos + 4], "big")
        if len(buf) - pos - 4 < n:
            break
        out.append(bytes(buf[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    del buf[:pos]
    return out
