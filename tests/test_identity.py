"""Who is tracking (design §14) and whether a process still runs (design §7), as pure
functions and against real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from magnus._identity import host_from, process_start_ticks, rank_from, run_id_from
from magnusd._attempts import probe


@pytest.mark.parametrize(("env", "run_id"), [
    ({}, None),
    ({"MAGNUS_RUN_ID": "m", "TORCHELASTIC_RUN_ID": "t", "SLURM_JOB_ID": "9"}, "m"),
    ({"TORCHELASTIC_RUN_ID": "t", "SLURM_JOB_ID": "9"}, "t"),
    ({"TORCHELASTIC_RUN_ID": "none", "SLURM_JOB_ID": "9"}, "9"),
    ({"SLURM_JOB_ID": "9", "SLURM_ARRAY_TASK_ID": "4"}, "9_4"),
    ({"MAGNUS_RUN_ID": "", "SLURM_JOB_ID": "9"}, "9"),
])
def test_run_id_comes_from_the_job(env: dict[str, str], run_id: str | None) -> None:
    assert run_id_from(env) == run_id


@pytest.mark.parametrize(("env", "rank"), [
    ({}, None),
    ({"RANK": "3", "SLURM_PROCID": "5"}, 3),
    ({"SLURM_PROCID": "5", "OMPI_COMM_WORLD_RANK": "6"}, 5),
    ({"OMPI_COMM_WORLD_RANK": "6", "PMI_RANK": "7"}, 6),
    ({"PMI_RANK": "7"}, 7),
    ({"RANK": "x", "PMI_RANK": "1"}, 1),
])
def test_rank_comes_from_the_launcher(env: dict[str, str], rank: int | None) -> None:
    assert rank_from(env) == rank


def test_host_is_magnus_host_else_the_hostname() -> None:
    assert host_from({"MAGNUS_HOST": "node7"}) == "node7"
    assert host_from({}) == os.uname().nodename


def test_a_running_process_is_alive_and_its_start_time_tells_reuse_apart() -> None:
    me = process_start_ticks()
    assert me > 0 and process_start_ticks(os.getpid()) == me
    assert probe(os.getpid(), me) is None
    reason = probe(os.getpid(), me + 1)  # the same pid, a process that started later
    assert reason is not None and "without ending the step" in reason


def test_a_dead_process_says_how_it_ended_while_it_is_a_zombie() -> None:
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    starts = {p.pid: process_start_ticks(p.pid) for p in (killed, exited)}
    os.kill(killed.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (probe(killed.pid, starts[killed.pid]) is None
                                           or probe(exited.pid, starts[exited.pid]) is None):
        time.sleep(0.01)  # not reaped: zombies until wait() below
    assert probe(killed.pid, starts[killed.pid]) == f"killed: SIGKILL (pid {killed.pid})"
    assert probe(exited.pid, starts[exited.pid]) == (
        f"exited without ending the step (pid {exited.pid}; status 3)")
    killed.wait()
    exited.wait()
    gone = probe(exited.pid, starts[exited.pid])
    assert gone is not None and "exit status unknown" in gone


def test_the_reaper_judges_only_processes_of_its_own_host_and_pid_namespace(
        tmp_path: Path) -> None:
    import anyio

    from magnus import _protocol as proto
    from magnus._identity import pid_namespace
    from magnusd import _attempts
    from magnusd._journal import Journal, Reader

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    journal = Journal(str(tmp_path / "journal"))
    journal.open()
    table = _attempts.OpenAttempts()
    me = os.uname().nodename
    for aid, host, ns in [("local", me, pid_namespace()), ("unknown-ns", me, 0),
                          ("container", me, pid_namespace() + 1), ("remote", "node9", 0)]:
        table.note(proto.StepMark("c", 1, "r", "", "s", "start", 0.0, "", aid, host, gone.pid,
                                  0, None, None, ns))
    reaper = _attempts.Reaper(journal, table, lambda: journal.last_seq, me, str(tmp_path))

    async def two_looks() -> None:
        await reaper.sweep()  # seen dead once: judged only when seen so again after the grace
        await anyio.sleep(_attempts.GRACE_S)
        await reaper.sweep()

    anyio.run(two_looks)
    records = [proto.decoder.decode(p) for _, _, p in Reader(journal.dir, 1, journal).read()]
    ends = [m for m in records if isinstance(m, proto.StepMark)]
    assert len(ends) == len(records)  # the reaper journals step ends only
    assert sorted(m.attempt for m in ends) == ["local", "unknown-ns"]
    assert all(m.status == "FAIL" and m.end_reason and m.client_id == f"magnusd@{me}"
               for m in ends)
    assert sorted(m.seq for m in ends) == [1, 2]  # their journal seqs: unique when forwarded
    journal.close()
