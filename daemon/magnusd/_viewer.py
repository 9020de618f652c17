"""The web viewer (design §12): a read-only Starlette app served inside the daemon's event loop.

uvicorn runs as a task of the daemon's task group on a socket the daemon binds itself, so a
port in use is an entry in `status` (`ui.error`), never a reason to stop, and uvicorn never
installs signal handlers or logs requests (URLs carry the token). Every request needs the token
(`?token=` sets an HttpOnly cookie) and a `Host` of the listen address or localhost (DNS
rebinding); there is no CORS. Live updates are Server-Sent Events read from the journal at
each page's own cursor, like a tracker: nothing is copied for pages that are not open.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import secrets
import socket
import time
from array import array
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import msgspec

from magnus import _protocol as proto

from . import _views
from ._journal import Journal, Reader
from ._series import downsample as _series_downsample
from ._settings import Settings
from ._status import UiStatus

TYPE_CHECKING = False
if TYPE_CHECKING:  # starlette loads with the viewer only
    from starlette.responses import Response

log = logging.getLogger("magnusd.viewer")
HERE = os.path.join(os.path.dirname(__file__), "ui")
COOKIE = "magnusd_token"
SSE_EVERY_S = 0.25
SSE_KEEPALIVE_S = 15.0
LIVE_BYTES = 1 << 20  # journal read per live message
LIVE_POINTS = 5000  # per series per message; more is downsampled (min and max kept)
_decoder = msgspec.msgpack.Decoder(proto.Batch | proto.StepMark)


def load_token(path: str) -> str:
    """The viewer's secret: kept in a 0600 file next to the socket, made once."""
    try:
        with open(path, encoding="ascii") as f:
            token = f.read().strip()
        if len(token) >= 32:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with open(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


def url_of(host: str, port: int) -> str:
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


class Viewer:
    """Owns the listening socket, the app and the server task."""

    def __init__(self, settings: Settings, journal: Journal,
                 touched: Callable[[], set[str]] | None = None) -> None:
        self.settings = settings
        self.journal = journal
        self.url: str | None = None
        self.error: str | None = None
        self.token = ""
        self.table = _views.RunTable(settings.data_dir, touched)
        self.streams = 0
        self.allowed_hosts: set[str] = set()

    def status(self) -> UiStatus:
        return UiStatus(self.url, self.error, self.streams)

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        listen = self.settings.ui_listen
        if listen is None:
            self.error = "disabled (--no-ui)"
            task_status.started()
            return
        host, port = listen
        try:
            self.token = load_token(self.settings.token_path)
            sock = _bind(host, port)
        except OSError as e:
            self.error = f"cannot listen on {host}:{port}: {e.strerror}"
            log.warning("viewer: %s; everything else is served as usual", self.error)
            task_status.started()
            return
        port = sock.getsockname()[1]
        self.url = url_of(host, port)
        self.allowed_hosts = {f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}",
                              f"[::1]:{port}", f"[{host}]:{port}"}
        import uvicorn

        config = uvicorn.Config(self.app(), log_level="warning", access_log=False,
                                lifespan="off", server_header=False)
        server = _server_class()(config)
        log.info("viewer on %s (magnusd ui --print-url gives the link with its token)", self.url)
        task_status.started()
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()

    # -- the app ----------------------------------------------------------------------------

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.responses import FileResponse, StreamingResponse
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles

        data_dir = self.settings.data_dir

        def page(name: str) -> Any:
            async def handler(request: Any) -> Response:
                return FileResponse(os.path.join(HERE, name), headers=_NO_CACHE)
            return handler

        async def runs(request: Any) -> Response:
            q = request.query_params
            got = await anyio.to_thread.run_sync(self.table.runs, q.get("tag") or None,
                                                 q.get("status") or None)
            return _json(got)

        async def run(request: Any) -> Response:
            got = await anyio.to_thread.run_sync(_views.run_view, data_dir,
                                                 request.path_params["run_id"])
            return _json(got) if got is not None else _json({"error": "no such run"}, 404)

        async def series(request: Any) -> Response:
            q = request.query_params
            try:
                points = int(q.get("max_points") or _views.DEFAULT_POINTS)
            except ValueError:
                return _json({"error": "max_points must be an int"}, 400)
            if not q.get("key"):
                return _json({"error": "key is required"}, 400)
            got = await anyio.to_thread.run_sync(
                _views.series_view, data_dir, request.path_params["run_id"],
                q.get("step_name") or "main", q["key"], points)
            return _json(got) if got is not None else _json({"error": "no such series"}, 404)

        async def events(request: Any) -> Response:
            q = request.query_params
            return StreamingResponse(self._events(q.get("run_id"), q.get("tag")),
                                     media_type="text/event-stream", headers=_NO_CACHE)

        async def no_icon(request: Any) -> Response:
            from starlette import responses

            return responses.Response(status_code=204)

        routes = [Route("/", page("index.html")), Route("/favicon.ico", no_icon),
                  Route("/runs/{run_id:path}", page("run.html")),
                  Route("/api/runs", runs), Route("/api/runs/{run_id:path}/series", series),
                  Route("/api/runs/{run_id:path}", run), Route("/api/events", events),
                  Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")))]
        return _Guard(Starlette(routes=routes), self)

    async def _events(self, run_id: str | None, tag: str | None) -> AsyncIterator[bytes]:
        """New points (and step marks) as journaled, batched every SSE_EVERY_S."""
        self.streams += 1
        try:
            reader = Reader(self.journal.dir, self.journal.last_seq + 1, self.journal)
            yield b": live\n\n"
            last_beat = time.monotonic()
            while True:
                with anyio.move_on_after(SSE_KEEPALIVE_S):
                    await self.journal.wait_written(reader.next_seq - 1)
                data = await anyio.to_thread.run_sync(_message, reader, run_id, tag)
                if data:
                    yield data
                elif time.monotonic() - last_beat > SSE_KEEPALIVE_S:
                    yield b": keepalive\n\n"
                else:
                    continue
                last_beat = time.monotonic()
                await anyio.sleep(SSE_EVERY_S)
        finally:
            self.streams -= 1


def _message(reader: Reader, run_id: str | None, tag: str | None) -> bytes | None:
    """The next SSE message (in a worker thread: decoding stays off the event loop)."""
    batch = reader.read(LIVE_BYTES)
    out = _points(batch, run_id, tag) if batch else None
    return b"data: " + msgspec.json.encode(out) + b"\n\n" if out else None


def _points(batch: list[tuple[int, int, bytes]], run_id: str | None,
            tag: str | None) -> dict[str, Any] | None:
    series: dict[tuple[str, str, str], dict[str, Any]] = {}
    marks = []
    for _, _, payload in batch:
        msg = _decoder.decode(payload)
        if (run_id and msg.run_id != run_id) or (tag and msg.tag != tag):
            continue
        if isinstance(msg, proto.StepMark):
            marks.append({"run_id": msg.run_id, "step_name": msg.step_name, "kind": msg.kind,
                          "status": msg.status})
            continue
        if not msg.track:
            continue
        from ._series import collect

        for key, (steps, ts, values) in collect(msg).items():
            s = series.setdefault((msg.run_id, msg.step_name, key),
                                  {"run_id": msg.run_id, "step_name": msg.step_name, "key": key,
                                   "steps": [], "times": [], "values": []})
            s["steps"] += steps
            s["times"] += ts
            s["values"] += [v if v == v and abs(v) != float("inf") else None for v in values]
    if not series and not marks:
        return None
    for s in series.values():  # a burst: keep each bucket's extremes, as the API does
        if len(s["steps"]) > LIVE_POINTS:
            s["steps"], s["times"], s["values"], _ = _series_downsample(
                array("q", s["steps"]), array("d", s["times"]),
                array("d", [math.nan if v is None else v for v in s["values"]]), LIVE_POINTS)
            s["values"] = [v if v == v else None for v in s["values"]]
            s["downsampled"] = True
    return {"series": list(series.values()), "marks": marks}


_NO_CACHE = {"Cache-Control": "no-store"}
_encoder = msgspec.json.Encoder(enc_hook=repr)


def _json(obj: Any, status: int = 200) -> Response:
    from starlette.responses import Response

    return Response(_encoder.encode(obj), status_code=status,  # NaN and ±inf as null
                    media_type="application/json", headers=_NO_CACHE)


class _Guard:
    """ASGI middleware: the Host check, then the token (query once, cookie after)."""

    def __init__(self, app: Any, viewer: Viewer) -> None:
        self.app = app
        self.viewer = viewer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if host not in self.viewer.allowed_hosts:
            await _refuse(send, 403, "this viewer answers only to its own address")
            return
        query = _query_token(scope.get("query_string", b""))
        cookie = _cookie_token(headers.get(b"cookie", b"").decode("latin-1"))
        given = query or cookie or ""
        if scope["method"] not in ("GET", "HEAD"):
            await _refuse(send, 405, "the viewer is read-only")
            return
        if not hmac.compare_digest(given.encode(), self.viewer.token.encode()):
            await _refuse(send, 401, "a token is needed: open the link `magnusd ui` prints")
            return
        if query and query != cookie:
            async def with_cookie(message: Any) -> None:
                if message["type"] == "http.response.start":
                    message.setdefault("headers", []).append(
                        (b"set-cookie", f"{COOKIE}={query}; HttpOnly; SameSite=Strict; "
                                        f"Path=/".encode()))
                await send(message)
            await self.app(scope, receive, with_cookie)
            return
        await self.app(scope, receive, send)


def _query_token(qs: bytes) -> str | None:
    from urllib.parse import parse_qs

    got = parse_qs(qs.decode("latin-1")).get("token")
    return got[0] if got else None


def _cookie_token(header: str) -> str | None:
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


async def _refuse(send: Any, status: int, text: str) -> None:
    body = json.dumps({"error": text}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the daemon owns the signals

    return Server

