"""The daemon's lifecycle: locks, recovery, the socket, the service tasks, shutdown.

One root task group runs the journal's group commit, the run-store applier, the spool watcher,
the signal handler and the listener. SIGTERM/SIGINT cancel it; shutdown then fsyncs the
journal, lets the run store catch up (bounded), checkpoints and removes the socket.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import stat
import time
from typing import Any

import anyio
import msgspec
from anyio.abc import SocketListener

from magnus import _protocol as proto
from magnus._identity import host_from

from . import _spool
from ._attempts import Reaper
from ._errors import AlreadyRunning, SettingsError
from ._ingress import Dedup, Ingress
from ._journal import Journal, Reader
from ._runstore import RunStore
from ._settings import Settings
from ._sources import Sources
from ._status import AttemptsStatus, ConfigStatus, RunStoreStatus, Status
from ._systemd import Notifier, early_signals, listen_fds
from ._tracker import RunInfo
from ._trackers import Trackers
from ._viewer import Viewer

log = logging.getLogger("magnusd")
SHUTDOWN_CATCH_UP_S = 20.0
SHUTDOWN_DRAIN_S = 10.0  # trackers' share of the stop (systemd's TimeoutStopSec covers both)
RETENTION_EVERY_S = 5.0
ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_PAUSE_S = 0.1


def _lock(path: str, what: str) -> int:
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


def _own_dir(path: str, what: str) -> None:
    """Refuse a directory (or the target of a symlink there) that another user owns or may
    write: the daemon would otherwise write its files where that user chose."""
    st = os.stat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise SettingsError(f"the {what} {path} (→ {os.path.realpath(path)}) is owned by uid "
                            f"{st.st_uid} or writable by others (mode {st.st_mode & 0o777:o}); "
                            "use a directory of your own")


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


class Daemon:
    def __init__(self, settings: Settings, environ: dict[str, str]) -> None:
        self.settings = settings
        self.environ = environ
        os.makedirs(settings.data_dir, mode=0o700, exist_ok=True)
        _own_dir(settings.data_dir, "data directory")  # before anything is written there
        self.started = time.time()
        self.journal = Journal(settings.journal_dir, settings.segment_bytes,
                               settings.fsync_interval)
        self.dedup = Dedup()
        self.ingress = Ingress(self.journal, self.dedup, set(settings.allowed_uids),
                               self.status_body, self.context)
        self.trackers = Trackers(self.journal, settings.data_dir, settings.config, environ)
        self.store: RunStore | None = None
        self.reaper: Reaper | None = None
        self.sources = Sources(self.ingress, self.journal)
        self.trackers.on_sources.append(self.sources.apply)
        self.viewer = Viewer(settings, self.journal,
                             lambda: self.store.take_touched() if self.store else set())
        self.accept_errors = 0
        self.host = host_from(environ)
        self.cap_hit = False
        self.cap_deleted_segments = 0
        self.notifier = Notifier(environ)
        self.trackers.notifier = self.notifier
        self.socket_path = settings.socket
        self.activated = False
        self._rate = (time.monotonic(), 0)  # for the events/s in STATUS=
        self.stopping = anyio.Event()  # set first thing on shutdown (file watchers poll it)
        self.serving = anyio.CancelScope()  # the listener and its connections

    # -- status -----------------------------------------------------------------------------

    def status(self) -> Status:
        """Assembled from each service's own part (design §6)."""
        s = self.settings
        store = self.store
        ingress = self.ingress.stats()
        errors = self.storage_errors()
        return Status(
            pid=os.getpid(),
            uptime_s=round(time.time() - self.started, 3),
            events_total=ingress.events_total, clients=ingress.clients,
            messages_total=ingress.messages_total, refused_clients=ingress.refused_clients,
            config=ConfigStatus(s.config, self.trackers.loaded_at, self.trackers.error),
            trackers=self.trackers.status(),
            sources=self.sources.status(),
            socket=self.socket_path,
            socket_activated=self.activated,
            data_dir=s.data_dir,
            journal=msgspec.structs.replace(
                self.journal.stats(), max_bytes=s.journal_max_bytes, cap_hit=self.cap_hit,
                cap_deleted_segments=self.cap_deleted_segments),
            runlog=store.stats() if store else RunStoreStatus(0, 0, None),
            attempts=AttemptsStatus(len(store.attempts.open) if store else 0,
                                    self.reaper.closed_total if self.reaper else 0),
            duplicates_skipped=self.dedup.skipped,
            accept_errors=self.accept_errors,
            ui=self.viewer.status(),
            disk_full=any("No space left" in e or "quota" in e for e in errors),
            storage_errors=errors,
        )

    def status_body(self) -> dict[str, Any]:
        """The status as the socket's `StatusReply` carries it."""
        return msgspec.to_builtins(self.status())  # type: ignore[no-any-return]

    def storage_errors(self) -> list[str]:
        """Why the daemon cannot write, if it cannot: then nothing is acknowledged."""
        store = self.store
        errors = [e for e in (self.journal.error, store.error if store else None) if e]
        errors += [f"cannot save the cursor of tracker {n!r}"
                   for n in sorted(self.trackers.cursors.failing)]
        return errors

    # -- lifecycle --------------------------------------------------------------------------

    async def context(self, req: proto.ContextRequest) -> proto.ContextReply:
        """The tracker marked `context: true` (else the first usable one), for a client's
        get_experiment_tracker_context()."""
        with anyio.move_on_after(60):  # right after start, trackers may still be loading
            await self.trackers.loaded.wait()
        runners = sorted(self.trackers.runners.values(), key=lambda r: not r.defn.context)
        for r in runners:
            if not r.constructed:
                continue
            run = RunInfo(req.run_id, req.tag, req.step_name)
            try:
                with anyio.fail_after(30):  # a worker between restarts gets a moment
                    while r.worker is None and not r.done.is_set():  # noqa: ASYNC110
                        await anyio.sleep(0.1)
                state = await r.ask(run)  # the tracker's own context_state, in its worker
            except Exception as e:
                log.warning("tracker %r: context_state failed: %s", r.name, e)
                state = {}
            return proto.ContextReply(r.defn.type, r.name, r.defn.config, state)
        return proto.ContextReply("")

    def _recover(self) -> None:
        t0 = time.monotonic()
        self.journal.open()
        self.store = RunStore(self.settings.data_dir)
        cursors = self.trackers.cursors.all()
        self.journal.ensure_after(max([self.store.applied_seq, *(c.seq for c in cursors)]),
                                  max((c.mark for c in cursors), default=0))
        # Rebuild the duplicate check from what clients may still resend: the records after the
        # run-store checkpoint (at most the last three segments), and at least the last one.
        segs = self.journal.segments
        start = max(min(self.store.applied_seq + 1, segs[-1]), segs[max(0, len(segs) - 3)])
        reader = Reader(self.journal.dir, start, self.journal)
        n = 0
        while batch := reader.read():
            for _, _, payload in batch:
                self.dedup.note(payload)
            n += len(batch)
        log.info("journal recovered in %.2f s: last seq %d, %d record(s) after the run-log "
                 "checkpoint %d", time.monotonic() - t0, self.journal.last_seq, n,
                 self.store.applied_seq)

    async def run(self) -> None:
        s = self.settings
        inherited = listen_fds(self.environ)
        os.makedirs(s.data_dir, mode=0o700, exist_ok=True)
        lock_fds = [_lock(os.path.join(s.data_dir, "daemon.lock"),
                          f"the data directory {s.data_dir}")]
        try:
            if inherited:  # socket activation: systemd owns the socket file; never unlink it
                sock = inherited[0]
                self.socket_path = sock.getsockname() or s.socket
                self.activated = True
                for extra in inherited[1:]:
                    log.warning("ignoring extra socket-activation fd %d", extra.fileno())
            else:
                _private_dir(os.path.dirname(s.socket))
                lock_fds.append(_lock(s.socket + ".lock", f"the socket {s.socket}"))
            self.notifier.extend_timeout(60)  # recovery of a large journal may take a while
            self._recover()
            if not inherited:
                sock = _bind(s.socket)
            try:
                await self._serve(sock)
            finally:
                if not inherited:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(s.socket)
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
                store = self.store
                self.trackers.on_change.append(
                    lambda defs: store.set_run_config({"experiment_tracker": defs}))
                await tg.start(self.sources.serve)
                await tg.start(self.trackers.serve)
                tg.start_soon(self.trackers.watch, self.stopping)
                tg.start_soon(self._retention)
                # What clients spooled while no daemon ran is journaled before anyone is served.
                n, _ = await _spool.ingest_all(self.settings.spool_dir, self.ingress)
                if n:
                    log.info("ingested %d spooled event(s)", n)
                tg.start_soon(_spool.watch, self.settings.spool_dir, self.ingress, self.stopping)
                self.reaper = Reaper(self.journal, store.attempts, lambda: store.applied_seq,
                                     self.host, self.settings.spool_dir)
                self.ingress.on_close = self.reaper.wake
                tg.start_soon(self.reaper.run)
                await tg.start(self.viewer.serve)
                tg.start_soon(self._listen, listener)
                tg.start_soon(self._watchdog)
                tg.start_soon(self._status_line)
                log.info("ready: listening on %s%s (data %s, pid %d)", self.socket_path,
                         " (socket-activated)" if self.activated else "",
                         self.settings.data_dir, os.getpid())
                self.notifier.ready(self.status_line())
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
                await self._shutdown()

    async def _listen(self, listener: SocketListener) -> None:
        """Accept clients. Out of file descriptors (or memory), accepting pauses briefly:
        waiting clients stay in the backlog (or retry: the SDK reconnects with backoff) and
        everyone already connected is served on."""
        with self.serving:
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        stream = await listener.accept()
                    except anyio.BrokenResourceError as e:
                        cause = e.__cause__
                        if not isinstance(cause, OSError) or cause.errno not in ACCEPT_RETRY:
                            raise
                        if not self.accept_errors:
                            log.error("cannot accept clients: %s; pausing accept", cause)
                        self.accept_errors += 1
                        await anyio.sleep(ACCEPT_PAUSE_S)
                        continue
                    tg.start_soon(self.ingress.handle, stream)

    async def _signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            early, early_signals[:] = list(early_signals), []
            for sig in early:  # arrived while starting
                if await self._on_signal(sig, scope):
                    return
            async for sig in sigs:
                if await self._on_signal(sig, scope):
                    return

    async def _on_signal(self, sig: int, scope: anyio.CancelScope) -> bool:
        """Handle one signal; True when it stops the daemon."""
        if sig == signal.SIGHUP:
            await self.trackers.reload("SIGHUP", force_notify=True)
            return False
        log.info("%s: shutting down", signal.Signals(sig).name)
        self.notifier.stopping()
        self.notifier.extend_timeout(SHUTDOWN_DRAIN_S + SHUTDOWN_CATCH_UP_S + 10)
        self.stopping.set()
        self.serving.cancel()  # no new connections; what was read is journaled
        await self.journal.sync()
        await self.trackers.drain(SHUTDOWN_DRAIN_S)
        scope.cancel()
        return True

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the event loop: a stuck loop stops the pings."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            self.notifier.send("WATCHDOG=1")
            await anyio.sleep(interval)

    def status_line(self) -> str:
        now, events = time.monotonic(), self.ingress.events_total
        t0, e0 = self._rate
        self._rate = (now, events)
        rate = (events - e0) / (now - t0) if now > t0 else 0.0
        trackers = ", ".join(f"{t.name} {t.state}" + (f" ({t.pending} pending)" if t.pending
                                                      else "")
                             for t in self.trackers.status()) or "no trackers"
        reload = "config error" if self.trackers.error else "config ok"
        storage = self.storage_errors()
        trouble = f"STORAGE: {storage[0]}; " if storage else ""
        return (f"{trouble}{rate:,.0f} events/s, {self.ingress.clients} client(s); {trackers}; "
                f"{reload}")

    async def _status_line(self) -> None:
        if not self.notifier.enabled:
            return
        while True:
            await anyio.sleep(5)
            self.notifier.status(self.status_line())

    async def _retention(self) -> None:
        """Delete journal segments every consumer has passed; enforce the disk cap."""
        assert self.store is not None
        while True:
            await anyio.sleep(RETENTION_EVERY_S)
            floor = self.store.durable_seq
            trackers = self.trackers.min_cursor()
            if trackers is not None:
                floor = min(floor, trackers)
            self.journal.retain(floor)
            cap = self.settings.journal_max_bytes
            if cap and self.journal.disk_bytes() > cap:
                n = self.journal.retain(floor, max_bytes=cap, keep_after=self.store.durable_seq)
                if n:
                    self.cap_hit = True
                    self.cap_deleted_segments += n
                    log.error("journal over its cap of %d bytes: deleted %d segment(s) that "
                              "trackers had not delivered yet", cap, n)

    async def _shutdown(self) -> None:
        assert self.store is not None
        store = self.store
        await self.journal.sync()
        try:  # a disk that is full or failing: the journal keeps what the run store lacks
            with anyio.move_on_after(SHUTDOWN_CATCH_UP_S):
                await anyio.to_thread.run_sync(store.catch_up, self.journal)
            await anyio.to_thread.run_sync(store.close)
        except OSError as e:
            log.error("stopping: the run store could not catch up (%s); the next start "
                      "applies the journal from its checkpoint", e.strerror)
        try:
            self.journal.close()
        except OSError as e:
            log.error("stopping: the journal's last fsync failed (%s)", e.strerror)
        log.info("stopped: %d events journaled this run, last seq %d", self.ingress.events_total,
                 self.journal.last_seq)
