"""What the viewer and the terminal commands show: run summaries, a run, series, comparisons.

Read from the data directory, like `magnusd show`: the small index files for summaries, the
series files for curves, the run log only for the metrics tracked at step 0. `RunTable` keeps
each run's summary and reads a run again only when its files changed, so listing 10,000 runs
costs a `stat` per run.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from magnus._fold import RunFold
from magnus._runlog import RunLog

from . import _series
from ._names import run_dirname, run_id_from_dirname
from ._runlog import _index_decoder, _stored, load_run
from ._runstore import StepSeen

DEFAULT_POINTS = 2000
MAX_POINTS = 100_000


def _ts(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def summarize(runs_dir: str, name: str) -> dict[str, Any]:
    """One run's line in the runs table (design §12)."""
    run_id = run_id_from_dirname(name)
    fold = RunFold(run_id)
    first_seen = None
    for _, payload in _stored(os.path.join(runs_dir, name, "index")):
        msg = _index_decoder.decode(payload)
        fold.add(msg)
        if type(msg) is StepSeen:
            first_seen = msg.ts if first_seen is None else min(first_seen, msg.ts)
            fold.updated = max(fold.updated, msg.ts)
    with contextlib.suppress(FileNotFoundError):
        fold.updated = max(fold.updated, os.stat(os.path.join(runs_dir, name, "log")).st_mtime)
    r = fold.result()
    attempts = [a for st in r.steps.values() for a in st.attempts]
    starts = [t for a in attempts if (t := _ts(a.start_time)) is not None]
    series = _series.listing(runs_dir, run_id)
    return {"run_id": run_id, "tag": r.tag, "status": r.status,
            "steps": sorted(r.steps),
            "started": min(starts) if starts else first_seen,
            "updated": fold.updated or None,
            "hosts": sorted({a.host for a in attempts if a.host}),
            "last_step": max((s["last_step"] for s in series if s["last_step"] is not None),
                             default=None)}


class RunTable:
    """Summaries of every run, re-read only for runs that changed: those the run store says
    it `touched` since the last call (in the daemon), else those whose files changed."""

    def __init__(self, data_dir: str, touched: Callable[[], set[str]] | None = None) -> None:
        self.runs_dir = os.path.join(data_dir, "runs")
        self.touched = touched
        self._cache: dict[str, tuple[tuple[float, ...], dict[str, Any]]] = {}

    def runs(self, tag: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        changed = {run_dirname(r) for r in self.touched()} if self.touched else None
        try:
            names = os.listdir(self.runs_dir)
        except FileNotFoundError:
            names = []
        out = []
        fresh: dict[str, tuple[tuple[float, ...], dict[str, Any]]] = {}
        for name in names:
            hit = self._cache.get(name)
            if changed is not None:
                sig: tuple[float, ...] = ()
                stale = hit is None or name in changed
            else:
                sig = tuple(_signature(os.path.join(self.runs_dir, name, f))
                            for f in ("index", "log"))
                stale = hit is None or hit[0] != sig
            summary = summarize(self.runs_dir, name) if stale or hit is None else hit[1]
            fresh[name] = (sig, summary)
            if (tag is None or summary["tag"] == tag) and \
                    (status is None or summary["status"] == status):
                out.append(summary)
        self._cache = fresh
        out.sort(key=lambda r: r["updated"] or 0, reverse=True)
        return out


def _signature(path: str) -> float:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return -1.0
    return st.st_mtime_ns + st.st_size * 1e-3


class RunView(RunLog):
    """The viewer's run (design §12): the RunLog with step-0 metrics only, then its series
    (`step_name`, `key`, `points`, `last_step`, `last_value` each)."""

    series: list[dict[str, Any]]


def run_view(data_dir: str, run_id: str) -> RunView | None:
    run = load_run(data_dir, run_id, step0_only=True)
    if run is None:
        return None
    return RunView(**msgspec.structs.asdict(run),
                   series=_series.listing(os.path.join(data_dir, "runs"), run_id))


def series_view(data_dir: str, run_id: str, step_name: str, key: str,
                max_points: int = DEFAULT_POINTS) -> dict[str, Any] | None:
    path = _series.path_of(os.path.join(data_dir, "runs"), run_id, step_name, key)
    try:
        series = _series.read(path)
    except FileNotFoundError:
        return None
    d = _series.downsample(*series, max(2, min(max_points, MAX_POINTS)))
    return {"run_id": run_id, "step_name": step_name, "key": key, "points": len(series.steps),
            "steps": d.steps, "times": d.times,
            "values": [x if math.isfinite(x) else None for x in d.values],
            "downsampled": d.downsampled}


def compare(data_dir: str, run_ids: list[str]) -> list[dict[str, Any]]:
    """Each metric series' last, min and max per run: [{step_name, key, runs: {id: {...}}}]."""
    runs_dir = os.path.join(data_dir, "runs")
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for run_id in run_ids:
        if not os.path.isdir(os.path.join(runs_dir, run_dirname(run_id))):
            raise LookupError(run_id)
        for s in _series.listing(runs_dir, run_id):
            values = _series.read(_series.path_of(runs_dir, run_id, s["step_name"],
                                                  s["key"])).values
            finite = [x for x in values if math.isfinite(x)] or [math.nan]
            row = table.setdefault((s["step_name"], s["key"]),
                                   {"step_name": s["step_name"], "key": s["key"], "runs": {}})
            row["runs"][run_id] = {"last": values[-1] if values else None,
                                   "min": min(finite), "max": max(finite),
                                   "points": len(values)}
    return [table[k] for k in sorted(table)]
