"""Journal recovery at start: the last segment validated, damage cut, intact records kept.

Only the last segment can have a torn tail (older ones were complete and fsynced before the
next began). `recover` scans it; damage there (a torn tail, a flipped bit, a zeroed length) is
cut, but never blindly: a copy of the segment is kept in `journal/damaged/` as evidence, every
intact record found after the damage (`_records.salvage`) is written back, and the file is
fsynced before anything new is appended after them. What it returns says where appending
continues: the last seq and event mark, and the open descriptor.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass

from . import _records as records
from ._reader import Position, segment_path

log = logging.getLogger("magnusd.journal")


@dataclass(frozen=True)
class Recovered:
    fd: int  # the last segment, open for appending right after its last intact record
    size: int  # its length
    last_seq: int  # the last record's seq (the segment's first seq - 1 when it has none)
    events: int  # the journal's cumulative event mark at that record
    end: Position
    truncated_bytes: int = 0  # damage cut from the tail
    salvaged_records: int = 0  # intact records found after the damage and written back
    damaged_copy: str | None = None  # the evidence kept in `damaged/`


def recover(directory: str, segments: tuple[int, ...]) -> Recovered:
    """Validate the last of `segments` (first seqs, ascending, at least one) and open it."""
    first = segments[-1]
    path = segment_path(directory, first)
    data = records.read_file(path)
    good, last, events = 0, first - 1, 0
    for good, last, events, _ in records.scan(data):  # noqa: B007 - keep the last
        pass
    if good == 0 and len(segments) > 1:
        events = _events_at_end_of(segment_path(directory, segments[-2]))
    salvaged: list[tuple[int, int, bytes]] = []
    truncated, copy = 0, None
    if good < len(data):
        salvaged = records.salvage(data, good, last)
        truncated = len(data) - good
        copy = _keep_damaged(directory, path)
        log.warning("journal: %s was damaged at byte %d of %d; kept a copy in %s, wrote "
                    "back %d intact record(s) found after the damage", path, good,
                    len(data), copy, len(salvaged))
    del data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.ftruncate(fd, good)
    if salvaged:
        back = b"".join(records.encode(seq, p, mark) for seq, mark, p in salvaged)
        records.write_all(fd, back)
        good += len(back)
        last, events = salvaged[-1][0], max(events, salvaged[-1][1])
    os.fsync(fd)
    return Recovered(fd, good, last, events, Position(first, good), truncated, len(salvaged),
                     copy)


def _keep_damaged(directory: str, path: str) -> str:
    damaged = os.path.join(directory, "damaged")
    os.makedirs(damaged, mode=0o700, exist_ok=True)
    copy = os.path.join(damaged, f"{os.path.basename(path)}.{time.time_ns()}")
    shutil.copyfile(path, copy)
    return copy


def _events_at_end_of(path: str) -> int:
    events = 0
    for _, _, events, _ in records.scan(records.read_file(path)):  # noqa: B007 - keep the last
        pass
    return events
