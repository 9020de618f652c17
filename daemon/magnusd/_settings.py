"""Daemon settings, resolved as: command-line option > environment variable > default.

Pure functions of (options, environ): nothing is read from the environment at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from magnus import _paths

from ._errors import SettingsError

ANY_UID = -1


@dataclass(frozen=True)
class Settings:
    socket: str
    data_dir: str
    config: str
    fsync_interval: float = 0.1
    allowed_uids: frozenset[int] = field(default_factory=lambda: frozenset({os.getuid()}))
    segment_bytes: int = 64 << 20
    spool_dir: str = ""
    journal_max_bytes: int = 10 << 30
    ui_listen: tuple[str, int] | None = ("127.0.0.1", 7470)  # None: no viewer

    @property
    def token_path(self) -> str:
        """The viewer's secret, next to the socket (design §12)."""
        return self.socket + ".token"

    @property
    def journal_dir(self) -> str:
        return os.path.join(self.data_dir, "journal")


def _number(name: str, raw: str, kind: type[float] | type[int]) -> float:
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < 0:
        raise SettingsError(f"{name}={raw!r} must not be negative")
    return value


def resolve(options: Mapping[str, object], environ: Mapping[str, str]) -> Settings:
    def pick(opt: str, env: str) -> str | None:
        v = options.get(opt)
        if v is not None:
            return str(v)
        return environ.get(env) or None

    env = {k: v for k, v in environ.items() if v}
    sock = pick("socket", "MAGNUS_SOCKET") or _paths.socket_path(env)
    data = pick("data_dir", "MAGNUS_DATA_DIR") or _paths.data_dir(env)
    config = pick("config", "MAGNUS_CONFIG") or _paths.config_path(env)
    fsync = pick("fsync_interval", "MAGNUS_FSYNC_INTERVAL")
    seg = pick("segment_bytes", "MAGNUS_JOURNAL_SEGMENT_BYTES")
    uids = pick("allow_uids", "MAGNUS_ALLOW_UIDS")
    cap = pick("journal_max_bytes", "MAGNUS_JOURNAL_MAX_BYTES")
    ui = None if options.get("no_ui") else parse_listen(
        pick("ui_listen", "MAGNUS_UI_LISTEN") or "127.0.0.1:7470")
    allowed = {os.getuid()}
    if uids:
        for part in uids.replace(",", " ").split():
            if part == "*":  # any uid: the socket file's mode and group decide (system units)
                allowed.add(ANY_UID)
            else:
                allowed.add(int(_number("MAGNUS_ALLOW_UIDS", part, int)))
    return Settings(
        socket=os.path.abspath(sock),
        data_dir=os.path.abspath(data),
        config=os.path.abspath(config),
        fsync_interval=0.1 if fsync is None else _number("fsync interval", fsync, float),
        allowed_uids=frozenset(allowed),
        journal_max_bytes=10 << 30 if cap is None else int(_number("journal cap", cap, int)),
        spool_dir=os.path.abspath(environ.get("MAGNUS_SPOOL_DIR") or os.path.join(data, "spool")),
        segment_bytes=64 << 20 if seg is None else max(int(_number("segment bytes", seg, int)),
                                                       4096),
        ui_listen=ui,
    )


def parse_listen(raw: str) -> tuple[str, int]:
    """`HOST:PORT` (or `:PORT`, host 127.0.0.1) for the viewer."""
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SettingsError(f"--ui-listen {raw!r}: expected HOST:PORT, e.g. 127.0.0.1:7470")
    return host.strip("[]") or "127.0.0.1", int(port)
