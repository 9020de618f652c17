"""`nats`: forward this daemon's journal to a NATS JetStream stream (design §13, the edge).

Config: `url`; `stream` (default MAGNUS) and `subject` (default magnus: records go to
`<subject>.<host>`); credentials — `token`, `user` and `password`, or `creds_file` — and TLS
(`tls_ca_file`, `tls_cert_file`, `tls_key_file`), all through `${...}` parameters, never logged;
`max_pending` (unacknowledged publishes in flight, default 256), `timeout_s` per publish ack
(default 10), `duplicate_window_s` of a stream it creates (default 3600).

Each journal record goes out as it was journaled — the client's msgpack message, so the central
daemon journals exactly what a client of its own would have sent — with the headers
`Nats-Msg-Id: <host>/<instance>/<seq>` (JetStream drops a re-send inside its duplicate window),
`Magnus-Host` and `Magnus-Seq`. `<instance>` is made once per tracker state directory, so a new
data directory never collides with an old one's ids. The cursor moves only past records
JetStream acknowledged; the server down or slow is a failed delivery, retried with backoff while
the journal keeps the backlog. A record larger than the server's `max_payload` (default 1 MB;
records reach 1 MiB) is refused for good: set `max_payload: 8MB` on the server. A stream that is
missing is created (file storage, subjects `<subject>.>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import Any

import msgspec

from .._tracker import BaseExperimentTracker, PermanentError


class NatsConnection(msgspec.Struct, forbid_unknown_fields=True):
    """Where the stream is and how to log in: both sides' configs start with these."""

    url: str
    stream: str = "MAGNUS"
    subject: str = "magnus"
    token: str | None = None
    user: str | None = None
    password: str | None = None
    creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


class NatsConfig(NatsConnection):
    max_pending: int = 256
    timeout_s: float = 10.0
    duplicate_window_s: float = 3600.0


def connect_options(c: Any) -> dict[str, Any]:
    """nats.connect() keyword arguments for a config with the fields above (shared with the
    central side, `_sources.py`)."""
    opts: dict[str, Any] = {"servers": [c.url], "connect_timeout": 5,
                            "max_reconnect_attempts": -1, "reconnect_time_wait": 1,
                            "allow_reconnect": True}
    if c.token:
        opts["token"] = c.token
    if c.user:
        opts["user"], opts["password"] = c.user, c.password or ""
    if c.creds_file:
        opts["user_credentials"] = c.creds_file
    if c.tls_ca_file or c.tls_cert_file:
        import ssl

        ctx = ssl.create_default_context(cafile=c.tls_ca_file)
        if c.tls_cert_file:
            ctx.load_cert_chain(c.tls_cert_file, c.tls_key_file)
        opts["tls"] = ctx
    return opts


async def connect(c: Any, **extra: Any) -> Any:
    """A connection, or an error that says why not (a wrong credential, nobody listening)
    within CONNECT_TIMEOUT_S — nats-py alone would keep retrying in silence."""
    import nats

    seen: list[BaseException] = []

    async def on_error(e: BaseException) -> None:
        seen.append(e)

    opts = connect_options(c) | {"error_cb": on_error} | extra
    try:
        return await asyncio.wait_for(nats.connect(**opts), CONNECT_TIMEOUT_S)
    except TimeoutError as e:
        why = f"{type(seen[-1]).__name__}: {seen[-1]}" if seen else "no answer"
        raise ConnectionError(f"cannot connect to {c.url}: {why}") from e


CONNECT_TIMEOUT_S = 10.0


async def ensure_stream(js: Any, stream: str, subject: str, window_s: float) -> None:
    """Create the stream when it is missing (file storage, `<subject>.>`)."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{subject}.>"],
                                         storage=StorageType.FILE,
                                         duplicate_window=window_s))


class NatsTracker(BaseExperimentTracker):
    service_name = "nats"
    Config = NatsConfig
    config: NatsConfig
    extra = "nats"
    raw_records = True

    def __init__(self, config: NatsConfig) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Any = None
        self._js: Any = None
        from magnus._identity import host_from

        self.host = host_from(os.environ)
        self.instance = ""

    @classmethod
    def check_library(cls) -> None:
        import nats  # noqa: F401

    def _run(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="nats",
                                            daemon=True)
            self._thread.start()
        self.instance = self._instance_id()
        if self._nc is None:
            self._run(self._connect())

    def _instance_id(self) -> str:
        path = os.path.join(self.state_dir or ".", "instance")
        try:
            with open(path, encoding="ascii") as f:
                return f.read().strip()
        except FileNotFoundError:
            iid = os.urandom(6).hex()
            with open(path, "w", encoding="ascii") as f:
                f.write(iid + "\n")
            return iid

    async def _connect(self) -> None:
        c = self.config
        nc = await connect(c)
        try:
            js = nc.jetstream(timeout=c.timeout_s)
            await ensure_stream(js, c.stream, c.subject, c.duplicate_window_s)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js = nc, js

    def log_records(self, records: list[tuple[int, bytes]]) -> None:
        if self._js is None:
            self.start()
        self._run(self._publish(records))

    async def _publish(self, records: list[tuple[int, bytes]]) -> None:
        from nats.errors import MaxPayloadError
        from nats.js.errors import APIError

        c = self.config
        subject = f"{c.subject}.{_token(self.host)}"
        step = max(c.max_pending, 1)
        for i in range(0, len(records), step):
            chunk = records[i : i + step]
            acks = await asyncio.gather(*[
                self._js.publish(subject, payload, timeout=c.timeout_s, stream=c.stream,
                                 headers={"Nats-Msg-Id": f"{self.host}/{self.instance}/{seq}",
                                          "Magnus-Host": self.host, "Magnus-Seq": str(seq)})
                for seq, payload in chunk], return_exceptions=True)
            for ack in acks:
                if isinstance(ack, MaxPayloadError) or (
                        isinstance(ack, APIError) and "maximum payload" in str(ack).lower()):
                    raise PermanentError(f"a record is larger than the server's max_payload "
                                         f"({ack}); set max_payload: 8MB on nats-server")
                if isinstance(ack, BaseException):
                    raise ack

    def log_metric(self, key: str, value: Any, step: int = 0) -> None:
        raise NotImplementedError("the nats tracker forwards journal records (log_records)")

    def close(self) -> None:
        if self._loop is None:
            return
        if self._nc is not None:
            with contextlib.suppress(Exception):  # a broken connection: nothing left to lose
                self._run(self._nc.close())
            self._nc = self._js = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop.close()
        self._loop = None


def _token(s: str) -> str:
    """A host name as one NATS subject token (no dots, spaces or wildcards)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s) or "_"
