"""A tracker worker: the process one configured tracker lives in (`python -m magnusd._worker`).

The daemon spawns it, sends the tracker's definition (`Spec`), and gets `Ready` once the plugin
is imported and constructed — or the reason it could not be. After `Go` it reads the journal
itself, read-only, from the cursor the daemon gave, turns records into ops (`_fanout.to_ops`)
and calls the plugin, saying `Begin` before every call and `Done` after every op; the daemon
owns the cursor, times calls, and restarts the process when it dies, hangs or grows.

Inside the process the calls themselves — retries with backoff, `PermanentError` bisection,
the dead-letter file — are `_delivery.py`'s. An op that the daemon marks `isolate` (workers died
on it repeatedly) is delivered one event at a time so that the next death names its event. Three
threads: the main one delivers, one reads the daemon's commands, and `Ask`s are answered each in
a thread of its own (a slow `context_state` must not hold up delivery).

Signals: SIGTERM and SIGINT are ignored (the daemon decides when a worker stops); a closed stdin
means the daemon is gone, and the worker exits at once. Plugin output on stdout goes to stderr:
stdout carries only frames.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

from . import _workerwire as wire
from ._delivery import Delivery, Stopped
from ._fanout import READ_BYTES, to_ops, to_record_ops
from ._journal import Reader
from ._tracker import BaseExperimentTracker, RunInfo

log = logging.getLogger("magnusd.worker")
IDLE_POLL_S = 1.0  # a missed Tail costs at most this


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
        self.delivery: Delivery | None = None
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
        delivery = self.delivery = Delivery(tracker, self.send, self._stop_within,
                                            spec.dead_letter)
        self.send(wire.Ready())
        with self.cond:
            while self.go is None and not self.stopping:
                self.cond.wait()
            go = self.go
        if go is None:
            self._close()
            return
        try:
            delivery.call(tracker.start, wire.Begin(go.seq + 1, 0))
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

    def _stop_within(self, seconds: float) -> bool:
        """Wait up to `seconds` for a stop request; True when there is one."""
        with self.cond:
            return self.stopping or self.cond.wait_for(lambda: self.stopping, seconds)

    def _deliver_from(self, go: wire.Go) -> None:
        assert self.spec is not None and self.delivery is not None and self.tracker is not None
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
            raw = self.tracker.raw_records
            for op in (to_record_ops(batch) if raw else to_ops(batch)):
                with self.cond:
                    if self.stopping:
                        return  # between ops: the daemon's cursor is exact
                result = self.delivery.deliver(op, op.first == go.isolate, skip)
                delivered, dead = result.delivered, result.dead
                if raw:  # count events, as `pending` does: the journal's marks tell
                    delivered, mark = op.mark - mark, op.mark
                self.send(wire.Done(op.seq, op.mark, delivered, dead))


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
