"""The daemon's lifecycle: locks, recovery, the socket, the service tasks, shutdown.

One root task group runs the journal's group commit, the run-store applier, the spool watcher,
the signal handler and the listener. SIGTERM/SIGINT cancel it; shutdown then fsyncs the
journal, lets the run store catch up (bounded), checkpoints and removes the socket.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import stat
import time
from typing import Any

import anyio
from anyio.abc import SocketListener

from . import _config, _spool
from ._errors import AlreadyRunning, SettingsError
from ._ingress import Dedup, Ingress
from ._journal import Journal, Reader
from ._runstore import RunStore
from ._settings import Settings

log = logging.getLogger("magnusd")
SHUTDOWN_CATCH_UP_S = 20.0


def _lock(path: str, what: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
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


def _private_dir(directory: str) -> None:
    """Create the socket's directory as 0700 when missing (an existing one is left as it is)."""
    if not os.path.isdir(directory):
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o700)


def _bind(path: str) -> socket.socket:
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


class Daemon:
    def __init__(self, settings: Settings, environ: dict[str, str]) -> None:
        self.settings = settings
        self.environ = environ
        self.started = time.time()
        self.journal = Journal(settings.journal_dir, settings.segment_bytes,
                               settings.fsync_interval)
        self.dedup = Dedup()
        self.ingress = Ingress(self.journal, self.dedup, set(settings.allowed_uids), self.status)
        self.config_error: str | None = None
        self.config_loaded_at: float | None = None
        self.config: _config.Config = _config.Config()
        self.store: RunStore | None = None
        self.stopping = anyio.Event()  # set first thing on shutdown (file watchers poll it)

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        s = self.settings
        store = self.store
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            "events_total": self.ingress.events_total,
            "clients": self.ingress.clients,
            "config": {"path": s.config, "loaded_at": self.config_loaded_at,
                       "error": self.config_error},
            "trackers": [],
            "socket": s.socket,
            "data_dir": s.data_dir,
            "journal": {"last_seq": self.journal.last_seq, "durable_seq": self.journal.durable_seq,
                        "segments": len(self.journal.segments),
                        "bytes": self.journal.disk_bytes()},
            "runlog": {"applied_seq": store.applied_seq if store else 0,
                       "checkpoint_seq": store.durable_seq if store else 0},
            "messages_total": self.ingress.messages_total,
            "duplicates_skipped": self.dedup.skipped,
            "refused_clients": self.ingress.refused_total,
        }

    # -- lifecycle --------------------------------------------------------------------------

    def _load_config(self) -> None:
        try:
            self.config = _config.load(self.settings.config, self.environ)
            self.config_error = None
            self.config_loaded_at = time.time()
            log.info("config %s loaded: %d tracker(s)", self.settings.config,
                     len(self.config.trackers))
        except _config.ConfigError as e:
            self.config_error = str(e)
            log.error("config not loaded: %s", e)

    def _recover(self) -> None:
        t0 = time.monotonic()
        self.journal.open()
        self.store = RunStore(self.settings.data_dir,
                              {"experiment_tracker": [t.to_builtins()
                                                      for t in self.config.trackers]})
        # Rebuild the duplicate check from what clients may still resend: the records after the
        # run-store checkpoint, and at least the last segment.
        start = min(self.store.applied_seq + 1, self.journal.segments[-1])
        reader = Reader(self.journal.dir, start, self.journal)
        n = 0
        while batch := reader.read():
            for _, payload in batch:
                self.dedup.note(payload)
            n += len(batch)
        log.info("journal recovered in %.2f s: last seq %d, %d record(s) after the run-log "
                 "checkpoint %d", time.monotonic() - t0, self.journal.last_seq, n,
                 self.store.applied_seq)

    async def run(self) -> None:
        s = self.settings
        os.makedirs(s.data_dir, mode=0o700, exist_ok=True)
        lock_fds = [_lock(os.path.join(s.data_dir, "daemon.lock"), f"the data directory {s.data_dir}")]
        try:
            _private_dir(os.path.dirname(s.socket))
            lock_fds.append(_lock(s.socket + ".lock", f"the socket {s.socket}"))
            self._load_config()
            self._recover()
            sock = _bind(s.socket)
            try:
                await self._serve(sock)
            finally:
                try:
                    os.unlink(s.socket)
                except FileNotFoundError:
                    pass
        finally:
            for fd in lock_fds:
                os.close(fd)

    async def _serve(self, sock: socket.socket) -> None:
        listener = await SocketListener.from_socket(sock)
        assert self.store is not None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._signals, tg.cancel_scope)
                tg.start_soon(self.journal.sync_loop)
                tg.start_soon(self.store.follow, self.journal)
                # What clients spooled while no daemon ran is journaled before anyone is served.
                n = await _spool.ingest_all(self.settings.spool_dir, self.ingress)
                if n:
                    log.info("ingested %d spooled event(s)", n)
                tg.start_soon(_spool.watch, self.settings.spool_dir, self.ingress, self.stopping)
                tg.start_soon(listener.serve, self.ingress.handle)
                log.info("ready: listening on %s (data %s, pid %d)", self.settings.socket,
                         self.settings.data_dir, os.getpid())
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
                await self._shutdown()

    async def _signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for sig in sigs:
                if sig == signal.SIGHUP:
                    log.info("SIGHUP: reloading the config")
                    self._load_config()
                    continue
                log.info("%s: shutting down", signal.Signals(sig).name)
                self.stopping.set()
                scope.cancel()
                return

    async def _shutdown(self) -> None:
        assert self.store is not None
        store = self.store
        await self.journal.sync()
        with anyio.move_on_after(SHUTDOWN_CATCH_UP_S):
            await anyio.to_thread.run_sync(store.catch_up, self.journal)
        await anyio.to_thread.run_sync(store.close)
        self.journal.close()
        log.info("stopped: %d events journaled this run, last seq %d", self.ingress.events_total,
                 self.journal.last_seq)
