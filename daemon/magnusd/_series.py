"""Metric series: the numeric points of one run, step and key, readable without the rest.

`runs/<run>/series/<step>/<key>.pts` holds fixed 24-byte little-endian records — step (int64),
unix time (float64), value (float64) — appended by the run store as it applies the journal
(`collect` + `encode`), so reading one key of a 1M-step run reads 24 MB of that key and
nothing else. Points are the tracked numbers (int and float, not bool) of tracker events; a
key of a rank other than 0 is `rank<r>/<key>`. A step not above the one before (a step logged
again, an earlier step, points a replay after a crash appends again) marks the series unsorted
(`<key>.unsorted`), and readers then sort it, the later value of a step winning.

`downsample` keeps each bucket's minimum and maximum, so a spike in a million points survives
in two thousand.
"""

from __future__ import annotations

import os
import struct
from array import array
from itertools import chain
from typing import Any, NamedTuple

from magnus import _protocol as proto

from ._names import run_dirname, run_id_from_dirname

POINT = struct.Struct("<qdd")
SUFFIX = ".pts"
UNSORTED = ".unsorted"
_NUMBERS = {int, float}
Points = tuple[list[int], list[float], list[Any]]  # steps, times, values: as collected


class Series(NamedTuple):
    """One series as read from its file, in step order (unpacks as steps, times, values)."""

    steps: array[int]
    times: array[float]
    values: array[float]


class Downsampled(NamedTuple):
    """At most the asked number of points; `downsampled` when some were left out."""

    steps: list[int]
    times: list[float]
    values: list[float]
    downsampled: bool


def collect(msg: proto.Batch) -> dict[str, Points]:
    """The batch's numeric points by series key."""
    prefix = f"rank{msg.rank}/" if msg.rank else ""
    if msg.keys:
        values = msg.values
        if set(map(type, values)) <= _NUMBERS:
            return {prefix + msg.keys[0]: (msg.steps, msg.ts, values)}
        keep = [i for i, v in enumerate(values) if type(v) in _NUMBERS]
        return {prefix + msg.keys[0]: ([msg.steps[i] for i in keep], [msg.ts[i] for i in keep],
                                       [values[i] for i in keep])} if keep else {}
    out: dict[str, Points] = {}
    for step, ts, metrics in msg.records:
        for k, v in metrics.items():
            if type(v) in _NUMBERS:
                p = out.get(prefix + k)
                if p is None:
                    p = out[prefix + k] = ([], [], [])
                p[0].append(step)
                p[1].append(ts)
                p[2].append(v)
    return out


def encode(points: Points) -> bytes:
    steps, ts, values = points
    n = len(steps)
    try:
        flat = chain.from_iterable(zip(steps, ts, values, strict=True))
        return struct.pack("<" + "qdd" * n, *flat)
    except (struct.error, OverflowError):  # an int beyond 64 bits (a step is < 2**64)
        return b"".join(POINT.pack(min(s, 2**63 - 1), t, float(v))
                        for s, t, v in zip(steps, ts, values, strict=True))


def path_of(runs_dir: str, run_id: str, step_name: str, key: str) -> str:
    return os.path.join(runs_dir, run_dirname(run_id), "series", run_dirname(step_name),
                        run_dirname(key) + SUFFIX)


def is_sorted(steps: list[int], after: int) -> bool:
    """Strictly increasing, and after the file's last step: else readers must sort."""
    return (not steps or steps[0] > after) and steps == sorted(steps) \
        and len(set(steps)) == len(steps)


def last_step(fd: int) -> int:
    """The step of the file's last whole record (-1 when empty)."""
    size = os.fstat(fd).st_size
    size -= size % POINT.size
    if not size:
        return -1
    return int(POINT.unpack(os.pread(fd, POINT.size, size - POINT.size))[0])


# -- reading -----------------------------------------------------------------------------------


def read(path: str) -> Series:
    """One series (its steps, times and values), in step order."""
    with open(path, "rb") as f:
        data = f.read()
    data = data[: len(data) - len(data) % POINT.size]
    floats = array("d")
    floats.frombytes(data)
    ints = array("q")
    ints.frombytes(data)
    steps, times, values = ints[0::3], floats[1::3], floats[2::3]
    if os.path.exists(path[: -len(SUFFIX)] + UNSORTED):
        last = {s: (t, v) for s, t, v in zip(steps, times, values, strict=True)}
        order = sorted(last)
        steps = array("q", order)
        times = array("d", [last[s][0] for s in order])
        values = array("d", [last[s][1] for s in order])
    return Series(steps, times, values)


def downsample(steps: array[int], times: array[float], values: array[float],
               max_points: int) -> Downsampled:
    """At most `max_points` points, each bucket's min and max kept (in step order)."""
    n = len(values)
    if n <= max_points:
        return Downsampled(steps.tolist(), times.tolist(), values.tolist(), False)
    buckets = max(max_points // 2, 1)
    idx: list[int] = []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        if lo >= hi:
            continue
        chunk = values[lo:hi]
        i, j = lo + chunk.index(min(chunk)), lo + chunk.index(max(chunk))
        idx.extend((i, j) if i < j else (j, i) if j < i else (i,))
    return Downsampled([steps[i] for i in idx], [times[i] for i in idx],
                       [values[i] for i in idx], True)


def listing(runs_dir: str, run_id: str) -> list[dict[str, Any]]:
    """Every series of a run: {step_name, key, points, last_step, last_value}."""
    base = os.path.join(runs_dir, run_dirname(run_id), "series")
    out = []
    try:
        steps = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    for s in steps:
        for name in sorted(os.listdir(os.path.join(base, s))):
            if not name.endswith(SUFFIX):
                continue
            path = os.path.join(base, s, name)
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                size -= size % POINT.size
                last = POINT.unpack(os.pread(f.fileno(), POINT.size, size - POINT.size)) \
                    if size else (None, None, None)
            out.append({"step_name": run_id_from_dirname(s),
                        "key": run_id_from_dirname(name[: -len(SUFFIX)]),
                        "points": size // POINT.size, "last_step": last[0],
                        "last_value": last[2]})
    return out
