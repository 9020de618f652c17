"""Supervision of tracker workers: one process per tracker; the daemon owns the cursor.

A `Runner` spawns its tracker's worker (`_worker.py`, a fresh interpreter: never a fork of the
threaded daemon), sends it the cursor, forwards journal growth, and moves and persists the
cursor on every `Done`. Nothing the worker does can stop the daemon:

- a worker that dies (a signal, `os._exit`, the OOM killer) is restarted with exponential
  backoff and resumes at the cursor: at most the op in flight is delivered again;
- a call running longer than `timeout_s` gets the worker killed and restarted, the op retried;
- a worker over `max_memory_mb` is asked to exit after the op in hand and restarted (killed if
  it reaches 1.5 times the bound first);
- an op that workers died on `ISOLATE_AFTER` times is delivered one event at a time, and an
  event a worker dies on is written to the dead-letter file and skipped;
- stop (reload, removal, shutdown) asks the worker to finish the op in hand, and kills it after
  `STOP_GRACE_S` if it does not.

Hand-over on reload: a replacement waits for its predecessor (`after=`) to finish, then takes
its cursor, so every event reaches exactly one of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import anyio
import anyio.abc

from . import _workerwire as wire
from ._config import TrackerDef
from ._fanout import Cursor, CursorStore
from ._journal import Journal
from ._tracker import RunInfo
from ._worker import write_dead_letters

log = logging.getLogger("magnusd.workers")
RESTART_MIN_S, RESTART_MAX_S = 0.5, 10.0
STOP_GRACE_S = 5.0  # after Stop: then the worker is killed (MLflow takes ~1.5 s to exit)
READY_TIMEOUT_S = 120.0  # importing a tracker's library can take seconds
ISOLATE_AFTER = 5  # deaths on one op before it is delivered event by event
MEMORY_KILL_FACTOR = 1.5
WATCH_EVERY_S = 0.2
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


class Spawner:
    """Starts worker processes, keeping one spare that has already started its interpreter
    (about 0.1 s here), so a reload's new tracker starts receiving sooner."""

    def __init__(self) -> None:
        self._spare: anyio.abc.Process | None = None

    async def _process(self) -> anyio.abc.Process:
        return await anyio.open_process([sys.executable, "-m", "magnusd._worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=None)

    async def spawn(self, spec: wire.Spec) -> tuple[Worker | None, str | None]:
        proc, self._spare = self._spare, None
        try:
            if proc is None or proc.returncode is not None:
                proc = await self._process()
            self._spare = await self._process()  # its start-up overlaps this tracker's
        except OSError as e:
            if proc is None:
                return None, f"cannot start a worker process: {e.strerror}"
        return await _ready(Worker(proc), spec)

    async def aclose(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            await Worker(spare).stop_idle()


async def spawn(spec: wire.Spec) -> tuple[Worker | None, str | None]:
    """Start a worker for `spec`; (worker, None) once its tracker is constructed."""
    try:
        proc = await anyio.open_process([sys.executable, "-m", "magnusd._worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=None)
    except OSError as e:  # out of processes, file descriptors or memory: retried later
        return None, f"cannot start a worker process: {e.strerror}"
    return await _ready(Worker(proc), spec)


async def _ready(w: Worker, spec: wire.Spec) -> tuple[Worker | None, str | None]:
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
        return w, None
    w.kill()
    code = await w.reap()
    if isinstance(reply, wire.Ready):
        return None, reply.error
    if reply is None and code is not None and code != 0:
        return None, f"the worker {describe_exit(code)} while loading the tracker"
    return None, f"the worker did not load the tracker within {READY_TIMEOUT_S:.0f} s"


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Runner:
    """Delivers the journal to one tracker through its worker process."""

    def __init__(self, defn: TrackerDef, spec: wire.Spec, journal: Journal,
                 cursors: CursorStore, cursor: Cursor, worker: Worker | None,
                 error: str | None = None, after: Runner | None = None) -> None:
        self.defn = defn
        self.name = defn.key
        self.spec = spec
        self.journal = journal
        self.cursors = cursors
        self.cursor = cursor
        self.worker = worker
        self.constructed = worker is not None
        self.state = "disabled" if worker is None else "starting"
        self.delivered = 0
        self.errors = 0
        self.dead_lettered = 0
        self.restarts = 0
        self.last_error: str | None = error
        self.after = after
        self.in_flight: tuple[float, wire.Begin] | None = None
        self.rss_mb = 0.0
        self.isolate = 0
        self.skip: list[tuple[int, int]] = []
        self._deaths: Counter[int] = Counter()
        self._stop = anyio.Event()
        self.done = anyio.Event()
        self._asks: dict[int, tuple[anyio.Event, list[wire.Answer]]] = {}
        self._ask_id = 0

    def status(self) -> dict[str, Any]:
        flight = self.in_flight
        return {"name": self.name, "type": self.defn.type, "state": self.state,
                "pending": max(self.journal.events - self.cursor.mark, 0),
                "delivered": self.delivered, "errors": self.errors,
                "last_error": self.last_error, "cursor": self.cursor.seq,
                "caught_up": self.cursor.seq >= self.journal.last_seq,
                "restarts": self.restarts, "dead_lettered": self.dead_lettered,
                "in_flight_s": round(time.monotonic() - flight[0], 3) if flight else None,
                "pid": self.worker.pid if self.worker else None,
                "rss_mb": round(self.rss_mb, 1) if self.worker else None}

    def stuck(self, seconds: float) -> bool:
        return self.in_flight is not None and time.monotonic() - self.in_flight[0] > seconds

    def stop(self) -> None:
        """Finish the op in hand (killed after STOP_GRACE_S), then stop."""
        self._stop.set()

    async def ask(self, run: RunInfo) -> dict[str, Any]:
        """The tracker's context_state(run), answered by its worker."""
        w = self.worker
        if w is None:
            raise RuntimeError(f"tracker {self.name!r} has no running worker")
        self._ask_id += 1
        key = self._ask_id
        slot: tuple[anyio.Event, list[wire.Answer]] = (anyio.Event(), [])
        self._asks[key] = slot
        try:
            await w.send(wire.Ask(key, run.run_id, run.tag, run.step_name))
            with anyio.fail_after(30):
                await slot[0].wait()
        finally:
            self._asks.pop(key, None)
        answer = slot[1][0]
        if answer.error:
            raise RuntimeError(answer.error)
        return answer.state

    # -- supervision ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if self.after is not None:
                await self.after.done.wait()
                self.cursor = self.after.cursor
                self.delivered = self.after.delivered
                self.after = None
                self.cursors.save(self.name, self.cursor)
            if self.constructed:
                await self._supervise()
        finally:
            if self.worker is not None:
                self.worker.kill()
                await self.worker.reap()
                self.worker = None
            if self.state != "disabled":
                self.state = "stopped"
            self.in_flight = None
            self.done.set()

    async def _supervise(self) -> None:
        backoff = RESTART_MIN_S
        while not self._stop.is_set():
            if self.worker is None:
                with anyio.move_on_after(backoff):
                    await self._stop.wait()
                if self._stop.is_set():
                    return
                self.worker, error = await spawn(self.spec)
                if self.worker is None:
                    self.last_error = error
                    log.error("tracker %r: %s; retrying in %.1f s", self.name, error, backoff)
                    backoff = min(backoff * 2, RESTART_MAX_S)
                    continue
            worker = self.worker
            self.state = "running"
            progressed, reason = await self._drive(worker)
            code = await worker.reap()
            self.worker = None
            flight, self.in_flight = self.in_flight, None
            if self._stop.is_set() and reason is None:
                return
            self.restarts += 1
            if reason == "memory":  # asked to exit between ops: not a crash
                backoff = 0.0
                continue
            what = reason or f"worker {describe_exit(code)}"
            if flight is not None:
                what += f" during a call on the records from seq {flight[1].first_seq}"
                self._note_death(flight[1], what)
            self.last_error = what
            self.state = "restarting"
            backoff = (RESTART_MIN_S if progressed or self.isolate
                       else min(max(backoff, RESTART_MIN_S) * 2, RESTART_MAX_S))
            log.error("tracker %r: %s; restarting in %.1f s (restart %d)", self.name, what,
                      backoff, self.restarts)

    def _note_death(self, begin: wire.Begin, what: str) -> None:
        """Count deaths per op; isolate the op, then dead-letter the event it dies on."""
        if begin.index >= 0 and begin.first_seq == self.isolate:
            self.skip.append((begin.seq, begin.index))
            self.dead_lettered += 1
            item = json.loads(begin.event) | {"error": what, "dead_lettered_at": time.time()}
            write_dead_letters(self.spec.dead_letter, json.dumps(item) + "\n")
            log.error("tracker %r: dead-lettered the event at seq %d index %d: %s", self.name,
                      begin.seq, begin.index, what)
            return
        self._deaths[begin.first_seq] += 1
        if self._deaths[begin.first_seq] >= ISOLATE_AFTER and self.isolate != begin.first_seq:
            self.isolate = begin.first_seq
            log.error("tracker %r: the worker died %d times on the records from seq %d; "
                      "delivering them one event at a time", self.name, ISOLATE_AFTER,
                      begin.first_seq)

    async def _drive(self, w: Worker) -> tuple[bool, str | None]:
        """Run one worker life; (made progress, why it was ended: None | reason | "memory")."""
        progressed = False
        ended: list[str | None] = [None]
        await w.send(wire.Go(self.cursor.seq, self.cursor.mark, self.isolate, self.skip))
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._tails, w)
            tg.start_soon(self._watch, w, ended)
            while (msg := await w.receive()) is not None:
                if isinstance(msg, wire.Begin):
                    self.in_flight = (time.monotonic(), msg)
                elif isinstance(msg, wire.Done):
                    self.in_flight = None
                    self.delivered += msg.delivered
                    self.dead_lettered += msg.dead
                    if msg.seq:
                        self.cursor = Cursor(msg.seq, msg.mark)
                        self.cursors.save(self.name, self.cursor)
                        self._deaths.clear()
                        if self.isolate and self.cursor.seq >= self.isolate:
                            self.isolate, self.skip = 0, []
                    progressed = True
                elif isinstance(msg, wire.Health):
                    if msg.state == "failing":
                        self.errors += 1
                        self.last_error = msg.error
                        self.in_flight = None  # backing off, not hung
                    self.state = msg.state
                elif isinstance(msg, wire.Answer):
                    slot = self._asks.get(msg.id)
                    if slot is not None:
                        slot[1].append(msg)
                        slot[0].set()
            tg.cancel_scope.cancel()
        return progressed, ended[0]

    async def _tails(self, w: Worker) -> None:
        sent = -1
        while True:
            if self.journal.last_seq > sent:
                sent = self.journal.last_seq
                if not await w.send(wire.Tail(sent)):
                    return
            await self.journal.wait_written(sent)
            await anyio.sleep(0.005)  # at most ~200 wake-ups a second

    async def _watch(self, w: Worker, ended: list[str | None]) -> None:
        """Stop requests, call timeouts and the memory bound."""
        stop_deadline = None
        limit = self.defn.max_memory_mb
        next_rss = 0.0
        while True:
            with anyio.move_on_after(WATCH_EVERY_S):
                await self._stop.wait()
            now = time.monotonic()
            if self._stop.is_set() and stop_deadline is None:
                stop_deadline = now + STOP_GRACE_S
                await w.send(wire.Stop())
            if stop_deadline is not None and now > stop_deadline:
                log.warning("tracker %r: the worker did not stop within %.0f s; killed",
                            self.name, STOP_GRACE_S)
                w.kill()
                return
            flight = self.in_flight
            if flight is not None and now - flight[0] > self.defn.timeout_s:
                ended[0] = f"a call did not return within timeout_s={self.defn.timeout_s:g}"
                w.kill()
                return
            if now >= next_rss:
                next_rss = now + 1.0
                self.rss_mb = w.rss_mb()
                if limit and self.rss_mb > limit * MEMORY_KILL_FACTOR:
                    ended[0] = (f"killed at {self.rss_mb:.0f} MB, over max_memory_mb={limit} "
                                f"x {MEMORY_KILL_FACTOR}")
                    w.kill()
                    return
                if limit and self.rss_mb > limit and ended[0] is None:
                    ended[0] = "memory"
                    self.last_error = (f"restarted at {self.rss_mb:.0f} MB, over "
                                       f"max_memory_mb={limit}")
                    log.warning("tracker %r: %s", self.name, self.last_error)
                    await w.send(wire.Stop())
