"""Corruption of the daemon's files (design §7, §10): recovery keeps every intact record, keeps
what it cannot read as evidence, never reuses a sequence number, and every event acknowledged
after it reaches the run log and every tracker."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Daemon, wait_for
from magnusd import _records as records
from magnusd._journal import Journal, Reader

pytestmark = pytest.mark.reliability

TRACK = """
    from magnus import track_this, flush
    for i in range(1, {n} + 1):
        track_this(step=i, x=i)
        if i % 100 == 0:
            assert flush(10)      # one journal record per 100 events
    assert flush(10)
"""


def cfg(root: Path) -> str:
    return f"experiment_tracker:\n  type: file\n  config: {{path: '{root / 'f.jsonl'}'}}\n"


def delivered(root: Path, run_id: str) -> set[int]:
    path = root / "f.jsonl"
    if not path.exists():
        return set()
    return {e["step"] for e in map(json.loads, path.read_text().splitlines())
            if e["run_id"] == run_id}


def segments(d: Daemon) -> list[Path]:
    return sorted((d.data / "journal").glob("*.seg"))


def steps_of(d: Daemon, run_id: str) -> set[int]:
    m = d.metrics(run_id) or {}
    return {int(k[2:]) for k in m if k.startswith("x_")}


def after_recovery_everything_new_arrives(d: Daemon, root: Path) -> dict[str, Any]:
    """Start the daemon on the damaged files; a new run must arrive whole, everywhere."""
    d.start()
    d.client(TRACK.format(n=1000), MAGNUS_RUN_ID="after")
    assert steps_of(d, "after") == set(range(1, 1001))
    wait_for(lambda: d.status()["trackers"][0]["caught_up"], what="tracker caught up")
    assert delivered(root, "after") == set(range(1, 1001))
    return d.status()


def damage(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def record_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    return [0, *[end for end, _, _, _ in records.scan(data)][:-1]]


@pytest.mark.parametrize("how", ["flipped byte", "zeroed length", "torn tail", "garbage tail"])
def test_a_damaged_last_segment_loses_nothing_acknowledged_after_recovery(
        make_daemon: Callable[..., Daemon], root: Path, how: str) -> None:
    d = make_daemon(cfg(root)).start()
    d.client(TRACK.format(n=3000), MAGNUS_RUN_ID="before")
    wait_for(lambda: d.status()["trackers"][0]["caught_up"], what="tracker caught up")
    before = d.status()["journal"]["last_seq"]
    assert d.stop() == 0
    seg = segments(d)[-1]
    offsets = record_offsets(seg)
    middle = offsets[len(offsets) // 2]
    if how == "flipped byte":
        damage(seg, middle + records.HEADER_SIZE + 3, b"\xff")
    elif how == "zeroed length":
        damage(seg, middle, b"\0\0\0\0")
    elif how == "torn tail":
        os.truncate(seg, seg.stat().st_size - 7)
    else:
        with open(seg, "ab") as f:
            f.write(os.urandom(5000))
    st = after_recovery_everything_new_arrives(d, root)
    rec = st["journal"]["recovery"]
    assert rec["truncated_bytes"] > 0 and len(rec["damaged_copies"]) == 1
    assert Path(rec["damaged_copies"][0]).exists()  # the evidence is kept
    if how in ("flipped byte", "zeroed length"):
        assert rec["salvaged_records"] > 0  # the intact records after the damage came back
    assert st["journal"]["last_seq"] > before  # numbering went on: no seq reused
    # the run applied before the damage is whole in the run log
    assert steps_of(d, "before") == set(range(1, 3001))


def test_a_missing_segment_and_a_damaged_older_one_are_skipped_not_fatal(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    d = make_daemon(cfg(root))
    d.extra_env["MAGNUS_JOURNAL_SEGMENT_BYTES"] = "65536"  # several segments
    d.start()
    d.client(TRACK.format(n=20000), MAGNUS_RUN_ID="before")
    assert d.stop() == 0
    segs = segments(d)
    assert len(segs) >= 4, segs
    segs[1].unlink()
    damage(segs[2], record_offsets(segs[2])[1] + records.HEADER_SIZE + 2, b"\x00\xff")
    after_recovery_everything_new_arrives(d, root)


@pytest.mark.parametrize("what", ["checkpoint", "cursor"])
def test_garbage_in_a_checkpoint_or_cursor_is_moved_aside_and_replayed(
        make_daemon: Callable[..., Daemon], root: Path, what: str) -> None:
    d = make_daemon(cfg(root)).start()
    d.client(TRACK.format(n=500), MAGNUS_RUN_ID="before")
    wait_for(lambda: d.status()["trackers"][0]["caught_up"], what="tracker caught up")
    assert d.stop() == 0
    path = (d.data / "runlog.checkpoint" if what == "checkpoint"
            else d.data / "trackers" / "file.cursor")
    path.write_bytes(b"\x00garbage{")
    after_recovery_everything_new_arrives(d, root)
    assert Path(str(path) + ".bad").read_bytes() == b"\x00garbage{"
    assert steps_of(d, "before") == set(range(1, 501))
    if what == "cursor":  # replayed rather than skipped: at least once
        assert delivered(root, "before") == set(range(1, 501))


def test_a_torn_run_log_file_and_a_garbage_spool_file_do_not_stop_the_daemon(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    d = make_daemon(cfg(root)).start()
    d.client(TRACK.format(n=500), MAGNUS_RUN_ID="before")
    assert d.stop() == 0
    log = next((d.data / "runs").glob("*/log"))
    os.truncate(log, log.stat().st_size - 5)
    spool = d.data / "spool"
    spool.mkdir(mode=0o700, exist_ok=True)
    (spool / "junk.spool").write_bytes(b"\x00\x00\x00\x05hello")
    after_recovery_everything_new_arrives(d, root)
    assert (spool / "bad" / "junk.spool").exists() and not (spool / "junk.spool").exists()


def test_recovery_writes_back_the_intact_records_after_a_flipped_byte(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j"))
    j.open()
    for i in range(100):
        j.append([f"payload {i}".encode()], [1])
    j.close()
    seg = next((tmp_path / "j").glob("*.seg"))
    damage(seg, record_offsets(seg)[50] + records.HEADER_SIZE, b"X")
    j2 = Journal(str(tmp_path / "j"))
    j2.open()
    got = []
    reader = Reader(j2.dir, 1, j2)
    while batch := reader.read():
        got += [seq for seq, _, _ in batch]
    assert got == [s for s in range(1, 101) if s != 51]
    assert j2.last_seq == 100 and j2.events == 100 and j2.salvaged_records == 49
    j2.append([b"next"], [1])
    assert j2.last_seq == 101
    j2.close()
