"""Sources: the central daemon's side of fan-in (design §13), reading a JetStream stream.

`sources:` in the config (hot-reloaded like trackers) names streams to read. Each source is a
durable pull consumer with explicit acks: it fetches the records edges forwarded (each exactly
the message a client sent), journals them through the same path as a client's read — the
duplicate check by (client id, seq) keeps each original once across re-sends and redeliveries —
waits for the journal's fsync, and only then acknowledges them to JetStream. A crash before
the ack redelivers; the duplicate check drops what was already journaled. The server down, a
wrong credential or a missing stream is a `failing` source retried with backoff, never a stop.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.abc
import msgspec

from ._ingress import Ingress
from ._journal import Journal, Unwritable
from ._status import SourceState, SourceStatus
from .trackers.nats import NatsConnection

log = logging.getLogger("magnusd.sources")
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0


class NatsSourceConfig(NatsConnection):
    durable: str = "central"
    batch: int = 256
    duplicate_window_s: float = 3600.0


KINDS: dict[str, type[msgspec.Struct]] = {"nats": NatsSourceConfig}


class SourceDef(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    type: str
    name: str | None = None
    config: dict[str, Any] = {}

    @property
    def key(self) -> str:
        return self.name or self.type


def decode(d: SourceDef, where: str) -> Any:
    """The source's `config:` block as its struct; ValueError naming the key path."""
    kind = KINDS.get(d.type)
    if kind is None:
        raise ValueError(f"{where}.type: unknown source type {d.type!r} (known: "
                         f"{', '.join(sorted(KINDS))})")
    try:
        return msgspec.convert(d.config, kind)
    except msgspec.ValidationError as e:
        raise ValueError(str(e).replace("`$", f"`{where}.config", 1)) from None


class Source:
    def __init__(self, defn: SourceDef, ingress: Ingress, journal: Journal) -> None:
        self.defn = defn
        self.name = defn.key
        self.conf: NatsSourceConfig = decode(defn, "$.sources")
        self.ingress = ingress
        self.journal = journal
        self.state: SourceState = SourceState.STARTING
        self.received = 0
        self.journaled = 0
        self.refused = 0
        self.errors = 0
        self.last_error: str | None = None
        self.lag: int | None = None
        self.scope = anyio.CancelScope()

    def status(self) -> SourceStatus:
        return SourceStatus(self.name, self.defn.type, self.state, self.lag,
                            self.received, self.journaled, self.refused, self.errors,
                            self.last_error)

    async def run(self) -> None:
        backoff = BACKOFF_MIN
        with self.scope:
            while True:
                try:
                    await self._consume()
                except Exception as e:  # the server, the network, credentials: retried
                    self.errors += 1
                    error = f"{type(e).__name__}: {e}"[:500]
                    if self.state is not SourceState.FAILING or error != self.last_error:
                        log.error("source %r failing: %s (retrying with backoff)", self.name,
                                  error)
                    self.state, self.last_error = SourceState.FAILING, error
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                else:
                    backoff = BACKOFF_MIN
        self.state = SourceState.STOPPED

    async def _consume(self) -> None:
        from nats.errors import TimeoutError as FetchTimeout

        from .trackers.nats import connect, ensure_stream

        c = self.conf
        nc = await connect(c, max_reconnect_attempts=0)
        try:
            js = nc.jetstream(timeout=10)
            await ensure_stream(js, c.stream, c.subject, c.duplicate_window_s)
            sub = await js.pull_subscribe(f"{c.subject}.>", durable=c.durable, stream=c.stream)
            if self.state is not SourceState.RUNNING:
                log.info("source %r: reading %s (durable %s)", self.name, c.stream, c.durable)
            self.state, self.last_error = SourceState.RUNNING, None
            while True:
                try:
                    msgs = await sub.fetch(c.batch, timeout=1)
                except (FetchTimeout, TimeoutError):  # nothing new within the second
                    msgs = []
                if not msgs:
                    self.lag = 0
                    continue
                await self._take([m.data for m in msgs])
                for m in msgs:  # only after the fsync that covers them
                    await m.ack()
                self.received += len(msgs)
                self.lag = msgs[-1].metadata.num_pending
        finally:
            with anyio.CancelScope(shield=True):
                await nc.close()

    async def _take(self, payloads: list[bytes]) -> None:
        """Journal the records (each once) and wait until they are durable."""
        failures = self.journal.fsync_failures
        taken = self.ingress.take_without_hello(payloads)
        if taken.error:
            if self.journal.error:
                raise Unwritable(self.journal.error)
            for p in payloads:  # find the bad one; the rest go through
                one = self.ingress.take_without_hello([p]).error
                if one and self.journal.error:
                    raise Unwritable(self.journal.error)
                if one:
                    self.refused += 1
                    log.error("source %r: a record was refused: %s", self.name, one)
        await self.journal.wait_durable(self.journal.last_seq, urgent=True)
        if self.journal.fsync_failures != failures:
            raise Unwritable("an fsync failed: the records are fetched again")
        self.journaled += taken.events


class Sources:
    """The running sources; `apply` follows each config reload."""

    def __init__(self, ingress: Ingress, journal: Journal) -> None:
        self.ingress = ingress
        self.journal = journal
        self.running: dict[str, Source] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    def status(self) -> list[SourceStatus]:
        return [s.status() for s in self.running.values()]

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    def apply(self, defs: list[SourceDef]) -> None:
        assert self._tg is not None
        new: dict[str, Source] = {}
        for d in defs:
            old = self.running.pop(d.key, None)
            if old is not None and old.defn == d:
                new[d.key] = old
                continue
            if old is not None:
                old.scope.cancel()
            src = Source(d, self.ingress, self.journal)
            new[d.key] = src
            self._tg.start_soon(src.run)
        for old in self.running.values():
            log.info("source %r removed", old.name)
            old.scope.cancel()
        self.running = new
