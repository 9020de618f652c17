"""A full disk and a failing fsync (design §4, §10): the daemon never dies and never
acknowledges what it could not store; clients keep their events; everything arrives once the
disk can be written again.

A read-only remount is not tested: the kernel refuses it (EBUSY) while the daemon holds files
open for writing; a write failing with EROFS would take the ENOSPC path (any OSError)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from conftest import Daemon, wait_for
from magnusd._journal import Journal

pytestmark = pytest.mark.reliability
N = 400_000
STREAM = f"""
    from magnus import track_this, flush
    for i in range(1, {N} + 1):
        track_this(step=i, x=i)
        if i % 20_000 == 0:
            assert flush(120), i  # waits through the outage: nothing is acked early
    assert flush(120)
"""


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def small_disk(root: Path) -> Iterator[Path]:
    """The daemon's data directory on an 8 MB tmpfs of its own (needs root)."""
    data = root / "data"
    data.mkdir(mode=0o700)
    try:
        mount("-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(data))
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e}); the disk-full path is unproven here")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


def file_cfg(root: Path) -> str:
    return f"experiment_tracker:\n  type: file\n  config: {{path: '{root / 'f.jsonl'}'}}\n"


def check_everything_arrived(d: Daemon, root: Path, run_id: str) -> None:
    m = d.metrics(run_id) or {}
    assert {int(k[2:]) for k in m if k.startswith("x_")} == set(range(1, N + 1))
    wait_for(lambda: d.status()["trackers"][0]["caught_up"], timeout=120, what="caught up")
    steps = {e["step"] for e in map(json.loads, (root / "f.jsonl").read_text().splitlines())
             if e["run_id"] == run_id}
    assert steps == set(range(1, N + 1))


def test_a_full_disk_stops_acks_and_everything_arrives_when_space_returns(
        make_daemon: Callable[..., Daemon], root: Path, small_disk: Path) -> None:
    d = make_daemon(file_cfg(root)).start()
    assert d.proc is not None
    pid = d.proc.pid
    client = d.popen(STREAM, MAGNUS_RUN_ID="full1")
    st = wait_for(lambda: (s := d.status())["disk_full"] and s, timeout=120,
                  what="the daemon to report its disk full")
    assert st["storage_errors"] and "No space left" in st["storage_errors"][0]
    assert client.poll() is None  # the client waits: its events are not acknowledged
    mount("-o", "remount,size=64m", str(small_disk))  # space returns
    _, err = client.communicate(timeout=300)
    assert client.returncode == 0, err
    assert d.status()["pid"] == pid
    wait_for(lambda: not d.status()["disk_full"], timeout=30, what="disk_full cleared")
    check_everything_arrived(d, root, "full1")
    assert d.stop() == 0


def test_a_failed_fsync_is_never_acknowledged_and_writing_moves_on(tmp_path: Path) -> None:
    from magnusd import _journal

    j = Journal(str(tmp_path / "j"), fsync_interval=0.01)
    j.open()
    told: list[int] = []
    j.on_fsync_failure.append(lambda: told.append(j.last_seq))
    real = _journal._fsync_all

    def failing(fds: list[int], close: list[int]) -> None:
        raise OSError(5, "Input/output error")

    async def scenario() -> None:
        j.append([b"a", b"b"], [1, 1])
        _journal._fsync_all = failing
        await j.sync()
        assert j.durable_seq == 0 and told == [2]  # not durable, and the clients are told
        assert j.error == "fsync failed: Input/output error" and j.fsync_failures == 1
        _journal._fsync_all = real
        j.append([b"c"], [1])  # continues in a new segment
        assert len(j.segments) == 2 and j.error is None
        await j.sync()
        assert j.durable_seq == 3

    try:
        anyio.run(scenario)
    finally:
        _journal._fsync_all = real
        j.close()
    assert os.path.exists(j.path(3))
