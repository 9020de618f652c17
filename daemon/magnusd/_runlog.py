"""Assembling RunLogs (design §7) from the run store and the journal's unapplied tail.

Used by `magnusd show` and `magnusd runs`, with or without a daemon running: the run files hold
everything up to the applier's progress, and the journal records after the checkpoint are folded
on top, so an event is visible as soon as it is journaled, and after a crash before the applier
caught up.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import msgspec

from magnus import _protocol as proto
from magnus._fold import RunFold
from magnus._fold import iso as _iso
from magnus._runlog import RunLog

from . import _records as records
from ._journal import Reader
from ._runstore import (
    MarkHead,
    StepSeen,
    head_decoder,
    read_checkpoint,
    run_dirname,
    run_id_from_dirname,
)

_index_decoder = msgspec.msgpack.Decoder(StepSeen | proto.StepMark)
_message_decoder = proto.journaled_decoder


_steps_decoder = proto.steps_decoder


def _journal_tail(data_dir: str, run_id: str | None) -> list[tuple[int, bytes]]:
    """Journal records after the checkpoint, of one run (or of all when run_id is None)."""
    reader = Reader(os.path.join(data_dir, "journal"), read_checkpoint(data_dir) + 1)
    out = []
    while batch := reader.read():
        for seq, _, payload in batch:
            if run_id is None or head_decoder.decode(payload).run_id == run_id:
                out.append((seq, payload))
    return out


def _fold_file_then_tail(fold: RunFold, stored: list[tuple[int, bytes]],
                         tail: list[tuple[int, bytes]], decoder: Any) -> None:
    last = 0
    for seq, payload in stored:
        if not (fold.step0_only and _no_step_0(payload)):
            fold.add(decoder.decode(payload))
        last = max(last, seq)
    for seq, payload in tail:
        if seq > last and not (fold.step0_only and _no_step_0(payload)):
            fold.add(_message_decoder.decode(payload))


def _no_step_0(payload: bytes) -> bool:
    """A columnar batch with no point at step 0: nothing for a step-0-only fold."""
    h = _steps_decoder.decode(payload)
    return type(h) is proto.BatchSteps and bool(h.keys) and 0 not in h.steps


def _stored(path: str) -> list[tuple[int, bytes]]:
    return [(seq, p) for _, seq, _, p in records.scan(records.read_file(path))]


def load_run(data_dir: str, run_id: str, step0_only: bool = False) -> RunLog | None:
    """The RunLog of `run_id`, or None when nothing of it was ever journaled (with
    `step0_only`, only the metrics tracked at step 0: the viewer reads series elsewhere)."""
    rdir = os.path.join(data_dir, "runs", run_dirname(run_id))
    index = _stored(os.path.join(rdir, "index"))
    stored = _stored(os.path.join(rdir, "log"))
    tail = _journal_tail(data_dir, run_id)
    if not index and not stored and not tail:
        return None
    fold = RunFold(run_id, step0_only)
    for _, payload in index:
        msg = _index_decoder.decode(payload)
        if type(msg) is StepSeen:
            fold.add(msg)
    _fold_file_then_tail(fold, stored, tail, _message_decoder)
    return fold.result()


def list_runs(data_dir: str, tag: str | None = None) -> list[dict[str, Any]]:
    """Summaries of every run (from the small index files and the journal tail)."""
    folds: dict[str, RunFold] = {}
    runs_dir = os.path.join(data_dir, "runs")
    try:
        names = sorted(os.listdir(runs_dir))
    except FileNotFoundError:
        names = []
    last: dict[str, int] = {}  # per run, the last seq its index holds
    for name in names:
        run_id = run_id_from_dirname(name)
        fold = folds[run_id] = RunFold(run_id)
        for seq, payload in _stored(os.path.join(runs_dir, name, "index")):
            msg = _index_decoder.decode(payload)
            fold.add(msg)
            last[run_id] = max(last.get(run_id, 0), seq)
            if type(msg) is StepSeen:
                fold.updated = max(fold.updated, msg.ts)
        with contextlib.suppress(FileNotFoundError):
            fold.updated = max(fold.updated, os.stat(os.path.join(runs_dir, name, "log")).st_mtime)
    for seq, payload in _journal_tail(data_dir, None):
        h = head_decoder.decode(payload)
        if seq <= last.get(h.run_id, 0):
            continue
        fold = folds.get(h.run_id) or folds.setdefault(h.run_id, RunFold(h.run_id))
        if type(h) is MarkHead:
            fold.add(_message_decoder.decode(payload))
        else:
            if h.tag:
                fold.tag = h.tag
            fold.step(h.step_name)
    out = []
    for fold in folds.values():
        r = fold.result()
        if tag is not None and r.tag != tag:
            continue
        out.append({"run_id": r.run_id, "tag": r.tag, "status": r.status,
                    "steps": sorted(r.steps),
                    "updated": _iso(fold.updated) if fold.updated else None})
    out.sort(key=lambda r: r["updated"] or "")
    return out
