"""Supervision of tracker workers: one process per tracker; the daemon owns the cursor.

A `Runner` spawns its tracker's worker (`_workerproc.py`; the process runs `_worker.py`), sends
it the cursor, forwards journal growth, and moves and persists the cursor on every `Done`.
Nothing the worker does can stop the daemon:

- a worker that dies (a signal, `os._exit`, the OOM killer) is restarted with exponential
  backoff and resumes at the cursor: at most the op in flight is delivered again;
- a call running longer than `timeout_s` gets the worker killed and restarted, the op retried;
- a worker over `max_memory_mb` is asked to exit after the op in hand and restarted (killed if
  it reaches 1.5 times the bound first);
- an op that workers died on `ISOLATE_AFTER` times is delivered one event at a time, and an
  event a worker dies on is written to the dead-letter file and skipped (`_isolation.py`);
- stop (reload, removal, shutdown) asks the worker to finish the op in hand, and kills it after
  `STOP_GRACE_S` if it does not.

Hand-over on reload: a replacement waits for its predecessor (`after=`) to finish, then takes
its cursor, so every event reaches exactly one of them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from . import _workerwire as wire
from ._config import TrackerDef
from ._fanout import Cursor, CursorStore
from ._isolation import Isolation
from ._journal import Journal
from ._status import TrackerState, TrackerStatus
from ._tracker import RunInfo
from ._workerproc import Worker, describe_exit, spawn

log = logging.getLogger("magnusd.workers")
RESTART_MIN_S, RESTART_MAX_S = 0.5, 10.0
STOP_GRACE_S = 5.0  # after Stop: then the worker is killed (MLflow takes ~1.5 s to exit)
MEMORY_KILL_FACTOR = 1.5
WATCH_EVERY_S = 0.2


@dataclass(frozen=True)
class InFlight:
    """A call the worker announced (`Begin`) and has not finished."""

    since: float  # time.monotonic() at the Begin
    begin: wire.Begin


@dataclass
class _Life:
    """One worker process's life, as the supervisor saw it."""

    progressed: bool = False  # an op was delivered
    ended: str | None = None  # why the daemon ended it: None | a reason | "memory"


@dataclass
class _Ask:
    """A context_state question waiting for its Answer."""

    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: wire.Answer | None = None


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
        self.state: TrackerState = (TrackerState.DISABLED if worker is None
                                    else TrackerState.STARTING)
        self.delivered = 0
        self.errors = 0
        self.dead_lettered = 0
        self.restarts = 0
        self.last_error: str | None = error
        self.after = after
        self.in_flight: InFlight | None = None
        self.rss_mb = 0.0
        self.isolation = Isolation(self.name, spec.dead_letter)
        self._stop = anyio.Event()
        self.done = anyio.Event()
        self._asks: dict[int, _Ask] = {}
        self._ask_id = 0

    def status(self) -> TrackerStatus:
        flight = self.in_flight
        return TrackerStatus(
            name=self.name, type=self.defn.type, state=self.state,
            pending=max(self.journal.events - self.cursor.mark, 0),
            delivered=self.delivered, errors=self.errors,
            last_error=self.last_error, cursor=self.cursor.seq,
            caught_up=self.cursor.seq >= self.journal.last_seq,
            restarts=self.restarts, dead_lettered=self.dead_lettered,
            in_flight_s=round(time.monotonic() - flight.since, 3) if flight else None,
            pid=self.worker.pid if self.worker else None,
            rss_mb=round(self.rss_mb, 1) if self.worker else None)

    def stuck(self, seconds: float) -> bool:
        return self.in_flight is not None and time.monotonic() - self.in_flight.since > seconds

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
        slot = self._asks[key] = _Ask()
        try:
            await w.send(wire.Ask(key, run.run_id, run.tag, run.step_name))
            with anyio.fail_after(30):
                await slot.answered.wait()
        finally:
            self._asks.pop(key, None)
        answer = slot.answer
        assert answer is not None
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
            if self.state is not TrackerState.DISABLED:
                self.state = TrackerState.STOPPED
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
                spawned = await spawn(self.spec)
                self.worker = spawned.worker
                if self.worker is None:
                    self.last_error = spawned.error
                    log.error("tracker %r: %s; retrying in %.1f s", self.name, spawned.error,
                              backoff)
                    backoff = min(backoff * 2, RESTART_MAX_S)
                    continue
            worker = self.worker
            self.state = TrackerState.RUNNING
            life = await self._drive(worker)
            reason = life.ended
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
                what += f" during a call on the records from seq {flight.begin.first_seq}"
                if self.isolation.died(flight.begin, what):
                    self.dead_lettered += 1
            self.last_error = what
            self.state = TrackerState.RESTARTING
            backoff = (RESTART_MIN_S if life.progressed or self.isolation.isolate
                       else min(max(backoff, RESTART_MIN_S) * 2, RESTART_MAX_S))
            log.error("tracker %r: %s; restarting in %.1f s (restart %d)", self.name, what,
                      backoff, self.restarts)

    async def _drive(self, w: Worker) -> _Life:
        """Run one worker life, until its stdout closes."""
        life = _Life()
        iso = self.isolation
        await w.send(wire.Go(self.cursor.seq, self.cursor.mark, iso.isolate, iso.skip))
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._tails, w)
            tg.start_soon(self._watch, w, life)
            while (msg := await w.receive()) is not None:
                if isinstance(msg, wire.Begin):
                    self.in_flight = InFlight(time.monotonic(), msg)
                elif isinstance(msg, wire.Done):
                    self.in_flight = None
                    self.delivered += msg.delivered
                    self.dead_lettered += msg.dead
                    if msg.seq:
                        self.cursor = Cursor(msg.seq, msg.mark)
                        self.cursors.save(self.name, self.cursor)
                        iso.delivered(self.cursor.seq)
                    life.progressed = True
                elif isinstance(msg, wire.Health):
                    state = TrackerState(msg.state)  # a string on the wire
                    if state is TrackerState.FAILING:
                        self.errors += 1
                        self.last_error = msg.error
                        self.in_flight = None  # backing off, not hung
                    self.state = state
                elif isinstance(msg, wire.Answer):
                    slot = self._asks.get(msg.id)
                    if slot is not None:
                        slot.answer = msg
                        slot.answered.set()
            tg.cancel_scope.cancel()
        return life

    async def _tails(self, w: Worker) -> None:
        sent = -1
        while True:
            if self.journal.last_seq > sent:
                sent = self.journal.last_seq
                if not await w.send(wire.Tail(sent)):
                    return
            await self.journal.wait_written(sent)
            await anyio.sleep(0.005)  # at most ~200 wake-ups a second

    async def _watch(self, w: Worker, life: _Life) -> None:
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
            if flight is not None and now - flight.since > self.defn.timeout_s:
                life.ended = f"a call did not return within timeout_s={self.defn.timeout_s:g}"
                w.kill()
                return
            if now >= next_rss:
                next_rss = now + 1.0
                self.rss_mb = w.rss_mb()
                if limit and self.rss_mb > limit * MEMORY_KILL_FACTOR:
                    life.ended = (f"killed at {self.rss_mb:.0f} MB, over max_memory_mb={limit} "
                                f"x {MEMORY_KILL_FACTOR}")
                    w.kill()
                    return
                if limit and self.rss_mb > limit and life.ended is None:
                    life.ended = "memory"
                    self.last_error = (f"restarted at {self.rss_mb:.0f} MB, over "
                                       f"max_memory_mb={limit}")
                    log.warning("tracker %r: %s", self.name, self.last_error)
                    await w.send(wire.Stop())
