"""Where encoded frames go: the `Transport` seam and its socket and spool implementations.

A transport is handed, each flusher cycle, every frame not yet durable (in seq order, the same
frames again until they are) and answers how far they are durable: `SocketTransport` sends what
it has not sent on this connection plus a `Sync`, and learns durability from the daemon's
`Ack`s (`receive`); `SpoolTransport` writes them to a spool file and fsyncs, so they are durable
at once. `magnus.testing.Captured` is the in-memory one. A transport never takes the client's
locks; the flusher calls it with none held.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Sequence
from typing import Any, Protocol

from . import _protocol as proto
from ._encode import Frame
from ._limits import MAX_FRAME

CONNECT_TIMEOUT = 2.0
SEND_TIMEOUT = 10.0
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0


class Transport(Protocol):
    def send(self, frames: Sequence[Frame], urgent: bool) -> int | None:
        """Pass `frames` on; the highest seq now durable (0: none yet), None if unreachable."""

    def receive(self) -> int:
        """Read replies waiting on `fileno()`; the highest seq acknowledged (0: none)."""

    def fileno(self) -> int:
        """An fd that becomes readable when replies wait; -1 when there is none."""

    def close(self) -> None: ...


class SocketTransport:
    """The daemon's socket. Connects lazily, with jittered exponential backoff between tries
    (unless the caller is urgent); resends from the first unacknowledged frame after a
    reconnect — the daemon drops what it journaled already (last seq per client id)."""

    def __init__(self, path: str, client_id: str, warn: Any) -> None:
        self.path, self.client_id, self.warn = path, client_id, warn
        self.sock: socket.socket | None = None
        self.rbuf = bytearray()
        self.sent_seq = 0  # last seq written to the current connection
        self.next_connect = 0.0
        self.backoff = BACKOFF_MIN
        self.last_error = ""

    def fileno(self) -> int:
        return -1 if self.sock is None else self.sock.fileno()

    def send(self, frames: Sequence[Frame], urgent: bool) -> int | None:
        if self.sock is None and (urgent or time.monotonic() >= self.next_connect):
            self._connect()
        if self.sock is None:
            return None
        todo = [f for f in frames if f.seq > self.sent_seq]
        if not todo and not urgent:
            return 0
        last = todo[-1].seq if todo else self.sent_seq
        parts = [f.data for f in todo]
        parts.append(proto.frame(proto.Sync(last, urgent)))
        try:
            self.sock.sendall(b"".join(parts))
        except OSError as e:
            self.last_error = str(e)
            self.close()
            return None
        self.sent_seq = last
        return 0

    def receive(self) -> int:
        if self.sock is None:
            return 0
        try:
            chunk = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            return self._lost(str(e))
        if not chunk:
            return self._lost("daemon closed the connection")
        self.rbuf += chunk
        frames, used, error = proto.split_frames(self.rbuf)
        if error:
            self.warn(f"bad frame from daemon: {error}")
            return self._lost(error)
        del self.rbuf[:used]
        acked = 0
        for f in frames:
            msg = proto.decoder.decode(f)
            if isinstance(msg, proto.Ack):
                acked = max(acked, msg.seq)
            elif isinstance(msg, proto.Error) and msg.message != self.last_error:
                self.last_error = msg.message  # said once, not at every reconnect
                self.warn(f"daemon error: {msg.message}")
        return acked

    def _lost(self, why: str) -> int:
        self.last_error = why
        self.close()
        return 0

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.next_connect = time.monotonic() + self.backoff
        self.sock = None
        self.rbuf = bytearray()
        self.sent_seq = 0

    def _connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(CONNECT_TIMEOUT)
            s.connect(self.path)
            s.sendall(proto.frame(proto.Hello(proto.PROTOCOL_VERSION, self.client_id,
                                              os.getpid())))
            self.rbuf = bytearray()
            reply = read_one(s, self.rbuf)
            if not isinstance(reply, proto.Welcome):
                msg = reply.message if isinstance(reply, proto.Error) else repr(reply)
                self.warn(f"daemon at {self.path} refused the connection: {msg}")
                raise ConnectionError(msg)
            s.settimeout(SEND_TIMEOUT)
        except (OSError, ValueError) as e:
            s.close()
            self.last_error = str(e)
            jitter = 0.5 + os.urandom(1)[0] / 255
            self.next_connect = time.monotonic() + self.backoff * jitter
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            return
        self.sock = s
        self.sent_seq = 0
        self.backoff = BACKOFF_MIN


class DurableAtOnce:
    """A transport whose `send` returns only once the frames are durable: no replies to wait
    for, nothing to close."""

    def fileno(self) -> int:
        return -1

    def receive(self) -> int:
        return 0

    def close(self) -> None:
        pass


class SpoolTransport(DurableAtOnce):
    """A spool directory the daemon ingests: each `send` is one file named `<client id>-<first
    seq>.spool`, written beside, fsynced, renamed into place, the directory fsynced."""

    def __init__(self, directory: str, client_id: str) -> None:
        self.directory, self.client_id = directory, client_id

    def send(self, frames: Sequence[Frame], urgent: bool) -> int | None:
        """Raises OSError when the file cannot be written (nothing is durable then)."""
        if not frames:
            return 0
        directory = self.directory
        name = f"{self.client_id}-{frames[0].seq}"
        os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = os.path.join(directory, f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(b"".join(f.data for f in frames))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(directory, name + ".spool"))
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return frames[-1].seq


def read_one(s: socket.socket, buf: bytearray) -> Any:
    """The next message on a blocking socket; `buf` keeps what was read beyond it."""
    while True:
        frames, _, error = proto.split_frames(buf, max_frame=MAX_FRAME)
        if error:
            raise ConnectionError(f"bad frame from daemon: {error}")
        if frames:
            del buf[: len(frames[0]) + 4]
            return proto.decoder.decode(frames[0])
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("daemon closed the connection")
        buf += chunk


def ask_context(path: str, run_id: str, tag: str, step_name: str, warn: Any) -> Any:
    """One request/reply with the daemon for the active tracker; None when unreachable."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(CONNECT_TIMEOUT)
        s.connect(path)
        s.sendall(proto.frame(proto.Hello(proto.PROTOCOL_VERSION, os.urandom(8).hex(),
                                          os.getpid()))
                  + proto.frame(proto.ContextRequest(run_id, tag, step_name)))
        s.settimeout(30.0)  # the tracker may create its run first
        buf = bytearray()
        while True:
            msg = read_one(s, buf)
            if isinstance(msg, proto.ContextReply):
                return msg
            if isinstance(msg, proto.Error):
                warn(f"daemon refused the tracker context request: {msg.message}")
                return None
    except (OSError, ValueError) as e:
        warn(f"no tracker context (daemon unreachable: {e})")
        return None
    finally:
        s.close()


class MemoryTransport(DurableAtOnce):
    """Frames kept in this process (`magnus.testing`): durable as soon as they are handed over."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frames: Sequence[Frame], urgent: bool) -> int | None:
        self.frames.extend(f.data for f in frames)
        return frames[-1].seq if frames else 0
