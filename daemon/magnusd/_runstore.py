"""The run-log store: journal records copied, append-only, into one directory per run.

The daemon never folds metrics: the applier decodes only each record's head (run, tag, step),
appends the record unchanged to `runs/<run>/log`, and notes new steps and step marks in
`runs/<run>/index` (small: what `magnusd runs` reads). Writing costs what the new events cost,
whatever the size of the run, and the daemon's memory does not grow with history. The RunLog is
assembled when it is read (`_runlog.py`).

`runlog.checkpoint` (`_checkpoint.py`) holds the journal seq up to which every run file is
fsynced, and the attempts open at that seq (`_attempts.py`); a restart replays the journal from
there.
Replaying a record twice is harmless: the fold is "later value wins" over a suffix replayed in
order, and attempt starts and ends are keyed by attempt id. A torn tail of a run file is
truncated the first time the applier opens it after a start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict

import anyio
import msgspec

from magnus import _protocol as proto

from . import _records as records
from . import _series
from ._attempts import OpenAttempts
from ._checkpoint import load_checkpoint, syncfs, write_checkpoint
from ._checkpoint import read_checkpoint as read_checkpoint
from ._journal import Journal, Reader
from ._names import run_dirname as run_dirname
from ._names import run_id_from_dirname as run_id_from_dirname
from ._reader import Record
from ._status import RunStoreStatus

log = logging.getLogger("magnusd.runstore")

MAX_OPEN_FILES = 512
MAX_SEEN_STEPS = 100_000
CHECKPOINT_INTERVAL = 1.0
RETRY_S = 1.0
APPLY_BYTES = 1 << 20  # journal bytes applied at a time (a read takes 2 MiB chunks at least)
SYNCFS_OVER = 32  # dirty files at a checkpoint beyond which one syncfs beats fsync each


class StepSeen(msgspec.Struct, tag="seen", array_like=True):
    """Index record: the run has this step (with the run's tag and tracker definitions)."""

    run_id: str
    tag: str
    step_name: str
    ts: float
    run_config: dict[str, object] = {}


head_decoder = proto.head_decoder
MarkHead = proto.MarkHead
_batch_decoder = msgspec.msgpack.Decoder(proto.Batch)
_mark_decoder = msgspec.msgpack.Decoder(proto.StepMark)
_encoder = msgspec.msgpack.Encoder()


class RunStore:
    """Applies journal records to run files; runs in a worker thread, one batch at a time."""

    def __init__(self, data_dir: str, run_config: dict[str, object] | None = None) -> None:
        self.data_dir = data_dir
        self.runs_dir = os.path.join(data_dir, "runs")
        os.makedirs(self.runs_dir, mode=0o700, exist_ok=True)
        checkpoint = load_checkpoint(data_dir, move_bad=True)
        self.applied_seq = checkpoint.applied_seq  # last seq written to run files
        self.attempts = OpenAttempts.load(checkpoint.open_attempts)
        self.durable_seq = self.applied_seq  # last seq covered by the checkpoint
        self.run_config = run_config or {"experiment_tracker": []}
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._dirty: set[str] = set()
        self._checked: set[str] = set()  # files whose torn tail was checked since start
        self._seen: dict[tuple[str, str], None] = {}
        self._last_step: dict[str, int] = {}  # per series file: the highest step written
        self._touched: set[str] = set()  # runs written since the viewer last asked
        self._touched_lock = threading.Lock()
        self._sync_all = False  # the next checkpoint syncs the whole file system (syncfs)
        self._last_checkpoint = time.monotonic()
        self.error: str | None = None  # why applying fails, while it does

    def take_touched(self) -> set[str]:
        """The runs written since the last call (for the viewer's run table)."""
        with self._touched_lock:
            touched, self._touched = self._touched, set()
        return touched

    def stats(self) -> RunStoreStatus:
        return RunStoreStatus(self.applied_seq, self.durable_seq, self.error)

    def set_run_config(self, run_config: dict[str, object]) -> None:
        """New tracker definitions: recorded again for every run that gets events after this."""
        self.run_config = run_config
        self._seen.clear()

    # -- applying ---------------------------------------------------------------------------

    def apply(self, batch: list[Record]) -> None:
        by_file: dict[str, list[tuple[int, bytes]]] = {}
        series: dict[str, list[_series.Points]] = {}
        touched: set[str] = set()
        for seq, _, payload in batch:
            if seq <= self.applied_seq:
                continue
            try:
                h = head_decoder.decode(payload)
            except msgspec.DecodeError:
                log.error("runstore: journal record %d is not a run message; skipped", seq)
                continue
            rdir = os.path.join(self.runs_dir, run_dirname(h.run_id))
            touched.add(h.run_id)
            by_file.setdefault(os.path.join(rdir, "log"), []).append((seq, payload))
            key = (h.run_id, h.step_name)
            index = None
            if key not in self._seen:
                if len(self._seen) >= MAX_SEEN_STEPS:
                    self._seen.clear()
                self._seen[key] = None
                index = _encoder.encode(StepSeen(h.run_id, h.tag, h.step_name, time.time(),
                                                 self.run_config))
                by_file.setdefault(os.path.join(rdir, "index"), []).append((seq, index))
            if type(h) is MarkHead:
                by_file.setdefault(os.path.join(rdir, "index"), []).append((seq, payload))
                self.attempts.note(_mark_decoder.decode(payload))
            else:
                msg = _batch_decoder.decode(payload)
                if proto.for_trackers(msg):
                    for name, points in _series.collect(msg).items():
                        path = _series.path_of(self.runs_dir, h.run_id, h.step_name, name)
                        series.setdefault(path, []).append(points)
        with self._touched_lock:  # before and after the writes: a summary read in between
            self._touched |= touched  # is read again at the next call
        written: list[tuple[str, int, int]] = []  # (path, fd, size before): undone on failure
        try:
            for path, items in by_file.items():
                fd = self._fd(path)
                written.append((path, fd, os.fstat(fd).st_size))
                records.write_all(fd, records.encode_many(items))
                self._dirty.add(path)
            for path, parts in series.items():
                fd = self._fd(path, fixed=_series.POINT.size)
                written.append((path, fd, os.fstat(fd).st_size))
                self._append_points(path, fd, parts)
        except OSError:
            # The batch will be applied again: leave no part of it behind, anywhere.
            self._seen.clear()
            self._last_step.clear()
            for path, fd, size in written:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    self._checked.discard(path)  # cut at the next open (a torn tail)
                    self._close(path)
            raise
        with self._touched_lock:
            self._touched |= touched
        if batch:
            self.applied_seq = max(self.applied_seq, batch[-1][0])

    def _append_points(self, path: str, fd: int, parts: list[_series.Points]) -> None:
        last = self._last_step.pop(path, None)
        if last is None:
            last = _series.last_step(fd)
        data = b"".join(map(_series.encode, parts))
        steps = [s for p in parts for s in p[0]]
        if not _series.is_sorted(steps, last):
            os.close(os.open(path[: -len(_series.SUFFIX)] + _series.UNSORTED,
                             os.O_WRONLY | os.O_CREAT, 0o600))
        records.write_all(fd, data)
        self._dirty.add(path)
        self._last_step[path] = max(last, steps[-1]) if steps else last
        while len(self._last_step) > MAX_OPEN_FILES:
            del self._last_step[next(iter(self._last_step))]

    def _fd(self, path: str, fixed: int = 0) -> int:
        """An open append fd; a torn tail is cut at the first open since start (for files of
        `fixed`-size records: to a whole number of them)."""
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        if not os.path.exists(path):
            self._sync_all = True  # a new file: its directory entry must be durable too
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)  # series: read the tail
        if path not in self._checked:
            size = os.fstat(fd).st_size
            good = size - size % fixed if fixed else records.valid_length(path)
            if good < os.fstat(fd).st_size:
                log.warning("runstore: truncated a torn tail of %s", path)
                os.ftruncate(fd, good)
            self._checked.add(path)
        self._fds[path] = fd
        while len(self._fds) > MAX_OPEN_FILES:
            old, ofd = self._fds.popitem(last=False)
            if old in self._dirty:  # closed unsynced: the checkpoint syncs the file system
                self._dirty.discard(old)
                self._sync_all = True
            os.close(ofd)
        return fd

    def _close(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        self._dirty.discard(path)
        if fd is not None:
            os.close(fd)

    def checkpoint(self, force: bool = False) -> None:
        """fsync the run files written since the last checkpoint, then record the seq."""
        if self.applied_seq == self.durable_seq:
            return
        if not force and time.monotonic() - self._last_checkpoint < CHECKPOINT_INTERVAL:
            return
        if self._sync_all or len(self._dirty) > SYNCFS_OVER:
            syncfs(self.runs_dir)  # one call for new files, new directories and many files
        else:
            for path in self._dirty:
                fd = self._fds.get(path)
                if fd is not None:
                    os.fsync(fd)
        self._dirty.clear()
        self._sync_all = False
        write_checkpoint(self.data_dir, self.applied_seq, self.attempts.dump())
        self.durable_seq = self.applied_seq
        self._last_checkpoint = time.monotonic()

    def close(self) -> None:
        self.checkpoint(force=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # -- the consumer task ------------------------------------------------------------------

    async def follow(self, journal: Journal) -> None:
        """Apply the journal from the checkpoint on, for as long as the daemon runs.

        A write that fails (disk full, I/O error) is retried every RETRY_S, from the last
        record applied; `error` says why meanwhile. The journal keeps the records.
        """
        reader = Reader(journal.dir, self.applied_seq + 1, journal)
        while True:
            try:
                batch = await anyio.to_thread.run_sync(reader.read, APPLY_BYTES)
                if batch:
                    await anyio.to_thread.run_sync(self._apply_and_checkpoint, batch)
                else:
                    await anyio.to_thread.run_sync(self.checkpoint, True)
            except OSError as e:
                if self.error is None:
                    log.error("runstore: cannot write the run logs (%s); retrying every %.0f s",
                              e.strerror, RETRY_S)
                self.error = f"cannot write the run logs: {e.strerror}"
                await anyio.sleep(RETRY_S)
                reader = Reader(journal.dir, self.applied_seq + 1, journal)
                continue
            if self.error is not None:
                log.warning("runstore: writing again")
                self.error = None
            if not batch:
                with anyio.move_on_after(CHECKPOINT_INTERVAL):
                    await journal.wait_written(reader.next_seq - 1)

    def _apply_and_checkpoint(self, batch: list[Record]) -> None:
        self.apply(batch)
        self.checkpoint()

    def catch_up(self, journal: Journal) -> None:
        """Apply everything journaled (blocking; at shutdown)."""
        reader = Reader(journal.dir, self.applied_seq + 1, journal)
        while batch := reader.read():
            self.apply(batch)
        self.checkpoint(force=True)
