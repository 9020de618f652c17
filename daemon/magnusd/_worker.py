"""A tracker worker: the process one configured tracker lives in (`python -m magnusd._worker`).

The daemon spawns it, sends the tracker's definition (`Spec`), and gets `Ready` once the plugin
is imported and constructed — or the reason it could not be. After `Go` it reads the journal
itself, read-only, from the cursor the daemon gave, turns records into ops (`_fanout.to_ops`)
and calls the plugin, saying `Begin` before every call and `Done` after every op; the daemon
owns the cursor, times calls, and restarts the process when it dies, hangs or grows.

Inside the process: an exception from the plugin is retried with exponential backoff and
jitter (the daemon hears `Health`); `PermanentError` splits the op in halves until the events
the backend refuses are alone, and those are written to the dead-letter file and skipped. An op
that the daemon marks `isolate` (workers died on it repeatedly) is delivered one event at a time
so that the next death names its event.

Signals: SIGTERM and SIGINT are ignored (the daemon decides when a worker stops); a closed stdin
means the daemon is gone, and the worker exits at once. Plugin output on stdout goes to stderr:
stdout carries only frames.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import threading
import time
from typing import Any

from . import _workerwire as wire
from ._fanout import READ_BYTES, Op, OpKind, to_ops, to_record_ops
from ._journal import Reader
from ._tracker import BaseExperimentTracker, Event, PermanentError, RunInfo

log = logging.getLogger("magnusd.worker")
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0
IDLE_POLL_S = 1.0  # a missed Tail costs at most this


class Stopped(Exception):
    """The daemon asked to stop while a call kept failing: the op stays undelivered."""


class Worker:
    def __init__(self, out_fd: int) -> None:
        self.out_fd = out_fd
        self._send_lock = threading.Lock()
        self.cond = threading.Condition()
        self.go: wire.Go | None = None
        self.tail = 0
        self.stopping = False
        self.tracker: BaseExperimentTracker | None = None
        self.spec: wire.Spec | None = None
        self.failing = False
        self.started_runs: dict[str, None] = {}
        self._pending = bytearray()  # what followed the Spec in the first read

    # -- the channel ------------------------------------------------------------------------

    def send(self, msg: Any) -> None:
        data = memoryview(wire.frame(msg))
        with self._send_lock:
            while data:
                data = data[os.write(self.out_fd, data):]

    def _read_first(self) -> wire.Spec:
        buf = bytearray()
        while True:
            frames = wire.split(buf)
            if frames:
                msg = wire.to_worker.decode(frames[0])
                assert isinstance(msg, wire.Spec), msg
                self._pending = buf  # whatever followed the Spec
                return msg
            chunk = os.read(0, 65536)
            if not chunk:
                os._exit(0)
            buf += chunk

    def _commands(self) -> None:
        """Read the daemon's messages until stdin closes (then exit: the daemon is gone)."""
        buf = self._pending
        while True:
            for raw in wire.split(buf):
                msg = wire.to_worker.decode(raw)
                if isinstance(msg, wire.Ask):
                    threading.Thread(target=self._answer, args=(msg,), daemon=True).start()
                    continue
                with self.cond:
                    if isinstance(msg, wire.Go):
                        self.go = msg
                    elif isinstance(msg, wire.Tail):
                        self.tail = max(self.tail, msg.last_seq)
                    elif isinstance(msg, wire.Stop):
                        self.stopping = True
                    self.cond.notify_all()
            try:
                chunk = os.read(0, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                os._exit(0)
            buf += chunk

    def _answer(self, ask: wire.Ask) -> None:
        tracker = self.tracker
        if tracker is None:
            self.send(wire.Answer(ask.id, {}, "the tracker is still loading"))
            return
        try:
            state = tracker.context_state(RunInfo(ask.run_id, ask.tag, ask.step_name))
            self.send(wire.Answer(ask.id, dict(state)))
        except Exception as e:
            self.send(wire.Answer(ask.id, {}, f"{type(e).__name__}: {e}"[:500]))

    # -- life -------------------------------------------------------------------------------

    def serve(self) -> None:
        spec = self.spec = self._read_first()
        logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                            format=f"%(levelname)s magnusd.worker[{spec.name}]: %(message)s")
        # From here a closed stdin ends the process, even while a plugin hangs in __init__.
        threading.Thread(target=self._commands, name="commands", daemon=True).start()
        try:
            tracker = _construct(spec)
        except Exception as e:
            self.send(wire.Ready(str(e) if isinstance(e, _ConstructError)
                                 else f"{type(e).__name__}: {e}"))
            return
        tracker.state_dir = spec.state_dir
        self.tracker = tracker
        self.send(wire.Ready())
        with self.cond:
            while self.go is None and not self.stopping:
                self.cond.wait()
            go = self.go
        if go is None:
            self._close()
            return
        try:
            self._call(self.tracker.start, wire.Begin(go.seq + 1, 0))
            self.send(wire.Done(0, 0, 0))  # started: no call in flight while it waits for work
            self._deliver_from(go)
        except Stopped:
            pass
        self._close()

    def _close(self) -> None:
        if self.tracker is not None:
            try:
                self.tracker.close()
            except Exception as e:
                log.warning("close failed: %s", e)

    def _deliver_from(self, go: wire.Go) -> None:
        assert self.spec is not None
        reader = Reader(self.spec.journal_dir, go.seq + 1)
        skip = {(seq, index) for seq, index in go.skip}
        mark = go.mark
        while True:
            with self.cond:
                if self.stopping:
                    return
            batch = reader.read(READ_BYTES)
            if not batch:
                with self.cond:
                    if not self.stopping and self.tail < reader.next_seq:
                        self.cond.wait(IDLE_POLL_S)
                continue
            assert self.tracker is not None
            raw = self.tracker.raw_records
            for op in (to_record_ops(batch) if raw else to_ops(batch)):
                with self.cond:
                    if self.stopping:
                        return  # between ops: the daemon's cursor is exact
                delivered, dead = self._deliver(op, op.first == go.isolate, skip)
                if raw:  # count events, as `pending` does: the journal's marks tell
                    delivered, mark = op.mark - mark, op.mark
                self.send(wire.Done(op.seq, op.mark, delivered, dead))

    # -- delivery ---------------------------------------------------------------------------

    def _call(self, fn: Any, begin: wire.Begin, *args: Any) -> None:
        """Call the plugin until it succeeds; PermanentError goes to the caller."""
        backoff = BACKOFF_MIN
        while True:
            self.send(begin)
            try:
                fn(*args)
            except PermanentError:
                raise
            except Exception as e:  # the tracker's failure, whatever it is
                error = f"{type(e).__name__}: {e}"[:500]
                if not self.failing:
                    log.warning("failing: %s (retrying with backoff)", error)
                self.failing = True
                self.send(wire.Health("failing", error))
                with self.cond:
                    if self.stopping or self.cond.wait_for(
                            lambda: self.stopping, backoff * random.uniform(0.5, 1.5)):
                        raise Stopped from None
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if self.failing:
                self.failing = False
                log.info("recovered")
                self.send(wire.Health("running"))
            return

    def _deliver(self, op: Op, isolate: bool, skip: set[tuple[int, int]]) -> tuple[int, int]:
        """Deliver one op: (events delivered, events dead-lettered here)."""
        tracker = self.tracker
        assert tracker is not None
        if op.kind is OpKind.RECORDS:
            return self._forward(op.records, op.first), 0
        if op.kind is OpKind.STEP_END:
            assert op.run is not None
            try:
                self._call(tracker.on_step_end, wire.Begin(op.first, 0), op.run, op.status)
            except PermanentError as e:
                self._dead_letter([{"step_end": op.run.step_name, "run_id": op.run.run_id,
                                    "status": op.status, "seq": op.seq}], e)
            return 0, 0
        # events a worker died on were dead-lettered by the daemon: skipped here
        pairs = [(ev, o) for ev, o in zip(op.events, op.origin, strict=True) if o not in skip]
        if isolate:
            dead = 0
            for ev, (seq, index) in pairs:
                begin = wire.Begin(op.first, 1, index, seq, _describe(ev, seq, index))
                dead += self._split([(ev, (seq, index))], begin)
        else:
            dead = self._split(pairs, wire.Begin(op.first, len(pairs))) if pairs else 0
        return len(pairs) - dead, dead

    def _forward(self, recs: list[tuple[int, bytes]], first: int) -> int:
        """Forward raw records; a record the far end refuses for good is dead-lettered."""
        tracker = self.tracker
        assert tracker is not None
        try:
            self._call(tracker.log_records, wire.Begin(first, len(recs)), recs)
            return len(recs)
        except PermanentError as e:
            if len(recs) == 1:
                self._dead_letter([{"seq": recs[0][0], "bytes": len(recs[0][1])}], e)
                return 0
            half = len(recs) // 2
            return self._forward(recs[:half], first) + self._forward(recs[half:], first)

    def _split(self, pairs: list[tuple[Event, tuple[int, int]]], begin: wire.Begin) -> int:
        """Deliver; on PermanentError halve until the refused events are alone."""
        try:
            self._call(self._log, begin, [e for e, _ in pairs])
            return 0
        except PermanentError as e:
            if len(pairs) == 1:
                ev, (seq, index) = pairs[0]
                self._dead_letter([json.loads(_describe(ev, seq, index))], e)
                return 1
            half = len(pairs) // 2
            return (self._split(pairs[:half], wire.Begin(begin.first_seq, half))
                    + self._split(pairs[half:], wire.Begin(begin.first_seq, len(pairs) - half)))

    def _log(self, events: list[Event]) -> None:
        tracker = self.tracker
        assert tracker is not None
        for e in events:
            if e.run_id not in self.started_runs:
                tracker.on_run_start(e.run)
                if len(self.started_runs) >= 10_000:
                    del self.started_runs[next(iter(self.started_runs))]
                self.started_runs[e.run_id] = None
        tracker.log_batch(events)

    def _dead_letter(self, items: list[dict[str, Any]], error: BaseException) -> None:
        assert self.spec is not None
        now = time.time()
        lines = "".join(json.dumps({**item, "error": f"{type(error).__name__}: {error}"[:1000],
                                    "dead_lettered_at": now}, default=repr) + "\n"
                        for item in items)
        write_dead_letters(self.spec.dead_letter, lines)
        log.error("dead-lettered %d event(s) the backend refuses for good: %s", len(items),
                  error)


