"""The daemon's lifecycle: its claims (`_claims`), recovery, the service tasks, shutdown.

One root task group runs the journal's group commit, the run-store applier, the trackers, the
sources, the spool watcher, the reaper, the viewer, the signal handler and the listener.
Invariants: nothing is served before the journal is recovered and what clients spooled while
no daemon ran is journaled; SIGTERM/SIGINT stop accepting first, then fsync the journal, drain
trackers (bounded), let the run store catch up (bounded), checkpoint, and remove the socket
(never a socket-activated one: systemd owns it). Its status is read by `_report.Report`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import time

import anyio
from anyio.abc import SocketListener

from magnus._identity import host_from

from . import _claims as claims
from . import _spool
from ._attempts import Reaper
from ._context import tracker_context
from ._ingress import Dedup, Ingress
from ._journal import Journal, Reader
from ._report import Report
from ._runstore import RunStore
from ._settings import Settings
from ._sources import Sources
from ._systemd import Notifier, early_signals, listen_fds
from ._trackers import Trackers
from ._viewer import Viewer

log = logging.getLogger("magnusd")
SHUTDOWN_CATCH_UP_S = 20.0
SHUTDOWN_DRAIN_S = 10.0  # trackers' share of the stop (systemd's TimeoutStopSec covers both)
RETENTION_EVERY_S = 5.0
ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_PAUSE_S = 0.1


class Daemon:
    def __init__(self, settings: Settings, environ: dict[str, str]) -> None:
        self.settings = settings
        self.environ = environ
        os.makedirs(settings.data_dir, mode=0o700, exist_ok=True)
        claims.own_dir(settings.data_dir, "data directory")  # before anything is written there
        self.started = time.time()
        self.journal = Journal(settings.journal_dir, settings.segment_bytes,
                               settings.fsync_interval)
        self.dedup = Dedup()
        self.report = Report(self)  # reads the services below when asked
        self.ingress = Ingress(self.journal, self.dedup, set(settings.allowed_uids),
                               self.report.body, lambda req: tracker_context(self.trackers, req))
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
        self.stopping = anyio.Event()  # set first thing on shutdown (file watchers poll it)
        self.serving = anyio.CancelScope()  # the listener and its connections

    # -- lifecycle --------------------------------------------------------------------------

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
        lock_fds = [claims.lock(os.path.join(s.data_dir, "daemon.lock"),
                          f"the data directory {s.data_dir}")]
        try:
            if inherited:  # socket activation: systemd owns the socket file; never unlink it
                sock = inherited[0]
                self.socket_path = sock.getsockname() or s.socket
                self.activated = True
                for extra in inherited[1:]:
                    log.warning("ignoring extra socket-activation fd %d", extra.fileno())
            else:
                claims.private_dir(os.path.dirname(s.socket))
                lock_fds.append(claims.lock(s.socket + ".lock", f"the socket {s.socket}"))
            self.notifier.extend_timeout(60)  # recovery of a large journal may take a while
            self._recover()
            if not inherited:
                sock = claims.bind(s.socket)
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
                spooled = await _spool.ingest_all(self.settings.spool_dir, self.ingress)
                if spooled.events:
                    log.info("ingested %d spooled event(s)", spooled.events)
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
                self.notifier.ready(self.report.line())
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

    async def _status_line(self) -> None:
        if not self.notifier.enabled:
            return
        while True:
            await anyio.sleep(5)
            self.notifier.status(self.report.line())

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
