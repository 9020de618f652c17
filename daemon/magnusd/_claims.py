"""What the daemon claims on the file system before it serves: one daemon per data directory
and per socket (lock files), directories of its own, and its socket.

Invariants: a lock file holds the pid of the daemon that holds its flock, and is never
followed through a symlink; a data directory owned by another user or writable by others is
refused before anything is written there; the socket is created 0600 (umask) in a directory
made 0700, and a socket file is replaced only when nobody answers on it (the caller holds its
lock). Errors are `SettingsError` or `AlreadyRunning`, with the path and what to do.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat

from ._errors import AlreadyRunning, SettingsError

log = logging.getLogger("magnusd")


def lock(path: str, what: str) -> int:
    try:  # a symlink planted here is never followed (it would get our pid written through it)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SettingsError(f"{path} is a symbolic link; remove it (the daemon never "
                                "follows one there)") from None
        raise SettingsError(f"cannot open the lock file {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode().strip() or "?"
        finally:
            os.close(fd)
        raise AlreadyRunning(f"another magnusd (pid {holder}) is already using {what}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def own_dir(path: str, what: str) -> None:
    """Refuse a directory (or the target of a symlink there) that another user owns or may
    write: the daemon would otherwise write its files where that user chose."""
    st = os.stat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise SettingsError(f"the {what} {path} (→ {os.path.realpath(path)}) is owned by uid "
                            f"{st.st_uid} or writable by others (mode {st.st_mode & 0o777:o}); "
                            "use a directory of your own")


def private_dir(directory: str) -> None:
    """Create the socket's directory as 0700 when missing (an existing one is left as it is)."""
    if not os.path.isdir(directory):
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o700)


def bind(path: str) -> socket.socket:
    """Bind the socket in a private directory, replacing a stale one (we hold its lock)."""
    directory = os.path.dirname(path)
    if os.stat(directory).st_mode & 0o077:
        log.warning("socket directory %s is accessible to other users; clients of other uids "
                    "are still refused (SO_PEERCRED)", directory)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SettingsError(f"{path} exists and is not a socket; remove it or choose --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1)
        try:
            probe.connect(path)
        except OSError:
            pass  # nobody answers: stale
        else:
            raise AlreadyRunning(f"another daemon is serving on {path} (socket-activated?)")
        finally:
            probe.close()
        os.unlink(path)  # stale: its daemon no longer holds the lock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise SettingsError(f"cannot bind {path}: {e.strerror}") from None
    finally:
        os.umask(old)
    sock.listen(512)
    return sock
