"""Spool files: what SDK processes could not deliver, ingested like a client's stream.

A spool file is the frames a client would have sent (no handshake). Each is validated and
journaled through the same path as a connection (`Ingress.take_without_hello`, with its
duplicate check), fsynced, and only then deleted. A file that does not parse is moved to
`bad/` with the reason logged; nothing in it is half-ingested silently.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass

import anyio

from magnus import _protocol as proto

from ._ingress import Ingress
from ._journal import Unwritable

log = logging.getLogger("magnusd.spool")
SUFFIX = ".spool"
SLICE_BYTES = 1 << 20


def pending_files(directory: str) -> list[str]:
    """The spool files to ingest, oldest first; none from a directory (or a symlink's target)
    that another user owns: files there are theirs to plant."""
    try:
        owner = os.stat(directory).st_uid
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    if owner != os.getuid():
        log.error("spool directory %s is owned by uid %d, not this daemon's: not ingesting from "
                  "it", directory, owner)
        return []
    paths = [os.path.join(directory, n) for n in names if n.endswith(SUFFIX)]
    return sorted(paths, key=lambda p: (os.stat(p).st_mtime if os.path.exists(p) else 0, p))


@dataclass(frozen=True)
class Contents:
    """A spool file's bytes, or why it is refused (then `data` is empty)."""

    data: bytes
    refused: str | None = None


@dataclass(frozen=True)
class Ingested:
    """What one pass over the spool directory came to."""

    events: int  # metric points journaled
    left: bool  # files stay for later: the journal cannot be written


def _read_trusted(path: str, allowed_uids: set[int]) -> Contents:
    """The file's bytes, unless it is a symlink, not a regular file, owned by a uid that may
    not use this daemon, or writable by anyone (then: why it is refused)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Contents(b"", "not a regular file")
        if st.st_uid not in allowed_uids and -1 not in allowed_uids:
            return Contents(b"", f"owned by uid {st.st_uid}, which may not use this daemon")
        if st.st_mode & 0o002:
            return Contents(b"", "writable by any user")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return Contents(b"".join(chunks))
    finally:
        os.close(fd)


async def ingest_file(path: str, ingress: Ingress) -> int:
    """Journal one spool file and delete it once durable; return the events taken."""
    try:
        contents = await anyio.to_thread.run_sync(
            _read_trusted, path, ingress.allowed_uids | {os.getuid()})
    except FileNotFoundError:
        return 0
    except OSError as e:  # ELOOP: a symlink planted in the spool directory
        contents = Contents(b"", f"cannot be opened safely ({e.strerror})")
    if contents.refused:
        _move_bad(path, f"refused: {contents.refused}", 0)
        return 0
    data = contents.data
    payloads, used, error = proto.split_frames(data, ingress.max_frame)
    if not error and used != len(data):
        error = f"truncated frame at byte {used}"
    # In slices of about 1 MiB, so a large spool file never becomes a large heap.
    nrec, decode_error, i = 0, None, 0
    failures = ingress.journal.fsync_failures
    while i < len(payloads) and decode_error is None:
        j, size = i, 0
        while j < len(payloads) and (j == i or size < SLICE_BYTES):
            size += len(payloads[j])
            j += 1
        taken = ingress.take_without_hello(payloads[i:j])
        decode_error = taken.error
        if decode_error and ingress.journal.error:
            raise Unwritable(ingress.journal.error)  # keep the file: taken again later
        nrec += taken.events
        i = j
    del payloads
    error = error or decode_error
    await ingress.journal.wait_durable(ingress.journal.last_seq, urgent=True)
    if ingress.journal.fsync_failures != failures:
        raise Unwritable("an fsync failed while the spool file was journaled")
    if error:
        _move_bad(path, error, nrec)
    else:
        os.unlink(path)
        log.info("ingested spool file %s: %d events", os.path.basename(path), nrec)
    return nrec


def _move_bad(path: str, error: str, nrec: int) -> None:
    bad = os.path.join(os.path.dirname(path), "bad")
    os.makedirs(bad, mode=0o700, exist_ok=True)
    os.replace(path, os.path.join(bad, os.path.basename(path)))
    log.error("spool file %s: %s; kept what came before it (%d events), moved the file to %s",
              path, error, nrec, bad)


async def ingest_all(directory: str, ingress: Ingress) -> Ingested:
    """Ingest every spool file (those left for later stay where they are)."""
    total = 0
    for path in pending_files(directory):
        try:
            total += await ingest_file(path, ingress)
        except Unwritable as e:
            log.error("spool files stay until the journal can be written again: %s", e)
            return Ingested(total, left=True)
    return Ingested(total, left=False)


RETRY_S = 2.0


async def watch(directory: str, ingress: Ingress, stop: anyio.Event) -> None:
    """Ingest spool files as they appear (SDK processes rename them into place).

    `stop` must be set before this task is cancelled: watchfiles' thread only notices it.
    """
    import watchfiles

    os.makedirs(directory, mode=0o700, exist_ok=True)
    left = [False]
    lock = anyio.Lock()

    async def once() -> None:
        async with lock:
            left[0] = (await ingest_all(directory, ingress)).left

    async def retry() -> None:  # files left while the journal could not be written
        while True:
            await anyio.sleep(RETRY_S)
            if left[0]:
                await once()

    async with anyio.create_task_group() as tg:
        tg.start_soon(retry)
        await once()  # files that appeared before the watch began
        async for _ in watchfiles.awatch(directory,
                                         watch_filter=lambda _c, p: p.endswith(SUFFIX),
                                         debounce=200, step=50, stop_event=stop,
                                         rust_timeout=1000):
            await once()
        tg.cancel_scope.cancel()
