"""Crash loops (design §4, §7, §11): `kill -9` of the daemon at random moments while a producer
streams — during fsyncs, segment roll-overs (small segments), run-store checkpoints, spool
ingestion (the producer spools while the daemon is down) and config reloads — then a restart.
After every cycle: every file parses; at the end every event the producer saw acknowledged is in
the run log, and reaches the tracker (at least once, with at most the batch in flight repeated
per crash).

Cycles: MAGNUS_CRASH_CYCLES (10 here; the soak runs 100)."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Daemon, wait_for
from magnusd import _records as records

pytestmark = pytest.mark.reliability
CYCLES = int(os.environ.get("MAGNUS_CRASH_CYCLES", "10"))
PRODUCER = """
    import sys
    from magnus import track_this, flush
    i = 0
    while True:
        for _ in range(500):
            i += 1
            track_this(step=i, x=i)
        if flush(60):
            print(i, flush=True)  # everything up to i is acknowledged (journaled or spooled)
        if i >= {n}:
            break
"""


def tracker_cfg(root: Path, extra: int) -> str:
    out = ["experiment_tracker:\n"
           f"  - {{type: file, name: main, config: {{path: '{root}/f.jsonl'}}}}"]
    if extra % 2:  # a reload adds or removes a second tracker
        out.append(f"  - {{type: do-nothing, name: extra{extra}}}")
    return "\n".join(out) + "\n"


def every_file_parses(data: Path) -> None:
    for seg in (data / "journal").glob("*.seg"):
        blob = seg.read_bytes()
        end = max((e for e, _, _, _ in records.scan(blob)), default=0)
        assert end == len(blob), f"{seg}: {len(blob) - end} bytes do not parse"
    for f in [*(data / "runs").glob("*/log"), *(data / "runs").glob("*/index")]:
        blob = f.read_bytes()
        end = max((e for e, _, _, _ in records.scan(blob)), default=0)
        assert end == len(blob), f  # whole records: kill -9 never splits a write() of them
    for f in (data / "runs").glob("*/series/*/*.pts"):
        assert f.stat().st_size % 24 == 0, f  # whole 24-byte points
    json.loads((data / "runlog.checkpoint").read_text())
    for c in (data / "trackers").glob("*.cursor"):
        json.loads(c.read_text())


@pytest.mark.timeout(60 + 6 * CYCLES)  # about 1.5 s a cycle here; the soak runs 100
def test_kill_9_at_random_moments_loses_nothing_acknowledged(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    rng = random.Random(int(os.environ.get("MAGNUS_CRASH_SEED", "7")))
    n = 20_000 * CYCLES
    d = make_daemon(tracker_cfg(root, 0),
                    extra_env={"MAGNUS_JOURNAL_SEGMENT_BYTES": "262144"}).start()
    producer = d.popen(PRODUCER.format(n=n), MAGNUS_RUN_ID="loop", MAGNUS_EXIT_TIMEOUT="30")
    restarts = []
    for cycle in range(CYCLES):
        time.sleep(rng.uniform(0.1, 1.5))  # a random moment: what is going on then varies
        if rng.random() < 0.3:
            d.config.write_text(tracker_cfg(root, cycle + 1))  # a reload in flight
            time.sleep(rng.uniform(0, 0.3))
        d.kill9()
        every_file_parses(d.data)
        time.sleep(rng.uniform(0, 0.5))  # down for a while: the producer spools
        t0 = time.monotonic()
        d.start()
        restarts.append(time.monotonic() - t0)
    out, err = producer.communicate(timeout=600)
    assert producer.returncode == 0, err
    acked = int(out.split()[-1])
    assert acked == n
    m = wait_for(lambda: (x := d.metrics("loop")) and len(x) >= acked and x, timeout=120,
                 what="the run log caught up")
    assert all(m[f"x_{i}"] == i for i in range(1, acked + 1))
    t = wait_for(lambda: (x := next(t for t in d.status()["trackers"] if t["name"] == "main"))
                 ["caught_up"] and x, timeout=120, what="the tracker caught up")
    steps = [e["step"] for e in map(json.loads, (root / "f.jsonl").read_text().splitlines())]
    assert set(steps) >= set(range(1, acked + 1))
    repeats = len(steps) - len(set(steps))
    assert repeats <= 5000 * (CYCLES + 1), repeats  # at most the batch in flight per crash
    assert d.stop() == 0
    every_file_parses(d.data)
    assert max(restarts) < 15, restarts
    print(f"crash loop: {CYCLES} kill -9 cycles, {acked} events acknowledged, 0 lost, "
          f"{repeats} repeated to the tracker (pending now {t['pending']}), restart to "
          f"answering max {max(restarts):.2f} s")
