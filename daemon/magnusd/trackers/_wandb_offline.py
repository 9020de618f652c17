"""Reading an offline W&B run file (`.wandb`) back, for tests, benchmarks and inspection.

wandb ≥ 0.2x ships no Python reader for its own run files; this one follows the format: a
LevelDB-style log of serialized `wandb_internal_pb2.Record`s. It does not import `wandb` (the
caller parses the records with W&B's protobuf classes) and never writes.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

BLOCK = 32768
_HEADER = struct.Struct("<4sHB")
_CHUNK = struct.Struct("<IHB")


def offline_records(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """The serialized records of an offline `.wandb` file.

    The file is a 7-byte header (`:W&B`, magic 0xBEE1, version), then 32 KiB blocks of chunks
    (crc u32, length u16, type u8: full/first/middle/last); each assembled record is a
    `wandb_internal_pb2.Record`.
    """
    with open(path, "rb") as f:
        data = f.read()
    ident, magic, _version = _HEADER.unpack(data[:7])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run file")
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - (pos % BLOCK)
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, typ = _CHUNK.unpack(data[pos:pos + 7])
        pos += 7
        chunk = data[pos:pos + length]
        pos += length
        if typ == 1:  # full
            yield chunk
        elif typ == 2:  # first
            buf = chunk
        elif typ == 3:  # middle
            buf += chunk
        elif typ == 4:  # last
            yield buf + chunk
            buf = b""
