"""Ingress: client connections in, journal records out.

Each read of a connection is parsed whole: every complete frame is decoded, the state-changing
messages of the read are appended to the journal in one write, and `Sync` requests are answered
(by the connection's writer task) once the journal fsync covers them. A client that breaks the
protocol — bad framing, a message that does not decode to the expected shape, a wrong protocol
version — gets an `Error` frame and is disconnected; what it sent before the bad frame is kept,
and nobody else is affected.

Resends are journaled once: the daemon remembers the last seq of every client id (`Dedup`).

When the journal cannot be written (disk full, I/O error, read-only file system) nothing of the
read is taken: the client gets an `Error` and is disconnected with its messages unacknowledged,
so it keeps them, reconnects with backoff and sends them again. After a failed fsync every client
is disconnected and the duplicate check forgotten: what was written since the last good fsync is
sent again rather than trusted.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
from collections.abc import Awaitable, Callable
from contextlib import suppress as _suppress
from typing import Any

import anyio
import msgspec
from anyio.abc import SocketAttribute, SocketStream

from magnus import _protocol as proto
from magnus._limits import MAX_FRAME

from ._journal import Journal, Unwritable

log = logging.getLogger("magnusd.ingress")
MAX_CLIENTS_REMEMBERED = 100_000
_UCRED = struct.Struct("3i")


class Dedup:
    """The last journaled seq per client id (bounded; oldest forgotten first)."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.skipped = 0

    def undo(self, previous: dict[str, int | None]) -> None:
        """Restore the last seqs as they were before `admit`s that were not journaled."""
        for client_id, seq in previous.items():
            if seq is None:
                self.last.pop(client_id, None)
            else:
                self.last[client_id] = seq

    def admit(self, client_id: str, seq: int) -> bool:
        last = self.last.get(client_id)
        if last is not None and seq <= last:
            self.skipped += 1
            return False
        if last is None and len(self.last) >= MAX_CLIENTS_REMEMBERED:
            del self.last[next(iter(self.last))]
        self.last[client_id] = seq
        return True

    def note(self, payload: bytes) -> None:
        """Rebuild from a journal record (recovery)."""
        try:
            msg = proto.decoder.decode(payload)
        except (msgspec.DecodeError, ValueError):
            return
        if type(msg) is proto.Batch or type(msg) is proto.StepMark:
            self.admit(msg.client_id, msg.seq)


class Refused(Exception):
    """The client broke the protocol; the message says how."""


