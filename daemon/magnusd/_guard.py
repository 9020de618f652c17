"""The viewer's door: who may read (design §12).

Invariants: every request needs the token (`?token=` once sets an HttpOnly, SameSite=Strict
cookie, the cookie after) and a `Host` of the listen address or localhost (against DNS
rebinding); only GET and HEAD are served (the viewer is read-only); there is no CORS. The token
lives in a 0600 file next to the socket, made once (written aside, then renamed into place),
and is compared in constant time.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from typing import Any

COOKIE = "magnusd_token"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._viewer import Viewer


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


class Guard:
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
