"""The `file` tracker as benchmarks/swap.py drives it: its config written the way editors save
(and the daemon's reload of it awaited), its output polled for the first line and read back
(each (run_id, step) exactly once), and a `backfill: true` replay of the retained journal.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

import _common as C


class FileCheck(msgspec.Struct, kw_only=True):
    """(run_id, step) lines in `file` tracker output against what was sent."""

    lines: int
    missing: int
    duplicates: int
    unexpected: int
    files: int = 1
    keys: list[str] = []



def config_text(trackers: list[dict[str, Any]]) -> str:
    lines = ["experiment_tracker:"]
    for t in trackers:
        lines.append("  - type: file")
        lines.append(f"    name: {t['name']}")
        if t.get("backfill"):
            lines.append("    backfill: true")
        lines.append(f"    config: {{path: {json.dumps(str(t['path']))}}}")
    return "\n".join(lines) + "\n"


def save_config(path: str | Path, trackers: list[dict[str, Any]]) -> tuple[float, float]:
    """Write like an editor: temp file beside it, then os.replace; (monotonic, wall) right
    after the replace."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(config_text(trackers))
    os.replace(tmp, path)
    return time.monotonic(), time.time()


def first_line(path: Path, timeout: float, every: float = 0.001) -> tuple[float, bytes]:
    """Poll `path` until it holds a complete first line; (time.monotonic() then, the line)."""
    end = time.monotonic() + timeout
    fd = -1
    try:
        while True:
            if fd < 0:
                with contextlib.suppress(FileNotFoundError):
                    fd = os.open(path, os.O_RDONLY)
            if fd >= 0:
                data = os.pread(fd, 65536, 0)
                nl = data.find(b"\n")
                if nl >= 0:
                    return time.monotonic(), data[:nl]
            if time.monotonic() > end:
                raise TimeoutError(f"no line in {path} within {timeout} s")
            time.sleep(every)
    finally:
        if fd >= 0:
            os.close(fd)


def read_lines(paths: list[Path]) -> tuple[int, Counter[tuple[str, int]], set[str]]:
    """(lines, Counter of (run_id, step), keys seen) over the files."""

    class Line(msgspec.Struct):
        run_id: str
        key: str
        step: int

    dec = msgspec.json.Decoder(Line)
    n = 0
    seen: Counter[tuple[str, int]] = Counter()
    keys: set[str] = set()
    for p in paths:
        if not p.exists():
            continue
        with open(p, "rb") as f:
            for raw in f:
                ln = dec.decode(raw)
                n += 1
                seen[(ln.run_id, ln.step)] += 1
                keys.add(ln.key)
    return n, seen, keys


def exactly_once(seen: Counter[tuple[str, int]], expected: dict[str, int]) -> dict[str, Any]:
    """Against run_id -> N (steps 0..N-1): missing, duplicated, unexpected."""
    missing = sum(1 for rid, n in expected.items() for i in range(n) if (rid, i) not in seen)
    dups = sum(c - 1 for c in seen.values() if c > 1)
    unexpected = sum(c for (rid, i), c in seen.items()
                     if rid not in expected or not 0 <= i < expected[rid])
    return {"missing": missing, "duplicates": dups, "unexpected": unexpected}


def reloaded(d: C.Daemon, before: float, timeout: float) -> dict[str, Any]:
    """The status once `config.loaded_at` moved past `before`."""
    st: dict[str, Any] = C.wait_for(lambda: (s := d.status())["config"]["loaded_at"] != before
                                    and s, timeout, 0.005, "config.loaded_at to change")
    return st


def wait_delivered(d: C.Daemon, names: list[str], min_events: int, timeout: float,
                   every: float = 0.01) -> tuple[float, dict[str, Any]]:
    """Until events_total >= min_events and each named tracker has pending == 0."""
    def ok() -> dict[str, Any] | None:
        st = d.status()
        if st["events_total"] < min_events:
            return None
        for n in names:
            t = C.tracker(st, n)
            if not t or t["pending"] or t["state"] != "running":
                return None
        return st

    st = C.wait_for(ok, timeout, every, f"trackers {names} caught up")
    return time.monotonic(), st


class Replay(msgspec.Struct, kw_only=True):
    """A `backfill: true` tracker added to the idle daemon: the retained journal replayed."""

    delivered: int
    lines: int
    s: float  # from its config.loaded_at until delivered
    from_replace_s: float
    missing: int
    duplicates: int
    unexpected: int
    eps: float = float("nan")


def replay(d: C.Daemon, main_path: Path, path: Path, expected: dict[str, int]) -> Replay:
    """A second `file` tracker with `backfill: true` added beside `main` on an idle daemon: the
    retained journal replayed into `path`, timed from its `config.loaded_at` until delivered."""
    before = d.status()["config"]["loaded_at"]
    _, w_rep = save_config(d.config, [{"name": "main", "path": main_path},
                                      {"name": "replay", "path": path, "backfill": True}])
    reloaded(d, before, 10)
    _, st = wait_delivered(d, ["replay"], 0, 120, every=0.01)
    w_done = time.time()
    lines, seen, _ = read_lines([path])
    s = w_done - st["config"]["loaded_at"]
    delivered = C.tracker(st, "replay")["delivered"]
    return Replay(delivered=delivered, lines=lines, s=s, from_replace_s=w_done - w_rep,
                  eps=delivered / s if s > 0 else float("nan"), **exactly_once(seen, expected))