class Ingress:
    def __init__(self, journal: Journal, dedup: Dedup, allowed_uids: set[int],
                 status: Callable[[], dict[str, Any]],
                 context: Callable[[proto.ContextRequest], Awaitable[proto.ContextReply]],
                 max_frame: int = MAX_FRAME) -> None:
        self.journal = journal
        self.dedup = dedup
        self.allowed_uids = allowed_uids
        self.status = status
        self.context = context
        self.max_frame = max_frame
        self.clients = 0
        self.events_total = 0
        self.messages_total = 0
        self.refused_total = 0
        self.on_close: Callable[[], None] | None = None  # a client left (the reaper looks)
        self._connections: set[anyio.CancelScope] = set()
        journal.on_fsync_failure.append(self.drop_all)

    def stats(self) -> dict[str, int]:
        return {"events_total": self.events_total, "clients": self.clients,
                "messages_total": self.messages_total, "refused_clients": self.refused_total}

    def take(self, payloads: list[bytes], hello: proto.Hello | None
             ) -> tuple[int, list[proto.Sync], list[Any], proto.Hello | None, str | None]:
        """Decode a read's frames and journal what changes state.

        Returns (records journaled, syncs, other messages, hello, error). Frames after an error
        are ignored; those before it are journaled.
        """
        to_journal = []
        counts = []
        previous: dict[str, int | None] = {}  # dedup state to restore if the write fails
        syncs: list[proto.Sync] = []
        other: list[Any] = []
        nrec = 0
        error = None
        for p in payloads:
            try:
                msg = proto.decoder.decode(p)
            except (msgspec.DecodeError, ValueError) as e:
                error = f"malformed message: {e}"
                break
            if isinstance(msg, (proto.Batch, proto.StepMark)):
                if hello is None:
                    error = "the first message must be hello"
                    break
                batch = msg if isinstance(msg, proto.Batch) else None
                if batch is not None and batch.keys and (problem := batch.malformed()):
                    error = f"malformed message: {problem}"
                    break
                if msg.client_id not in previous:
                    previous[msg.client_id] = self.dedup.last.get(msg.client_id)
                if self.dedup.admit(msg.client_id, msg.seq):
                    to_journal.append(p)
                    n = batch.count() if batch is not None and batch.track else 0
                    counts.append(n)
                    nrec += n
            elif hello is None and not isinstance(msg, proto.Hello):
                error = "the first message must be hello"
                break
            elif isinstance(msg, proto.Sync):
                syncs.append(msg)
            elif isinstance(msg, proto.Hello):
                if hello is not None:
                    error = "hello sent twice"
                    break
                if msg.version != proto.PROTOCOL_VERSION:
                    error = (f"protocol version {msg.version} is not supported "
                             f"(this daemon speaks {proto.PROTOCOL_VERSION})")
                    break
                hello = msg
                other.append(msg)
            elif isinstance(msg, (proto.StatusRequest, proto.ContextRequest)):
                other.append(msg)
            else:
                error = f"unexpected {type(msg).__name__} message from a client"
                break
        if to_journal:
            try:
                self.journal.append(to_journal, counts)
            except Unwritable as e:
                self.dedup.undo(previous)
                return 0, [], other, hello, f"{e}; nothing of this was taken, send it again later"
            self.events_total += nrec
            self.messages_total += len(to_journal)
        return nrec, syncs, other, hello, error

    def drop_all(self) -> None:
        """Disconnect every client, unacknowledged, and forget the duplicate check: what they
        sent since the last good fsync will come again and be journaled again."""
        self.dedup.last.clear()
        for scope in list(self._connections):
            scope.cancel()

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            peer = _peer(stream)
            if peer is not None and peer[1] not in self.allowed_uids \
                    and -1 not in self.allowed_uids:  # -1: any uid (_settings.ANY_UID)
                self.refused_total += 1
                log.warning("refused a client of uid %d (pid %d): not in the allowed uids %s",
                            peer[1], peer[0], sorted(self.allowed_uids))
                await _send_quietly(stream, proto.frame(proto.Error(
                    f"uid {peer[1]} may not use this daemon")))
                return
            self.clients += 1
            send, receive = anyio.create_memory_object_stream[tuple[Any, ...]](math.inf)
            scope = anyio.CancelScope()
            self._connections.add(scope)
            try:
                with scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._writer, stream, receive)
                        # the writer may find the client gone first
                        async with send:
                            with _suppress(anyio.BrokenResourceError,
                                           anyio.ClosedResourceError):
                                await self._reader(stream, send, peer)
            finally:
                self._connections.discard(scope)
                self.clients -= 1
                if self.on_close is not None:
                    self.on_close()

    async def _reader(self, stream: SocketStream, out: Any, peer: tuple[int, int, int] | None
                      ) -> None:
        buf = bytearray()
        hello: proto.Hello | None = None
        receive = stream.receive
        while True:
            try:
                chunk = await receive(1 << 18)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            buf += chunk
            payloads, used, error = proto.split_frames(buf, self.max_frame)
            del buf[:used]
            _, syncs, other, new_hello, decode_error = self.take(payloads, hello)
            error = decode_error or error
            if new_hello is not hello and new_hello is not None:
                hello = new_hello
                out.send_nowait(("msg", proto.frame(proto.Welcome(proto.PROTOCOL_VERSION,
                                                                  _pid()))))
            for msg in other:
                if type(msg) is proto.StatusRequest:
                    out.send_nowait(("msg", proto.frame(proto.StatusReply(self.status()))))
                elif type(msg) is proto.ContextRequest:
                    out.send_nowait(("msg", proto.frame(await self.context(msg))))
            last = self.journal.last_seq
            for s in syncs:
                out.send_nowait(("ack", s.seq, last, s.urgent))
            if error:
                self.refused_total += 1
                who = f"pid {peer[0]}" if peer else "a client"
                log.warning("disconnected %s: %s", who, error)
                out.send_nowait(("close", proto.frame(proto.Error(error))))
                return

    async def _writer(self, stream: SocketStream, receive: Any) -> None:
        """Send replies in order; acks only once the journal fsync covers them."""
        async with receive:
            async for item in receive:
                kind = item[0]
                try:
                    if kind == "ack":
                        _, client_seq, journal_seq, urgent = item
                        await self.journal.wait_durable(journal_seq, urgent)
                        await stream.send(proto.frame(proto.Ack(client_seq)))
                    elif kind == "msg":
                        await stream.send(item[1])
                    else:  # close: the error frame is the last thing the client gets
                        await _send_quietly(stream, item[1])
                        return
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return


def _peer(stream: SocketStream) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the peer, via SO_PEERCRED."""
    sock = stream.extra(SocketAttribute.raw_socket)
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def _pid() -> int:
    import os

    return os.getpid()


async def _send_quietly(stream: SocketStream, data: bytes) -> None:
    try:
        with anyio.fail_after(1):
            await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError):
        pass
