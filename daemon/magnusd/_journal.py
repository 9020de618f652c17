"""The journal: append-only segment files of CRC-framed, sequence-numbered records.

Every state-changing message a client sends is appended here before anything else happens to
it; the run-log store (and the trackers) are consumers that read the journal at their own
cursor. One `append` is one `write` for all the records of a socket read; fsync runs in a worker
thread at most `fsync_interval` apart, or at once when a client's `flush()` asks for it.

Recovery (`open`) validates the last segment. Damage there (a torn tail, a flipped bit, a zeroed
length) is cut, but never blindly: a copy of the segment is kept in `journal/damaged/` as
evidence, every intact record found after the damage is written back, and the next record is
appended right after them. Sequence numbers are never reused, whatever recovery cut:
`ensure_after` moves the next seq past what any consumer (run store, trackers) has seen. A
damaged record in an older segment is skipped by readers, which resume at the next intact one.
Segments wholly below every consumer's durable cursor are deleted (`retain`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import anyio

from . import _records as records

log = logging.getLogger("magnusd.journal")
SEGMENT_SUFFIX = ".seg"


@dataclass(frozen=True)
class Position:
    segment: int  # first seq of the segment
    offset: int  # bytes written to it


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
        return os.path.join(self.dir, f"{first_seq:020d}{SEGMENT_SUFFIX}")

    # -- recovery ---------------------------------------------------------------------------

    def open(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.segments = tuple(list_segments(self.dir))
        if not self.segments:
            self.segments = (1,)
        first = self.segments[-1]
        path = self.path(first)
        data = records.read_file(path)
        good, last, events = 0, first - 1, 0
        for good, last, events, _ in records.scan(data):  # noqa: B007 - keep the last
            pass
        if good == 0 and len(self.segments) > 1:
            events = self._events_at_end_of(self.segments[-2])
        salvaged: list[tuple[int, int, bytes]] = []
        if good < len(data):
            salvaged = records.salvage(data, good, last)
            self.truncated_bytes = len(data) - good
            self.salvaged_records = len(salvaged)
            self._keep_damaged(path)
            log.warning("journal: %s was damaged at byte %d of %d; kept a copy in %s, wrote "
                        "back %d intact record(s) found after the damage", path, good,
                        len(data), self.damaged_copies[-1], len(salvaged))
        del data
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.ftruncate(self.fd, good)
        if salvaged:
            back = b"".join(records.encode(seq, p, mark) for seq, mark, p in salvaged)
            records.write_all(self.fd, back)
            good += len(back)
            last, events = salvaged[-1][0], max(events, salvaged[-1][1])
        os.fsync(self.fd)
        self.size = good
        self.last_seq = self.durable_seq = last
        self.events = events
        self.end = Position(first, good)

    def _keep_damaged(self, path: str) -> None:
        directory = os.path.join(self.dir, "damaged")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        copy = os.path.join(directory, f"{os.path.basename(path)}.{time.time_ns()}")
        shutil.copyfile(path, copy)
        self.damaged_copies.append(copy)

    def ensure_after(self, seq: int, events: int) -> None:
        """Never reuse a seq (or an event mark) a consumer has already passed: after a
        recovery that cut records, the next record is numbered past them."""
        if seq > self.last_seq:
            log.warning("journal: recovery ended at seq %d but consumers had reached %d; "
                        "numbering continues after %d", self.last_seq, seq, seq)
            self.last_seq = self.durable_seq = seq
        self.events = max(self.events, events)

    def _events_at_end_of(self, first_seq: int) -> int:
        events = 0
        for _, _, events, _ in records.scan(records.read_file(self.path(first_seq))):  # noqa: B007 - keep the last
            pass
        return events

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

    def stats(self) -> dict[str, Any]:
        return {"last_seq": self.last_seq, "durable_seq": self.durable_seq,
                "segments": len(self.segments), "bytes": self.disk_bytes(),
                "error": self.error, "fsync_failures": self.fsync_failures,
                "skipped_bytes": self.skipped_bytes,
                "recovery": {"truncated_bytes": self.truncated_bytes,
                             "salvaged_records": self.salvaged_records,
                             "damaged_copies": self.damaged_copies}}

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


def list_segments(directory: str) -> list[int]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(n[: -len(SEGMENT_SUFFIX)]) for n in names
                  if n.endswith(SEGMENT_SUFFIX) and n[: -len(SEGMENT_SUFFIX)].isdigit())


class Reader:
    """Reads the journal forward from a seq; safe in a worker thread while the loop appends.

    Works on a journal that is open in this process (`journal`) or, read-only, on a directory
    (for `magnusd show` with the daemon stopped or running).
    """

    def __init__(self, directory: str, next_seq: int, journal: Journal | None = None) -> None:
        self.dir = directory
        self.journal = journal
        self.next_seq = next_seq
        segs = self._segments()
        below = [s for s in segs if s <= next_seq]
        self.segment = below[-1] if below else (segs[0] if segs else next_seq)
        self.offset = 0

    def _segments(self) -> tuple[int, ...]:
        return self.journal.segments if self.journal else tuple(list_segments(self.dir))

    def read(self, max_bytes: int = 8 << 20) -> list[tuple[int, int, bytes]]:
        """(seq, mark, payload) from next_seq on, up to about max_bytes; [] when caught up."""
        out: list[tuple[int, int, bytes]] = []
        got = 0
        while got < max_bytes:
            later = next((s for s in self._segments() if s > self.segment), None)
            path = os.path.join(self.dir, f"{self.segment:020d}{SEGMENT_SUFFIX}")
            active = self.journal is not None and self.journal.end.segment == self.segment
            if self.journal is not None and active:
                limit = self.journal.end.offset  # only what the writer has finished
            else:
                try:
                    limit = os.stat(path).st_size
                except FileNotFoundError:
                    limit = 0
            want = min(limit, self.offset + max(max_bytes - got, 2 << 20))
            data = records.read_file(path, self.offset, want) if want > self.offset else b""
            used = 0
            for used, seq, mark, payload in records.scan(data):  # noqa: B007 - keep the last
                if seq >= self.next_seq:
                    out.append((seq, mark, payload))
                    got += len(payload)
                    self.next_seq = seq + 1
            self.offset += used
            if self.offset < limit:
                if used:
                    continue
                if later is None or active:
                    break  # a record still being written (read-only reader of a live journal)
                rest = records.read_file(path, self.offset, limit)
                skip = records.resync(rest, 0, self.next_seq - 1)
                log.error("journal: damaged record in segment %d at offset %d; skipped %d bytes "
                          "to the next intact record", self.segment, self.offset, skip)
                if self.journal is not None:
                    self.journal.skipped_bytes += skip
                self.offset += skip
                if self.offset < limit:
                    continue
            elif later is None or active:
                break
            self.segment, self.offset = later, 0
        return out
