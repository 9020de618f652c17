"""Reading the journal forward: segment files, in seq order, from any seq on.

A segment is `<first seq, 20 digits>.seg` in the journal directory, holding CRC-framed records
(`_records.py`) with consecutive seqs. A `Reader` keeps its own cursor (segment, offset,
`next_seq`) and never writes. On a journal open in this process (`journal`, any
`LiveJournal`) it reads only what the writer has finished (`end`), so it is safe in a worker
thread while the event loop appends; without one it reads a directory read-only (`magnusd
show` with the daemon stopped or running), stopping before a record still being written. A
damaged record in an older segment is skipped — logged and counted in the journal's
`skipped_bytes` — and reading resumes at the next intact record.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from . import _records as records

log = logging.getLogger("magnusd.journal")
SEGMENT_SUFFIX = ".seg"


class Record(NamedTuple):
    """One journal record as a reader returns it (a plain tuple underneath: `seq, mark,
    payload = record` works, and it costs no more memory than one)."""

    seq: int
    mark: int  # tracker events journaled up to and including this record
    payload: bytes  # one client message, msgpack


_record = tuple.__new__  # Record(...) goes through Python code; this is C, ~2x cheaper


@dataclass(frozen=True)
class Position:
    segment: int  # first seq of the segment
    offset: int  # bytes written to it


class LiveJournal(Protocol):
    """What a reader needs of a journal being written in this process."""

    segments: tuple[int, ...]  # first seq of each segment, ascending
    end: Position  # where the writer's last finished record ends
    skipped_bytes: int  # damaged bytes readers skipped in older segments


def segment_path(directory: str, first_seq: int) -> str:
    return os.path.join(directory, f"{first_seq:020d}{SEGMENT_SUFFIX}")


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

    def __init__(self, directory: str, next_seq: int, journal: LiveJournal | None = None
                 ) -> None:
        self.dir = directory
        self.journal = journal
        self.next_seq = next_seq
        segs = self._segments()
        below = [s for s in segs if s <= next_seq]
        self.segment = below[-1] if below else (segs[0] if segs else next_seq)
        self.offset = 0

    def _segments(self) -> tuple[int, ...]:
        return self.journal.segments if self.journal else tuple(list_segments(self.dir))

    def read(self, max_bytes: int = 8 << 20) -> list[Record]:
        """The records from next_seq on, up to about max_bytes; [] when caught up."""
        out: list[Record] = []
        got = 0
        while got < max_bytes:
            later = next((s for s in self._segments() if s > self.segment), None)
            path = segment_path(self.dir, self.segment)
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
                    out.append(_record(Record, (seq, mark, payload)))
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
