"""Open attempts, and closing those whose process died (design §7, §13).

The run store notes every attempt's start and end as it applies the journal (`OpenAttempts`),
and keeps the table in its checkpoint, so a restart knows what was open without reading any
run's history. The `Reaper` judges the attempts of this host's processes (in its own pid
namespace) only: an attempt whose process is gone — no such pid, a zombie, or the pid reused by
a process that started later — is closed `FAIL` with an `end_reason`, by a step end the daemon
journals itself (so trackers get it too).
It looks when a client's connection closes and once a second; after a restart its first look
comes once the spool files are ingested and the run store has caught up, so a process that
spooled its own end is never judged. A process that is alive keeps its attempt open (it will
reconnect), and should the process's own end arrive after the daemon's, the run log keeps the
process's word.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import anyio
import msgspec

from magnus import _protocol as proto
from magnus._identity import pid_namespace

from ._journal import Journal

log = logging.getLogger("magnusd.attempts")
MAX_OPEN = 100_000
CHECK_EVERY_S = 1.0
GRACE_S = 0.5  # a death is acted on when seen twice this far apart (a spool may be landing)
SPOOL_WAIT_S = 10.0  # how long pending spool files hold a verdict back


class OpenAttempt(msgspec.Struct, array_like=True):
    attempt: str
    run_id: str
    tag: str
    step_name: str
    host: str
    pid: int
    pid_start: int
    rank: int | None
    pid_ns: int = 0


class OpenAttempts:
    """Attempts started and not yet ended, in journal order (bounded: oldest forgotten)."""

    def __init__(self, items: list[OpenAttempt] | None = None) -> None:
        self.open: dict[str, OpenAttempt] = {a.attempt: a for a in items or []}

    def note(self, m: proto.StepMark) -> None:
        if not m.attempt:
            return
        if m.kind == "end":
            self.open.pop(m.attempt, None)
        elif m.attempt not in self.open:
            if len(self.open) >= MAX_OPEN:
                del self.open[next(iter(self.open))]
            self.open[m.attempt] = OpenAttempt(m.attempt, m.run_id, m.tag, m.step_name, m.host,
                                               m.pid, m.pid_start, m.rank, m.pid_ns)

    def snapshot(self) -> list[OpenAttempt]:
        return list(self.open.copy().values())  # dict.copy is atomic under the GIL

    def dump(self) -> list[Any]:
        return [msgspec.to_builtins(a) for a in self.snapshot()]

    @classmethod
    def load(cls, raw: Any) -> OpenAttempts:
        try:
            return cls(msgspec.convert(raw or [], list[OpenAttempt]))
        except msgspec.ValidationError as e:
            log.error("open attempts in the checkpoint are unreadable (%s); starting empty", e)
            return cls()


def probe(pid: int, pid_start: int) -> str | None:
    """None while the process runs; else why it is gone (for `end_reason`)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read()
    except FileNotFoundError:
        return f"exited without ending the step (pid {pid}; exit status unknown)"
    except OSError:
        return None  # cannot tell (hidepid?): never close on a guess
    rest = fields[fields.rindex(b")") + 2 :].split()
    if pid_start and int(rest[19]) != pid_start:
        return f"exited without ending the step (pid {pid}; exit status unknown)"
    if rest[0] not in (b"Z", b"X"):
        return None
    status = int(rest[49]) if len(rest) > 49 else -1  # exit_code, as waitpid reports it
    if status < 0:
        return f"exited without ending the step (pid {pid}; exit status unknown)"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed: {name} (pid {pid})"
    return f"exited without ending the step (pid {pid}; status {os.WEXITSTATUS(status)})"


class Reaper:
    """Closes the open attempts of this host's dead processes."""

    def __init__(self, journal: Journal, attempts: OpenAttempts, applied: Any, host: str,
                 spool_dir: str) -> None:
        self.journal = journal
        self.attempts = attempts
        self.applied = applied  # () -> the run store's applied seq
        self.host = host
        self.spool_dir = spool_dir
        self.pid_ns = pid_namespace()  # a process in another (a container) is not judged
        self.closed_total = 0
        self._wake = anyio.Event()
        self._dead_since: dict[str, tuple[float, str]] = {}
        self._ended: set[str] = set()

    def wake(self) -> None:
        """A client connection closed: look now."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self.sweep()
            with anyio.move_on_after(GRACE_S if self._dead_since else CHECK_EVERY_S):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def sweep(self) -> None:
        target = self.journal.last_seq
        with anyio.move_on_after(5):
            while self.applied() < target:  # noqa: ASYNC110 - the applier runs in a thread
                await anyio.sleep(0.02)
        if self.applied() < target:
            return  # the run store is behind: judge nothing on a stale table
        now = time.monotonic()
        current = {a.attempt: a for a in self.attempts.snapshot()
                   if a.host == self.host and a.pid_ns in (0, self.pid_ns)}
        self._ended &= current.keys()
        for aid in list(self._dead_since):
            if aid not in current:
                del self._dead_since[aid]
        ends = []
        for aid, a in current.items():
            if aid in self._ended or a.pid <= 0:
                continue
            reason = probe(a.pid, a.pid_start)
            if reason is None:
                self._dead_since.pop(aid, None)
                continue
            first, _ = self._dead_since.setdefault(aid, (now, reason))
            if now - first < GRACE_S or (self._spool_pending() and now - first < SPOOL_WAIT_S):
                continue
            ends.append(self._end_mark(a, reason))
            self._ended.add(aid)
            del self._dead_since[aid]
            log.warning("run %s step %r: attempt of pid %d closed FAIL: %s", a.run_id,
                        a.step_name, a.pid, reason)
        if ends:
            for i, m in enumerate(ends):  # a (client id, seq) unique across hosts: a central
                m.seq = self.journal.last_seq + 1 + i  # daemon's duplicate check keeps each
            self.journal.append([proto.encoder.encode(m) for m in ends], [0] * len(ends))
            self.closed_total += len(ends)

    def _end_mark(self, a: OpenAttempt, reason: str) -> proto.StepMark:
        return proto.StepMark(f"{proto.DAEMON_CLIENT_ID}@{self.host}", 0, a.run_id, a.tag,
                              a.step_name, "end", time.time(), "FAIL", a.attempt, a.host, a.pid,
                              a.pid_start, a.rank, reason, a.pid_ns)

    def _spool_pending(self) -> bool:
        try:
            return any(n.endswith(".spool") for n in os.listdir(self.spool_dir))
        except OSError:
            return False

