"""Tracker worker processes, seen from the daemon: starting one, its frame channel, ending it.

A worker is a fresh interpreter (`python -m magnusd._worker`), never a fork of the threaded
daemon. It is ready once it answers the `Spec` with `Ready` (its plugin imported and
constructed); until then nothing is delivered to it, and one that fails or takes longer than
`READY_TIMEOUT_S` is killed and reaped, never left behind (also when the caller is cancelled).
`Spawner` keeps one spare process whose interpreter has already started. Frames on the
channel are `_workerwire`'s; a closed stdout reads as None, a closed stdin is the worker's cue
to exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from . import _workerwire as wire

READY_TIMEOUT_S = 120.0  # importing a tracker's library can take seconds
PAGE = os.sysconf("SC_PAGE_SIZE")


class Worker:
    """A spawned worker process and its frame channel."""

    def __init__(self, proc: anyio.abc.Process) -> None:
        self.proc = proc
        self._buf = bytearray()
        self._frames: list[bytes] = []
        self._lock = anyio.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def send(self, msg: Any) -> bool:
        assert self.proc.stdin is not None
        try:
            async with self._lock:
                await self.proc.stdin.send(wire.frame(msg))
            return True
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return False

    async def receive(self) -> Any:
        """The next message; None once the worker's stdout closes."""
        assert self.proc.stdout is not None
        while not self._frames:
            try:
                chunk = await self.proc.stdout.receive(1 << 16)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return None
            self._buf += chunk
            self._frames = wire.split(self._buf)
        return wire.from_worker.decode(self._frames.pop(0))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    async def stop_idle(self) -> None:
        """End a worker that has no tracker yet: closing its stdin is its signal to exit."""
        with anyio.CancelScope(shield=True):
            if self.proc.stdin is not None:
                await self.proc.stdin.aclose()
            with anyio.move_on_after(2):
                await self.proc.wait()
            self.kill()
            await self.reap()

    async def reap(self) -> int:
        """Wait for the process to end and release its pipes."""
        with anyio.CancelScope(shield=True):
            code = await self.proc.wait()
            await self.proc.aclose()
        return code

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * PAGE / (1 << 20)
        except (OSError, ValueError, IndexError):
            return 0.0


@dataclass(frozen=True)
class Spawned:
    """A worker whose tracker is constructed and ready, or why there is none."""

    worker: Worker | None
    error: str | None


class Spawner:
    """Starts worker processes, keeping one spare that has already started its interpreter
    (about 0.1 s here), so a reload's new tracker starts receiving sooner."""

    def __init__(self) -> None:
        self._spare: anyio.abc.Process | None = None

    async def _process(self) -> anyio.abc.Process:
        return await anyio.open_process([sys.executable, "-m", "magnusd._worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=None)

    async def spawn(self, spec: wire.Spec) -> Spawned:
        proc, self._spare = self._spare, None
        try:
            if proc is None or proc.returncode is not None:
                proc = await self._process()
            self._spare = await self._process()  # its start-up overlaps this tracker's
        except OSError as e:
            if proc is None:
                return Spawned(None, f"cannot start a worker process: {e.strerror}")
        return await _ready(Worker(proc), spec)

    async def aclose(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            await Worker(spare).stop_idle()


async def spawn(spec: wire.Spec) -> Spawned:
    """Start a worker for `spec`; its `worker` is set once its tracker is constructed."""
    try:
        proc = await anyio.open_process([sys.executable, "-m", "magnusd._worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=None)
    except OSError as e:  # out of processes, file descriptors or memory: retried later
        return Spawned(None, f"cannot start a worker process: {e.strerror}")
    return await _ready(Worker(proc), spec)


async def _ready(w: Worker, spec: wire.Spec) -> Spawned:
    reply: Any = None
    try:
        if await w.send(spec):
            with anyio.move_on_after(READY_TIMEOUT_S):
                reply = await w.receive()
    except BaseException:  # cancelled (shutdown) while the tracker loads: no orphan
        w.kill()
        await w.reap()
        raise
    if isinstance(reply, wire.Ready) and reply.error is None:
        return Spawned(w, None)
    w.kill()
    code = await w.reap()
    if isinstance(reply, wire.Ready):
        return Spawned(None, reply.error)
    if reply is None and code is not None and code != 0:
        return Spawned(None, f"the worker {describe_exit(code)} while loading the tracker")
    return Spawned(None, f"the worker did not load the tracker within {READY_TIMEOUT_S:.0f} s")


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
