"""The web viewer (design §12): a read-only Starlette app served inside the daemon's event loop.

This module owns the listening socket, the routes and the server task. uvicorn runs as a task
of the daemon's task group on a socket the daemon binds itself, so a port in use is an entry in
`status` (`ui.error`), never a reason to stop, and uvicorn never installs signal handlers or
logs requests (URLs carry the token). Who may read is `_guard`'s (token, Host, read-only); what
is read is `_views`' (from the data directory, like `magnusd show`); live updates are `_live`'s.
Answers are JSON with NaN and ±inf as null, never cached.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import msgspec

from . import _views
from ._guard import Guard, load_token
from ._journal import Journal
from ._live import LiveStreams
from ._settings import Settings
from ._status import UiStatus

TYPE_CHECKING = False
if TYPE_CHECKING:  # starlette loads with the viewer only
    from starlette.responses import Response

log = logging.getLogger("magnusd.viewer")
HERE = os.path.join(os.path.dirname(__file__), "ui")


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
        self.live = LiveStreams(journal)
        self.allowed_hosts: set[str] = set()

    def status(self) -> UiStatus:
        return UiStatus(self.url, self.error, self.live.open)

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
            return StreamingResponse(self.live.events(q.get("run_id"), q.get("tag")),
                                     media_type="text/event-stream", headers=_NO_CACHE)

        async def no_icon(request: Any) -> Response:
            from starlette import responses

            return responses.Response(status_code=204)

        routes = [Route("/", page("index.html")), Route("/favicon.ico", no_icon),
                  Route("/runs/{run_id:path}", page("run.html")),
                  Route("/api/runs", runs), Route("/api/runs/{run_id:path}/series", series),
                  Route("/api/runs/{run_id:path}", run), Route("/api/events", events),
                  Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")))]
        return Guard(Starlette(routes=routes), self)


_NO_CACHE = {"Cache-Control": "no-store"}
_encoder = msgspec.json.Encoder(enc_hook=repr)


def _json(obj: Any, status: int = 200) -> Response:
    from starlette.responses import Response

    return Response(_encoder.encode(obj), status_code=status,  # NaN and ±inf as null
                    media_type="application/json", headers=_NO_CACHE)


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

