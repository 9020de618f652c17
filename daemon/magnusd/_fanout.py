"""Fan-out: what a tracker's cursor is and how journal records become delivery ops.

Each tracker reads the journal at its own cursor (journal seq, and the journal's cumulative
event mark there), in its own worker process (`_worker.py`, supervised by `_workers.py`). A
bounded slice of records becomes ops — event batches and step ends, in journal order; the cursor
advances only past fully delivered records and is persisted after every op, so a restart, or a
replacement after a reload, continues exactly where delivery stopped: a crash can repeat at most
the op in flight.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import shutil
from dataclasses import dataclass, field

from magnus import _protocol as proto

from ._journal import Journal, Reader
from ._reader import Record
from ._tracker import Event, RunInfo

log = logging.getLogger("magnusd.fanout")

READ_BYTES = 1 << 20  # journal bytes a runner takes at a time (bounds work in flight)
OP_EVENTS = 5000  # events per log_batch call
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0
_decoder = proto.journaled_decoder


@dataclass
class Cursor:
    seq: int  # last journal record fully delivered
    mark: int  # the journal's cumulative event count at that record


class CursorStore:
    """One small JSON file per tracker name under `<data>/trackers/`."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.unreadable: set[str] = set()  # cursors found unreadable (moved aside)
        self.failing: set[str] = set()  # cursors that could not be saved lately
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def _path(self, name: str, suffix: str = ".cursor") -> str:
        from ._names import run_dirname

        return os.path.join(self.dir, run_dirname(name) + suffix)

    def state_dir(self, name: str) -> str:
        path = self._path(name, ".state")
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as e:  # the worker's tracker reports it when it needs the directory
            log.error("cannot create %s: %s", path, e.strerror)
        return path

    def load(self, name: str) -> Cursor | None:
        """The saved cursor; None when there is none, or when it is unreadable (then moved
        aside as `<name>.cursor.bad`: the caller starts at the oldest retained record, so
        the tracker gets events again rather than missing any)."""
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                d = json.loads(f.read())
            return Cursor(int(d["seq"]), int(d["mark"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            log.error("cursor of tracker %r is unreadable (%s); moved it to %s.bad and "
                      "replaying the retained journal", name, e, path)
            os.replace(path, path + ".bad")
            self.unreadable.add(name)
            return None

    def all(self) -> list[Cursor]:
        out = []
        for n in os.listdir(self.dir):
            if n.endswith(".cursor"):
                try:
                    with open(os.path.join(self.dir, n), "rb") as f:
                        d = json.loads(f.read())
                    out.append(Cursor(int(d["seq"]), int(d["mark"])))
                except (OSError, ValueError, KeyError, TypeError):
                    continue
        return out

    def save(self, name: str, cur: Cursor) -> bool:
        """Persist a cursor; False when it cannot be written now (disk full): the next save
        writes the newer one, and a restart before it delivers a little again, never less."""
        path = self._path(name)
        tmp = path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with open(fd, "w") as f:
                json.dump({"seq": cur.seq, "mark": cur.mark}, f)
            os.replace(tmp, path)  # a process crash keeps it; an OS crash may repeat one op
        except OSError as e:
            if name not in self.failing:
                log.error("cannot save the cursor of tracker %r: %s", name, e.strerror)
            self.failing.add(name)
            return False
        self.failing.discard(name)
        return True

    def dead_letter_path(self, name: str) -> str:
        return self._path(name, ".dead.jsonl")

    def delete(self, name: str) -> None:
        """Forget a removed tracker: its cursor and its state directory."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))
        shutil.rmtree(self._path(name, ".state"), ignore_errors=True)


class OpKind(enum.StrEnum):
    """What a delivery op carries (a StrEnum: it reads and compares as its string)."""

    EVENTS = "events"  # metric events for log_batch
    STEP_END = "step_end"  # a step's end for on_step_end
    RECORDS = "records"  # raw journal records for a forwarder's log_records


@dataclass
class Op:
    kind: OpKind
    events: list[Event] = field(default_factory=list)
    run: RunInfo | None = None
    status: str = ""
    seq: int = 0  # cursor after this op: the last record it completes (0: none)
    mark: int = 0
    first: int = 0  # the first record it takes from
    origin: list[tuple[int, int]] = field(default_factory=list)  # (seq, index) per event
    records: list[tuple[int, bytes]] = field(default_factory=list)  # kind RECORDS


def to_record_ops(batch: list[Record]) -> list[Op]:
    """Journal records → ops of raw records (for forwarders), about 1 MiB each."""
    ops: list[Op] = []
    size = 0
    for seq, mark, payload in batch:
        if not ops or size + len(payload) > READ_BYTES:
            ops.append(Op(OpKind.RECORDS, first=seq))
            size = 0
        op = ops[-1]
        op.records.append((seq, payload))
        op.seq, op.mark = seq, mark
        size += len(payload)
    return ops


def to_ops(batch: list[Record]) -> list[Op]:
    """Journal records → delivery ops; consecutive events are merged up to OP_EVENTS."""
    ops: list[Op] = []
    cur: Op | None = None
    for seq, mark, payload in batch:
        msg = _decoder.decode(payload)
        if isinstance(msg, proto.StepMark):
            cur = None
            if msg.kind == "end":
                ops.append(Op(OpKind.STEP_END, run=RunInfo(msg.run_id, msg.tag, msg.step_name),
                              status=msg.status or "SUCCESS", seq=seq, mark=mark, first=seq))
            elif ops:
                ops[-1].seq, ops[-1].mark = seq, mark
            else:
                ops.append(Op(OpKind.EVENTS, seq=seq, mark=mark, first=seq))
            continue
        events: list[Event] = []
        if proto.for_trackers(msg):
            r, t, s, rank = msg.run_id, msg.tag, msg.step_name, msg.rank
            for step, ts, metrics in msg.rows():
                for k, v in metrics.items():
                    events.append(Event(r, t, s, k, v, step, ts, rank))
        origin = [(seq, i) for i in range(len(events))]
        if cur is not None and len(cur.events) + len(events) <= OP_EVENTS:
            cur.events.extend(events)
            cur.origin.extend(origin)
            cur.seq, cur.mark = seq, mark
            continue
        # A record larger than an op is split; only its last piece completes the record.
        for i in range(0, max(len(events), 1), OP_EVENTS):
            last = i + OP_EVENTS >= len(events)
            cur = Op(OpKind.EVENTS, events[i : i + OP_EVENTS], seq=seq if last else 0,
                     mark=mark if last else 0, first=seq, origin=origin[i : i + OP_EVENTS])
            ops.append(cur)
    return ops


def start_cursor(journal: Journal, backfill: bool) -> Cursor:
    """Where a new tracker starts: the journal head, or the oldest retained record."""
    if not backfill:
        return Cursor(journal.last_seq, journal.events)
    first = journal.segments[0]
    batch = Reader(journal.dir, first, journal).read(max_bytes=1)
    if not batch:
        return Cursor(journal.last_seq, journal.events)
    seq, mark, payload = batch[0]
    msg = _decoder.decode(payload)
    n = proto.tracker_points(msg)
    return Cursor(seq - 1, mark - n)

