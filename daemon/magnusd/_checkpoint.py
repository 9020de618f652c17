"""The run store's checkpoint: up to which journal seq the run files are durable.

`runlog.checkpoint` in the data directory is a small JSON object — `applied_seq` and the
attempts open at that seq — written only after every run file it covers is fsynced (one file at
a time, or the whole file system with `syncfs` when many changed), atomically (temporary file,
fsync, rename, fsync of the directory). A missing or unreadable checkpoint counts as seq 0:
the retained journal is applied again, which is harmless (later values win).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("magnusd.runstore")

CHECKPOINT = "runlog.checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    applied_seq: int  # every run file is fsynced up to this journal seq
    open_attempts: Any = None  # the attempts open at that seq, as `OpenAttempts.dump` made them


def load_checkpoint(data_dir: str, move_bad: bool = False) -> Checkpoint:
    """The checkpoint; an unreadable one counts as none (the retained journal is applied
    again: harmless, later values win) and, with `move_bad`, is moved aside as `.bad`."""
    path = os.path.join(data_dir, CHECKPOINT)
    try:
        with open(path, "rb") as f:
            d = json.loads(f.read())
        return Checkpoint(int(d["applied_seq"]), d.get("open_attempts"))
    except FileNotFoundError:
        return Checkpoint(0)
    except (ValueError, KeyError, TypeError) as e:
        if move_bad:
            log.error("runstore: %s is unreadable (%s); moved it to %s.bad and applying the "
                      "retained journal again", path, e, path)
            os.replace(path, path + ".bad")
        return Checkpoint(0)


def read_checkpoint(data_dir: str) -> int:
    return load_checkpoint(data_dir).applied_seq


def write_checkpoint(data_dir: str, seq: int, open_attempts: list[Any] | None = None) -> None:
    path = os.path.join(data_dir, CHECKPOINT)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        json.dump({"applied_seq": seq, "open_attempts": open_attempts or []}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(data_dir)


def syncfs(path: str) -> None:
    """Flush the file system holding `path` (syncfs(2)); os.sync where it is missing."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc is None or _libc.syncfs(fd) != 0:
            if _libc is not None:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)
            os.sync()
    finally:
        os.close(fd)


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc()


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