def write_dead_letters(path: str, lines: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        data = memoryview(lines.encode())
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(e: Event, seq: int, index: int) -> str:
    return json.dumps({"seq": seq, "index": index, "run_id": e.run_id, "tag": e.tag,
                       "step_name": e.step_name, "key": e.key, "value": e.value,
                       "step": e.step, "timestamp": e.timestamp, "rank": e.rank},
                      default=repr)


class _ConstructError(Exception):
    pass


def _construct(spec: wire.Spec) -> BaseExperimentTracker:
    from ._plugins import PluginError, check_available, decode_config, load_class

    try:
        cls = load_class(spec.tracker_type)
        check_available(cls, spec.tracker_type)
        conf = decode_config(cls, spec.config, "config")
    except PluginError as e:
        raise _ConstructError(str(e)) from None
    try:
        return cls(conf)
    except Exception as e:
        raise _ConstructError(f"tracker {spec.name!r} ({spec.tracker_type}) failed to construct: "
                              f"{type(e).__name__}: {e}") from None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    umask = os.environ.pop("MAGNUS_WORKER_UMASK", None)
    if umask:
        os.umask(int(umask, 8))
    out_fd = os.dup(1)
    os.dup2(2, 1)  # print() in a plugin must not corrupt the channel
    sys.stdout = sys.stderr
    Worker(out_fd).serve()


if __name__ == "__main__":
    main()
