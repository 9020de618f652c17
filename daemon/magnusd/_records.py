"""CRC-framed records: the on-disk format of journal segments and run-log files.

A record is a 24-byte header — payload length (u32), CRC-32 of seq + mark + payload (u32),
journal sequence number (u64), mark (u64), all big-endian — followed by the payload (one msgpack
message). In the journal the mark is the cumulative count of tracker events up to and including
the record, so "events between two cursors" is a subtraction. A reader
stops at the first record that is incomplete or fails its CRC: that is a torn tail, and the
writer truncates it on recovery.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator

HEADER = struct.Struct(">IIQQ")
HEADER_SIZE = HEADER.size
_SEQ = struct.Struct(">QQ")
MAX_PAYLOAD = 64 << 20  # anything claiming more is corruption


def encode(seq: int, payload: bytes, mark: int = 0) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq, mark)))
    return HEADER.pack(len(payload), crc, seq, mark) + payload


def encode_many(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join([encode(seq, p) for seq, p in items])


def scan(data: bytes | memoryview, start: int = 0) -> Iterator[tuple[int, int, int, bytes]]:
    """Yield (end offset, seq, mark, payload) per valid record from `start`; stop at the first bad.
    """
    pos = start
    end = len(data)
    unpack = HEADER.unpack_from
    crc32 = zlib.crc32
    pack_seq = _SEQ.pack
    while end - pos >= HEADER_SIZE:
        n, crc, seq, mark = unpack(data, pos)
        stop = pos + HEADER_SIZE + n
        if n > MAX_PAYLOAD or stop > end:
            return
        payload = bytes(data[pos + HEADER_SIZE : stop])
        if crc32(payload, crc32(pack_seq(seq, mark))) != crc:
            return
        yield stop, seq, mark, payload
        pos = stop


def resync(data: bytes | memoryview, start: int, after_seq: int = 0) -> int:
    """The offset of the first valid record after damage at `start` (len(data) when none).

    A candidate must have a plausible length and a seq above `after_seq`, and pass its CRC:
    a false match in garbage is a 1 in 2**32 event.
    """
    end = len(data)
    unpack = HEADER.unpack_from
    view = memoryview(data)
    pos = start + 1
    while end - pos >= HEADER_SIZE:
        n, crc, seq, mark = unpack(data, pos)
        stop = pos + HEADER_SIZE + n
        if n <= MAX_PAYLOAD and stop <= end and after_seq < seq < after_seq + (1 << 40) and \
                zlib.crc32(view[pos + HEADER_SIZE : stop], zlib.crc32(_SEQ.pack(seq, mark))) == crc:
            return pos
        pos += 1
    return end


def salvage(data: bytes | memoryview, start: int, after_seq: int
            ) -> list[tuple[int, int, bytes]]:
    """Every intact record after damage at `start`, in order: (seq, mark, payload)."""
    out: list[tuple[int, int, bytes]] = []
    pos = start
    while pos < len(data):
        pos = resync(data, pos, after_seq)
        used = pos
        for used, seq, mark, payload in scan(data, pos):  # noqa: B007 - keep the last
            if seq > after_seq:
                out.append((seq, mark, payload))
                after_seq = seq
        pos = max(used, pos)
    return out


def read_file(path: str, start: int = 0, end: int | None = None) -> bytes:
    """Bytes of `path` from `start` to `end` (EOF when None); empty when the file is missing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return b""
    try:
        size = os.fstat(fd).st_size if end is None else end
        chunks = []
        pos = start
        while pos < size:
            chunk = os.pread(fd, min(size - pos, 16 << 20), pos)
            if not chunk:
                break
            chunks.append(chunk)
            pos += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


TAIL_WINDOW = 4 << 20  # more than two records of the largest size


def valid_length(path: str) -> int:
    """Length of the valid prefix of a record file (the offset to cut a torn tail at).

    Reads the file's last TAIL_WINDOW bytes only: the first intact record found there (CRC
    checked) is a record boundary, and the scan goes on from it, so a run log of any size costs
    the same. A file with no intact record in that window is scanned whole.
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return 0
    start = max(0, size - TAIL_WINDOW)
    data = read_file(path, start)
    pos = 0 if start == 0 else resync(data, -1)
    if pos >= len(data) and start:
        data, start, pos = read_file(path), 0, 0
    good = pos
    for good, _, _, _ in scan(data, pos):  # noqa: B007 - keep the last
        pass
    return start + good


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
