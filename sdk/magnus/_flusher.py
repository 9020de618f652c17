"""The background flusher: buffer → frames → a transport, until every frame is durable.

One daemon thread per process, started on the SDK's first use (this module, msgspec and the
transports are imported then, never by `import magnus`). Every `FLUSH_INTERVAL`, or when woken,
it takes the buffer's entries from its head in slices of at most `SLICE` (the encoder's work
between two chances for the caller to take the GIL back stays small), encodes them into frames
kept in `unacked` until durable, and hands `unacked` to the transport in effect: the daemon's
socket, or an override (`magnus.testing`).

While the daemon is unreachable frames wait in memory up to `SPOOL_AFTER_RECORDS` records; past
that, when `flush()` needs durability, and at exit they go to a spool file, after which the
client continues under a new client id (the rule is stated in `_protocol`).

Locks: `enc_lock` lets one encoder run at a time (this thread, or `flush()` on the caller's);
`cond` guards `unacked`, `done_seq` and the requests. Neither is held across I/O; the order is
enc_lock → Steps.lock → cond.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from typing import Any

from ._encode import BATCH_RECORDS, Encoder, Frame, Proc
from ._paths import socket_path, spool_dir
from ._steps import Steps, buffer
from ._transport import SocketTransport, SpoolTransport, Transport

FLUSH_INTERVAL = 0.02  # s between flusher cycles
SPOOL_AFTER_RECORDS = 250_000  # undelivered records kept in memory while disconnected
SLICE = 3 * BATCH_RECORDS  # buffer entries encoded at a time


def new_client_id() -> str:
    return os.urandom(8).hex()


class Flusher:
    def __init__(self, steps: Steps, warn: Any) -> None:
        self.steps, self.warn = steps, warn
        self.enc_lock = threading.RLock()  # at_exit and forget_identity encode under it
        self.cond = threading.Condition(threading.Lock())
        self.encoder: Encoder | None = None  # made by warm(), off the caller's path
        self.paths = ("", "")  # (socket, spool directory)
        self.socket: SocketTransport | None = None
        self.override: Transport | None = None  # where frames go instead of the socket
        self.unacked: list[Frame] = []  # by seq
        self.unacked_records = 0
        self.done_seq = 0  # every seq <= this is durable (acknowledged or spooled)
        self.flush_req = self.flush_seen = 0  # generations: flush() asks, the cycle answers
        self.spool_req = False
        self.spooled_files = 0
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.thread = threading.Thread(target=self._run, name="magnus-flusher", daemon=True)

    @property
    def last_error(self) -> str:
        return self.socket.last_error if self.socket is not None else ""

    def warm(self) -> None:
        """Resolve paths and this process's identity once (platformdirs may be slow)."""
        with self.enc_lock:
            self._warm()

    def _warm(self) -> None:
        if self.encoder is not None:
            return
        env = os.environ
        self.paths = (socket_path(env), spool_dir(env))
        client_id = new_client_id()
        self.socket = SocketTransport(self.paths[0], client_id, self.warn)
        proc = Proc(env, os.getpid())
        mp = sys.modules.get("multiprocessing.process")
        if mp is not None and mp.parent_process() is not None and proc.rank is None:
            # a multiprocessing worker, whatever its start method (a rank, as under
            # torch.multiprocessing.spawn, has an attempt of its own)
            self.steps.child = True
        self.encoder = Encoder(self.steps, proc, client_id, self.warn)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # a wake-up is already pending
            os.write(self.wake_w, b"x")

    def close_fds(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        self.warm()
        assert self.socket is not None
        while True:
            fd = self.socket.fileno()
            try:
                ready = select.select([self.wake_r, fd] if fd >= 0 else [self.wake_r], [], [],
                                      FLUSH_INTERVAL)[0]
            except (OSError, ValueError):
                ready = []
            if self.wake_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self.wake_r, 4096)
            try:
                if fd >= 0 and fd in ready:
                    self._mark_done(self.socket.receive())
                self._cycle()
            except Exception as e:  # never let the flusher die
                self.warn(f"flusher error: {e!r}")
                self.socket.close()

    def _cycle(self) -> None:
        self.encode_pending()
        with self.cond:
            flushing = self.flush_req != self.flush_seen
            self.flush_seen = self.flush_req
            spool_now, self.spool_req = self.spool_req, False
            todo = list(self.unacked)
            over = self.unacked_records > SPOOL_AFTER_RECORDS
        if spool_now:
            self.spool()
            return
        if not todo:
            return
        transport = self.override or self.socket
        assert transport is not None
        done = transport.send(todo, flushing)
        if done is None:
            if flushing or over:
                self.spool()
        else:
            self._mark_done(done)

    def encode_pending(self) -> None:
        """Move what the buffer holds into `unacked`, a slice at a time."""
        with self.enc_lock:
            self._warm()
            encoder = self.encoder
            assert encoder is not None
            while True:
                n = len(buffer)
                marks = self.steps.marks_added  # read after len(): see _steps
                if not n:
                    return
                if marks == encoder.marks_seen:
                    n = min(n, SLICE)  # only triples up to n: any multiple of 3 is a boundary
                entries = buffer[:n]
                del buffer[:n]
                frames = encoder.encode(entries, marks)
                if frames:
                    with self.cond:
                        self.unacked.extend(frames)
                        self.unacked_records += sum(f.records for f in frames)

    def _mark_done(self, upto: int) -> None:
        if not upto:
            return
        with self.cond:
            k = 0
            for f in self.unacked:
                if f.seq > upto:
                    break
                k += 1
                self.unacked_records -= f.records
            del self.unacked[:k]
            if upto > self.done_seq:
                self.done_seq = upto
            self.cond.notify_all()

    def spool(self) -> None:
        """Write every undelivered frame to a spool file, then continue under a new id."""
        assert self.socket is not None and self.encoder is not None
        self.socket.close()
        # Under enc_lock no frame can be encoded with the old id after this snapshot.
        with self.enc_lock, self.cond:
            todo = list(self.unacked)
            spool = SpoolTransport(self.paths[1], self.encoder.client_id)
            self.encoder.client_id = self.socket.client_id = new_client_id()
        try:
            done = spool.send(todo, True)
        except OSError as e:
            self.warn(f"could not write spool file in {spool.directory}: {e}; "
                      "events stay in memory")
            return
        if done:
            self.spooled_files += 1
            self._mark_done(done)

    # -- the caller's side ------------------------------------------------------------------

    def flush(self, timeout: float | None) -> bool:
        """Wait until everything in the buffer now is durable; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.encode_pending()
        assert self.encoder is not None
        with self.cond:
            target = self.encoder.seq
            self.flush_req += 1
        self.wake()
        with self.cond:
            while self.done_seq < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.cond.wait(0.5 if remaining is None else min(remaining, 0.5))
        return True

    def spool_now(self) -> None:
        """At exit, after a flush timed out: have the thread spool; do it here if the thread
        is stuck in I/O (a hung daemon)."""
        assert self.encoder is not None
        with self.cond:
            self.spool_req = True
            target = self.encoder.seq
        self.wake()
        with self.cond:
            done = self.cond.wait_for(lambda: self.done_seq >= target, timeout=2.0)
        if not done:
            self.spool()
