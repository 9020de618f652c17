"""Delivery inside a worker process: calling the tracker plugin until an op is delivered.

A failing call (any exception) is retried with exponential backoff and jitter, the daemon
hearing `Health("failing")` and, once a call works again, `Health("running")`; a stop request
during the backoff ends the retrying (`Stopped`: the op stays undelivered, the daemon's cursor
before it). `PermanentError` is never retried: the op is split in halves until the events (or
records, or the step end) the backend refuses are alone, and those are written to the dead-letter
file; the rest is delivered. Every call is announced with `Begin` first, so the daemon can time
it and, should the process die, knows which op — in an isolated op, which event — it died on.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _deadletter
from . import _workerwire as wire
from ._fanout import Op, OpKind
from ._tracker import BaseExperimentTracker, Event, PermanentError

log = logging.getLogger("magnusd.worker")
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0
MAX_STARTED_RUNS = 10_000  # runs remembered as started (on_run_start called)


class Stopped(Exception):
    """The daemon asked to stop while a call kept failing: the op stays undelivered."""


@dataclass(frozen=True)
class Delivered:
    """What one op came to: events the tracker took, and events dead-lettered here."""

    delivered: int
    dead: int


class Delivery:
    """Delivers ops to one constructed tracker, one call at a time."""

    def __init__(self, tracker: BaseExperimentTracker, send: Callable[[Any], None],
                 stop_within: Callable[[float], bool], dead_letter: str) -> None:
        self.tracker = tracker
        self.send = send  # a frame to the daemon
        self.stop_within = stop_within  # waits up to the seconds given; True: stop asked
        self.dead_letter = dead_letter
        self.failing = False
        self.started_runs: dict[str, None] = {}

    def call(self, fn: Any, begin: wire.Begin, *args: Any) -> None:
        """Call the plugin until it succeeds; PermanentError goes to the caller."""
        backoff = BACKOFF_MIN
        while True:
            self.send(begin)
            try:
                fn(*args)
            except PermanentError:
                raise
            except Exception as e:  # the tracker's failure, whatever it is
                error = f"{type(e).__name__}: {e}"[:500]
                if not self.failing:
                    log.warning("failing: %s (retrying with backoff)", error)
                self.failing = True
                self.send(wire.Health("failing", error))
                if self.stop_within(backoff * random.uniform(0.5, 1.5)):
                    raise Stopped from None
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if self.failing:
                self.failing = False
                log.info("recovered")
                self.send(wire.Health("running"))
            return

    def deliver(self, op: Op, isolate: bool, skip: set[tuple[int, int]]) -> Delivered:
        """Deliver one op; `isolate`: one event per call; events in `skip` are left out (the
        daemon dead-lettered them: a worker died on each)."""
        tracker = self.tracker
        if op.kind is OpKind.RECORDS:
            return Delivered(self._forward(op.records, op.first), 0)
        if op.kind is OpKind.STEP_END:
            assert op.run is not None
            try:
                self.call(tracker.on_step_end, wire.Begin(op.first, 0), op.run, op.status)
            except PermanentError as e:
                self._dead_letter([{"step_end": op.run.step_name, "run_id": op.run.run_id,
                                    "status": op.status, "seq": op.seq}], e)
            return Delivered(0, 0)
        pairs = [(ev, o) for ev, o in zip(op.events, op.origin, strict=True) if o not in skip]
        if isolate:
            dead = 0
            for ev, (seq, index) in pairs:
                begin = wire.Begin(op.first, 1, index, seq, _deadletter.describe(ev, seq, index))
                dead += self._split([(ev, (seq, index))], begin)
        else:
            dead = self._split(pairs, wire.Begin(op.first, len(pairs))) if pairs else 0
        return Delivered(len(pairs) - dead, dead)

    def _forward(self, recs: list[tuple[int, bytes]], first: int) -> int:
        """Forward raw records; a record the far end refuses for good is dead-lettered."""
        try:
            self.call(self.tracker.log_records, wire.Begin(first, len(recs)), recs)
            return len(recs)
        except PermanentError as e:
            if len(recs) == 1:
                self._dead_letter([{"seq": recs[0][0], "bytes": len(recs[0][1])}], e)
                return 0
            half = len(recs) // 2
            return self._forward(recs[:half], first) + self._forward(recs[half:], first)

    def _split(self, pairs: list[tuple[Event, tuple[int, int]]], begin: wire.Begin) -> int:
        """Deliver; on PermanentError halve until the refused events are alone."""
        try:
            self.call(self._log, begin, [e for e, _ in pairs])
            return 0
        except PermanentError as e:
            if len(pairs) == 1:
                ev, (seq, index) = pairs[0]
                self._dead_letter([json.loads(_deadletter.describe(ev, seq, index))], e)
                return 1
            half = len(pairs) // 2
            return (self._split(pairs[:half], wire.Begin(begin.first_seq, half))
                    + self._split(pairs[half:], wire.Begin(begin.first_seq, len(pairs) - half)))

    def _log(self, events: list[Event]) -> None:
        tracker = self.tracker
        for e in events:
            if e.run_id not in self.started_runs:
                tracker.on_run_start(e.run)
                if len(self.started_runs) >= MAX_STARTED_RUNS:
                    del self.started_runs[next(iter(self.started_runs))]
                self.started_runs[e.run_id] = None
        tracker.log_batch(events)

    def _dead_letter(self, items: list[dict[str, Any]], error: BaseException) -> None:
        text = _deadletter.lines(items, f"{type(error).__name__}: {error}"[:1000])
        _deadletter.write_dead_letters(self.dead_letter, text)
        log.error("dead-lettered %d event(s) the backend refuses for good: %s", len(items),
                  error)
