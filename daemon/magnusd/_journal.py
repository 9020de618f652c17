"""The journal: append-only segment files of CRC-framed, sequence-numbered records.

Every state-changing message a client sends is appended here before anything else happens to
it; the run-log store (and the trackers) are consumers that read the journal at their own
cursor. One `append` is one `write` for all the records of a socket read; fsync runs in a worker
thread at most `fsync_interval` apart, or at once when a client's `flush()` asks for it.

Recovery (`open`, done by `_recovery.py`) validates the last segment. Damage there (a torn
tail, a flipped bit, a zeroed length) is cut, but never blindly: a copy of the segment is kept
in `journal/damaged/` as evidence, every intact record found after the damage is written back,
and the next record is appended right after them. Sequence numbers are never reused, whatever
recovery cut: `ensure_after` moves the next seq past what any consumer (run store, trackers) has
seen. A damaged record in an older segment is skipped by readers (`_reader.py`), which resume
at the next intact one. Segments wholly below every consumer's durable cursor are deleted
(`retain`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import anyio

from . import _records as records
from ._reader import SEGMENT_SUFFIX as SEGMENT_SUFFIX
from ._reader import Position as Position
from ._reader import Reader as Reader
from ._reader import list_segments as list_segments
from ._reader import segment_path
from ._recovery import recover
from ._status import JournalRecovery, JournalStatus

log = logging.getLogger("magnusd.journal")


class Unwritable(Exception):
    """The journal cannot take records now (disk full, I/O error, read-only file system):
    nothing of the append was stored; the caller must not acknowledge it."""


class Journal:
    def __init__(self, directory: str, segment_bytes: int = 64 << 20,
                 fsync_interval: float = 0.1) -> None:
        self.dir = directory
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self.segments: tuple[int, ...] = ()  # first seq of each segment, ascending
        self.fd = -1
        self.size = 0
        self.last_seq = 0  # last seq written
        self.events = 0  # tracker events journaled, ever (the last record's mark)
        self.durable_seq = 0  # last seq fsynced
        self.end = Position(1, 0)
        self.truncated_bytes = 0
        self.salvaged_records = 0
        self.damaged_copies: list[str] = []
        self.skipped_bytes = 0  # damaged bytes readers skipped in older segments
        self._retired: list[int] = []  # fds of rotated segments awaiting their final fsync
        self.error: str | None = None  # why the last write or fsync failed; None once one works
        self.error_since: float | None = None
        self.fsync_failures = 0
        self.on_fsync_failure: list[Any] = []  # callbacks: what was written may be lost
        self._must_rotate = False
        self._sync_now = anyio.Event()
        self._durable = anyio.Event()
        self._written = anyio.Event()

    def path(self, first_seq: int) -> str:
        return segment_path(self.dir, first_seq)

    # -- recovery ---------------------------------------------------------------------------

    def open(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.segments = tuple(list_segments(self.dir)) or (1,)
        r = recover(self.dir, self.segments)
        self.fd, self.size, self.events, self.end = r.fd, r.size, r.events, r.end
        self.last_seq = self.durable_seq = r.last_seq
        self.truncated_bytes, self.salvaged_records = r.truncated_bytes, r.salvaged_records
        if r.damaged_copy is not None:
            self.damaged_copies.append(r.damaged_copy)

    def ensure_after(self, seq: int, events: int) -> None:
        """Never reuse a seq (or an event mark) a consumer has already passed: after a
        recovery that cut records, the next record is numbered past them."""
        if seq > self.last_seq:
            log.warning("journal: recovery ended at seq %d but consumers had reached %d; "
                        "numbering continues after %d", self.last_seq, seq, seq)
            self.last_seq = self.durable_seq = seq
        self.events = max(self.events, events)

    def close(self) -> None:
        for fd in self._retired:
            os.fsync(fd)
            os.close(fd)
        self._retired.clear()
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            self.durable_seq = self.last_seq

    # -- writing (event loop only) ----------------------------------------------------------

    def append(self, payloads: list[bytes], events: list[int]) -> int:
        """Append one record per payload in one write; return the last seq.

        `events[i]` is how many tracker events payload i carries (its records, 0 for marks).
        """
        seq = self.last_seq
        total = self.events
        parts = []
        encode = records.encode
        for p, n in zip(payloads, events, strict=True):
            seq += 1
            total += n
            parts.append(encode(seq, p, total))
        data = b"".join(parts)
        try:
            if self._must_rotate:
                self._rotate()
            records.write_all(self.fd, data)
        except OSError as e:
            self._fail(f"cannot write the journal: {e.strerror}")
            try:
                os.ftruncate(self.fd, self.size)  # no partial record stays behind
            except OSError:
                self._must_rotate = True  # the tail is garbage: continue in a new segment
            raise Unwritable(self.error) from e
        self._ok()
        self.size += len(data)
        self.last_seq = seq
        self.events = total
        self.end = Position(self.end.segment, self.size)
        self._written.set()
        if self.size >= self.segment_bytes:
            self._must_rotate = True  # before the next write (which reports a failure)
        return seq

    def _fail(self, error: str) -> None:
        if self.error is None:
            log.error("journal: %s; not acknowledging anything until it works again", error)
            self.error_since = time.time()
        self.error = error

    def _ok(self) -> None:
        if self.error is not None:
            log.warning("journal: writable again after %.1f s (%s)",
                        time.time() - (self.error_since or time.time()), self.error)
        self.error = self.error_since = None

    def _rotate(self) -> None:
        first = self.last_seq + 1
        fd = os.open(self.path(first), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                     | os.O_NOFOLLOW, 0o600)
        self._retired.append(self.fd)
        self.fd = fd
        self._must_rotate = False
        self.size = 0
        self.segments = (*self.segments, first)
        self.end = Position(first, 0)

    async def wait_written(self, after_seq: int) -> None:
        """Return once a record with seq > after_seq is written."""
        while self.last_seq <= after_seq:
            if self._written.is_set():
                self._written = anyio.Event()
            await self._written.wait()

    # -- durability -------------------------------------------------------------------------

    async def wait_durable(self, seq: int, urgent: bool) -> None:
        while self.durable_seq < seq:
            if urgent:
                self._sync_now.set()
            await self._durable.wait()

    async def sync_loop(self) -> None:
        """Group commit: fsync what was written, at most `fsync_interval` apart."""
        while True:
            with anyio.move_on_after(self.fsync_interval):
                await self._sync_now.wait()
            self._sync_now = anyio.Event()
            await self.sync()

    async def sync(self) -> None:
        """fsync what was written. A failed fsync means the written data may be lost whatever
        a later fsync says: it is never acknowledged — `on_fsync_failure` makes the clients
        send it again — and writing continues in a new segment."""
        if self.durable_seq >= self.last_seq:
            return
        target = self.last_seq
        retired, self._retired = self._retired, []
        fds = [*retired, self.fd]
        try:
            await anyio.to_thread.run_sync(_fsync_all, fds, retired)
        except OSError as e:
            self.fsync_failures += 1
            self._fail(f"fsync failed: {e.strerror}")
            for fd in retired:
                _close_quietly(fd)
            self._must_rotate = True
            for callback in self.on_fsync_failure:
                callback()
            return
        self.durable_seq = max(self.durable_seq, target)
        event, self._durable = self._durable, anyio.Event()
        event.set()

    # -- retention --------------------------------------------------------------------------

    def retain(self, min_cursor: int, max_bytes: int = 0, keep_after: int = 0) -> int:
        """Delete segments whose every record is <= min_cursor; return how many.

        With `max_bytes`, also delete the oldest segments (never the active one, never one with
        records after `keep_after`) until the journal fits: the disk cap.
        """
        segs = self.segments
        removed = 0
        over = self.disk_bytes() - max_bytes if max_bytes else 0
        while len(segs) > 1 and (segs[1] - 1 <= min_cursor
                                 or (over > 0 and segs[1] - 1 <= keep_after)):
            with contextlib.suppress(FileNotFoundError):
                over -= os.stat(self.path(segs[0])).st_size
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(segs[0]))
            segs = segs[1:]
            removed += 1
        self.segments = segs
        return removed

    def stats(self) -> JournalStatus:
        """The journal's part of `status` (the daemon fills in the cap's fields)."""
        return JournalStatus(
            last_seq=self.last_seq, durable_seq=self.durable_seq, segments=len(self.segments),
            bytes=self.disk_bytes(), error=self.error, fsync_failures=self.fsync_failures,
            skipped_bytes=self.skipped_bytes,
            recovery=JournalRecovery(self.truncated_bytes, self.salvaged_records,
                                     list(self.damaged_copies)))

    def disk_bytes(self) -> int:
        total = 0
        for s in self.segments:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(self.path(s)).st_size
        return total


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _fsync_all(fds: list[int], close: list[int]) -> None:
    for fd in fds:
        os.fsync(fd)
    for fd in close:
        os.close(fd)
