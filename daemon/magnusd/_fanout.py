"""Fan-out: one task per tracker, reading the journal at its own cursor.

A runner reads a bounded slice of the journal, turns it into delivery ops (event batches and
step ends, in journal order), and hands each op to the tracker in a worker thread. A failed op is
retried with exponential backoff and jitter until it succeeds or the runner is stopped; nothing
else waits for it — not ingestion, not the other trackers. The cursor (journal seq, and the
journal's cumulative event mark there) advances only past fully delivered records and is
persisted after every op, so a restart, or a replacement instance after a reload, continues
exactly where delivery stopped: a crash can repeat at most the op in flight.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec

from magnus import _protocol as proto

from ._config import TrackerDef
from ._journal import Journal, Reader
from ._tracker import BaseExperimentTracker, Event, RunInfo

log = logging.getLogger("magnusd.fanout")

READ_BYTES = 1 << 20  # journal bytes a runner takes at a time (bounds work in flight)
OP_EVENTS = 5000  # events per log_batch call
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0
_decoder = msgspec.msgpack.Decoder(proto.Batch | proto.StepMark)


@dataclass
class Cursor:
    seq: int  # last journal record fully delivered
    mark: int  # the journal's cumulative event count at that record


class CursorStore:
    """One small JSON file per tracker name under `<data>/trackers/`."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def _path(self, name: str, suffix: str = ".cursor") -> str:
        from ._runstore import run_dirname

        return os.path.join(self.dir, run_dirname(name) + suffix)

    def state_dir(self, name: str) -> str:
        path = self._path(name, ".state")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def load(self, name: str) -> Cursor | None:
        try:
            with open(self._path(name)) as f:
                d = json.load(f)
            return Cursor(int(d["seq"]), int(d["mark"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError) as e:
            log.error("cursor of tracker %r is unreadable (%s); starting at the journal head",
                      name, e)
            return None

    def save(self, name: str, cur: Cursor) -> None:
        path = self._path(name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"seq": cur.seq, "mark": cur.mark}, f)
        os.replace(tmp, path)  # a process crash keeps it; an OS crash may repeat one op

    def delete(self, name: str) -> None:
        """Forget a removed tracker: its cursor and its state directory."""
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        shutil.rmtree(self._path(name, ".state"), ignore_errors=True)


@dataclass
class Op:
    kind: str  # "events" | "step_end"
    events: list[Event] = field(default_factory=list)
    run: RunInfo | None = None
    status: str = ""
    seq: int = 0  # cursor after this op: the last record it completes (0: none)
    mark: int = 0


def to_ops(batch: list[tuple[int, int, bytes]]) -> list[Op]:
    """Journal records → delivery ops; consecutive events are merged up to OP_EVENTS."""
    ops: list[Op] = []
    cur: Op | None = None
    for seq, mark, payload in batch:
        msg = _decoder.decode(payload)
        if isinstance(msg, proto.StepMark):
            cur = None
            if msg.kind == "end":
                ops.append(Op("step_end", run=RunInfo(msg.run_id, msg.tag, msg.step_name),
                              status=msg.status or "SUCCESS", seq=seq, mark=mark))
            elif ops:
                ops[-1].seq, ops[-1].mark = seq, mark
            else:
                ops.append(Op("events", seq=seq, mark=mark))
            continue
        events: list[Event] = []
        if msg.track:
            r, t, s, rank = msg.run_id, msg.tag, msg.step_name, msg.rank
            for step, ts, metrics in msg.rows():
                for k, v in metrics.items():
                    events.append(Event(r, t, s, k, v, step, ts, rank))
        if cur is not None and len(cur.events) + len(events) <= OP_EVENTS:
            cur.events.extend(events)
            cur.seq, cur.mark = seq, mark
            continue
        # A record larger than an op is split; only its last piece completes the record.
        for i in range(0, max(len(events), 1), OP_EVENTS):
            last = i + OP_EVENTS >= len(events)
            cur = Op("events", events[i : i + OP_EVENTS],
                     seq=seq if last else 0, mark=mark if last else 0)
            ops.append(cur)
    return ops


class Runner:
    """Delivers the journal to one tracker instance."""

    def __init__(self, defn: TrackerDef, tracker: BaseExperimentTracker | None,
                 journal: Journal, cursors: CursorStore, cursor: Cursor,
                 error: str | None = None, after: Runner | None = None) -> None:
        self.defn = defn
        self.name = defn.key
        self.tracker = tracker
        self.journal = journal
        self.cursors = cursors
        self.cursor = cursor
        self.state = "disabled" if tracker is None else "starting"
        self.delivered = 0
        self.errors = 0
        self.last_error: str | None = error
        self.started_runs: dict[str, None] = {}
        self.after = after  # a predecessor to wait for: it owns the cursor until it stops
        self._stop = anyio.Event()
        self.done = anyio.Event()

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.defn.type, "state": self.state,
                "pending": max(self.journal.events - self.cursor.mark, 0),
                "delivered": self.delivered, "errors": self.errors,
                "last_error": self.last_error, "cursor": self.cursor.seq,
                "caught_up": self.cursor.seq >= self.journal.last_seq}

    def stop(self) -> None:
        """Finish the op in hand (or give up a failing one), then stop."""
        self._stop.set()

    async def run(self) -> None:
        try:
            if self.after is not None:
                await self.after.done.wait()
                self.cursor = self.after.cursor
                self.delivered = self.after.delivered
                self.after = None
                self.cursors.save(self.name, self.cursor)
            if self.tracker is not None:
                await self._run(self.tracker)
        finally:
            if self.state != "disabled":
                self.state = "stopped"
            self.done.set()

    async def _call(self, fn: Any, *args: Any) -> bool:
        """Run `fn` in a thread until it succeeds (True) or the runner is stopped (False)."""
        backoff = BACKOFF_MIN
        while not self._stop.is_set():
            try:
                await anyio.to_thread.run_sync(fn, *args)
                return True
            except Exception as e:  # the tracker's failure, whatever it is
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"[:500]
                if self.state != "failing":
                    log.warning("tracker %r failing: %s (retrying with backoff)", self.name,
                                self.last_error)
                self.state = "failing"
                with anyio.move_on_after(backoff * random.uniform(0.5, 1.5)):
                    await self._stop.wait()
                backoff = min(backoff * 2, BACKOFF_MAX)
        return False

    async def _run(self, tracker: BaseExperimentTracker) -> None:
        tracker.state_dir = self.cursors.state_dir(self.name)
        if not await self._call(tracker.start):
            return
        if self.state == "failing":
            log.info("tracker %r recovered", self.name)
        self.state = "running"
        reader = Reader(self.journal.dir, self.cursor.seq + 1, self.journal)
        try:
            while not self._stop.is_set():
                # Reading and decoding stay off the event loop, which serves the clients.
                ops = await anyio.to_thread.run_sync(lambda: to_ops(reader.read(READ_BYTES)))
                if not ops:
                    await self._idle(reader.next_seq - 1)
                    continue
                for op in ops:
                    if not await self._call(self._deliver, op):
                        return
                    if self.state == "failing":
                        log.info("tracker %r recovered", self.name)
                        self.state = "running"
                    self.delivered += len(op.events)
                    if op.seq:
                        self.cursor = Cursor(op.seq, op.mark)
                        self.cursors.save(self.name, self.cursor)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(tracker.close)
                except Exception as e:
                    log.warning("tracker %r failed to close: %s", self.name, e)

    async def _idle(self, after_seq: int) -> None:
        """Wait for a record after `after_seq`, or for stop()."""
        async with anyio.create_task_group() as tg:
            async def until(event: Any) -> None:
                await event
                tg.cancel_scope.cancel()

            tg.start_soon(until, self._stop.wait())
            tg.start_soon(until, self.journal.wait_written(after_seq))

    def _deliver(self, op: Op) -> None:
        """One op, in a worker thread."""
        tracker = self.tracker
        assert tracker is not None
        if op.kind == "step_end":
            assert op.run is not None
            tracker.on_step_end(op.run, op.status)
            return
        if not op.events:
            return
        for e in op.events:
            if e.run_id not in self.started_runs:
                tracker.on_run_start(e.run)
                if len(self.started_runs) >= 10_000:
                    del self.started_runs[next(iter(self.started_runs))]
                self.started_runs[e.run_id] = None
        tracker.log_batch(op.events)


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
    n = msg.count() if type(msg) is proto.Batch and msg.track else 0
    return Cursor(seq - 1, mark - n)

