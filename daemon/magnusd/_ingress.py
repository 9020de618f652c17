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
import os
from collections.abc import Awaitable, Callable
from contextlib import suppress as _suppress
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
from anyio.abc import SocketStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from magnus import _protocol as proto
from magnus._limits import MAX_FRAME

from ._dedup import MAX_CLIENTS_REMEMBERED as MAX_CLIENTS_REMEMBERED
from ._dedup import Dedup as Dedup
from ._journal import Journal, Unwritable
from ._peer import Peer, peer_of
from ._status import IngressStats

log = logging.getLogger("magnusd.ingress")


class Refused(Exception):
    """The client broke the protocol; the message says how."""


@dataclass(frozen=True)
class Taken:
    """What one read (or one slice of a spool file) came to."""

    events: int  # tracker events journaled (0 when the journal could not be written)
    syncs: list[proto.Sync]  # to acknowledge once the journal fsync covers this read
    other: list[Any]  # Hello, StatusRequest and ContextRequest messages, in order
    hello: proto.Hello | None  # the handshake, when this read brought it
    error: str | None  # why the client is disconnected; frames after it were ignored


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

    def stats(self) -> IngressStats:
        return IngressStats(self.events_total, self.clients, self.messages_total,
                            self.refused_total)

    def take(self, payloads: list[bytes], hello: proto.Hello | None) -> Taken:
        """Decode a connection's read and journal what changes state.

        `hello` is the connection's handshake so far (None before it). Frames after an error
        are ignored; those before it are journaled.
        """
        return self._take(payloads, greeted=hello is not None)

    def take_without_hello(self, payloads: list[bytes]) -> Taken:
        """Like `take` for frames that come with no handshake (spool files, sources): they are
        checked and deduplicated exactly as a greeted client's; a `Hello` among them is an
        error."""
        return self._take(payloads, greeted=True)

    def _take(self, payloads: list[bytes], greeted: bool) -> Taken:
        to_journal = []
        counts = []
        previous: dict[str, int | None] = {}  # dedup state to restore if the write fails
        syncs: list[proto.Sync] = []
        other: list[Any] = []
        hello: proto.Hello | None = None
        nrec = 0
        error = None
        for p in payloads:
            try:
                msg = proto.decoder.decode(p)
            except (msgspec.DecodeError, ValueError) as e:
                error = f"malformed message: {e}"
                break
            if isinstance(msg, (proto.Batch, proto.StepMark)):
                if not greeted:
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
                    n = proto.tracker_points(msg)
                    counts.append(n)
                    nrec += n
            elif not greeted and not isinstance(msg, proto.Hello):
                error = "the first message must be hello"
                break
            elif isinstance(msg, proto.Sync):
                syncs.append(msg)
            elif isinstance(msg, proto.Hello):
                if greeted:
                    error = "hello sent twice"
                    break
                if msg.version != proto.PROTOCOL_VERSION:
                    error = (f"protocol version {msg.version} is not supported "
                             f"(this daemon speaks {proto.PROTOCOL_VERSION})")
                    break
                hello = msg
                greeted = True
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
                return Taken(0, [], other, hello,
                             f"{e}; nothing of this was taken, send it again later")
            self.events_total += nrec
            self.messages_total += len(to_journal)
        return Taken(nrec, syncs, other, hello, error)

    def drop_all(self) -> None:
        """Disconnect every client, unacknowledged, and forget the duplicate check: what they
        sent since the last good fsync will come again and be journaled again."""
        self.dedup.last.clear()
        for scope in list(self._connections):
            scope.cancel()

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            peer = peer_of(stream)
            if peer is not None and peer.uid not in self.allowed_uids \
                    and -1 not in self.allowed_uids:  # -1: any uid (_settings.ANY_UID)
                self.refused_total += 1
                log.warning("refused a client of uid %d (pid %d): not in the allowed uids %s",
                            peer.uid, peer.pid, sorted(self.allowed_uids))
                await _send_quietly(stream, proto.frame(proto.Error(
                    f"uid {peer.uid} may not use this daemon")))
                return
            self.clients += 1
            send, receive = anyio.create_memory_object_stream[_Reply](math.inf)
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

    async def _reader(self, stream: SocketStream, out: MemoryObjectSendStream[_Reply],
                      peer: Peer | None) -> None:
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
            taken = self.take(payloads, hello)
            error = taken.error or error
            if taken.hello is not None:
                hello = taken.hello
                out.send_nowait(_Send(proto.frame(proto.Welcome(proto.PROTOCOL_VERSION,
                                                                os.getpid()))))
            for msg in taken.other:
                if type(msg) is proto.StatusRequest:
                    out.send_nowait(_Send(proto.frame(proto.StatusReply(self.status()))))
                elif type(msg) is proto.ContextRequest:
                    out.send_nowait(_Send(proto.frame(await self.context(msg))))
            last = self.journal.last_seq
            for s in taken.syncs:
                out.send_nowait(_Ack(s.seq, last, s.urgent))
            if error:
                self.refused_total += 1
                who = f"pid {peer.pid}" if peer else "a client"
                log.warning("disconnected %s: %s", who, error)
                out.send_nowait(_Close(proto.frame(proto.Error(error))))
                return

    async def _writer(self, stream: SocketStream,
                      receive: MemoryObjectReceiveStream[_Reply]) -> None:
        """Send replies in order; acks only once the journal fsync covers them."""
        async with receive:
            async for item in receive:
                try:
                    if isinstance(item, _Ack):
                        await self.journal.wait_durable(item.journal_seq, item.urgent)
                        await stream.send(proto.frame(proto.Ack(item.client_seq)))
                    elif isinstance(item, _Send):
                        await stream.send(item.data)
                    else:  # close: the error frame is the last thing the client gets
                        await _send_quietly(stream, item.data)
                        return
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return


@dataclass(frozen=True)
class _Send:
    """A frame to send now."""

    data: bytes


@dataclass(frozen=True)
class _Ack:
    """Acknowledge `client_seq` once the journal is durable up to `journal_seq`."""

    client_seq: int
    journal_seq: int
    urgent: bool


@dataclass(frozen=True)
class _Close:
    """The last frame (an `Error`): send it, then end the connection."""

    data: bytes


_Reply = _Send | _Ack | _Close


async def _send_quietly(stream: SocketStream, data: bytes) -> None:
    try:
        with anyio.fail_after(1):
            await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError):
        pass
