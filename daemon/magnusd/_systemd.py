"""systemd integration without a dependency: sd_notify, the watchdog, socket activation.

- `Notifier.send("READY=1")`: one datagram to `$NOTIFY_SOCKET` (`@` = abstract namespace). A
  no-op outside systemd.
- `Notifier.watchdog_interval()`: half of `$WATCHDOG_USEC` when `$WATCHDOG_PID` is unset or ours;
  the daemon pings from its event loop, so a stuck loop stops the pings and systemd restarts it.
- `listen_fds()`: sockets passed by socket activation (`$LISTEN_FDS` from fd 3, for
  `$LISTEN_PID`), each checked to be a listening AF_UNIX stream socket.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from ._errors import SettingsError

log = logging.getLogger("magnusd.systemd")
SD_LISTEN_FDS_START = 3


class Notifier:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.address = environ.get("NOTIFY_SOCKET", "")
        self.environ = environ
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send `fields` (e.g. "READY=1", "STATUS=...") as one newline-separated datagram."""
        if self._sock is None:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            self._sock.sendto("\n".join(fields).encode(), addr)
        except OSError as e:
            log.warning("sd_notify to %s failed: %s", self.address, e)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # notify-reload wants the reload's CLOCK_MONOTONIC time in the same datagram
        now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={now_us}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, line: str) -> None:
        self.send("STATUS=" + line.replace("\n", " "))

    def extend_timeout(self, seconds: float) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings, or None when systemd does not watch us."""
        usec = self.environ.get("WATCHDOG_USEC")
        pid = self.environ.get("WATCHDOG_PID")
        if not usec or not self.enabled:
            return None
        if pid and pid != str(os.getpid()):
            return None
        try:
            return max(int(usec) / 2_000_000, 0.01)
        except ValueError:
            return None


class ActivationError(SettingsError):
    """The sockets systemd passed are not what magnusd can serve."""


def listen_fds(environ: Mapping[str, str]) -> list[socket.socket]:
    """The listening sockets systemd passed to this process (empty when not socket-activated)."""
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        n = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        raise ActivationError(f"LISTEN_FDS={environ.get('LISTEN_FDS')!r} is not a number") \
            from None
    out = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ActivationError(f"socket-activation fd {fd} is {sock.family.name}/"
                                  f"{sock.type.name}; magnusd needs an AF_UNIX stream socket "
                                  "(ListenStream= with a path)")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ActivationError(f"socket-activation fd {fd} is not listening")
        out.append(sock)
    return out


# Signals that arrive before the event loop handles them (a SIGHUP's default action would kill
# the process; a SIGTERM during recovery must still stop it cleanly once it can).
early_signals: list[int] = []


def install_early_signal_handlers() -> None:
    import signal

    def remember(signum: int, _frame: object) -> None:
        early_signals.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, remember)


def restore_default_signal_handlers() -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
