"""Crash isolation for one tracker: which op its workers keep dying on, and which events of it
are dead-lettered.

Deaths are counted per op (by the op's first record). After `ISOLATE_AFTER` deaths on one op
the daemon asks the next worker to deliver that op one event at a time (`isolate`); a worker
that then dies during a call on a single event names it, and that event is written to the
dead-letter file and skipped (`skip`) — never delivered, never lost silently. Any delivered op
clears the counts; a cursor past the isolated op ends the isolation. The state lives in the
daemon (workers die), for as long as the runner lives.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

from . import _deadletter
from . import _workerwire as wire

log = logging.getLogger("magnusd.workers")
ISOLATE_AFTER = 5  # deaths on one op before it is delivered event by event


class Isolation:
    def __init__(self, name: str, dead_letter: str) -> None:
        self.name = name  # the tracker's, for the log
        self.dead_letter = dead_letter  # the tracker's dead-letter file
        self.isolate = 0  # first seq of the op delivered event by event (0: none)
        self.skip: list[tuple[int, int]] = []  # (seq, index) of events dead-lettered here
        self._deaths: Counter[int] = Counter()

    def died(self, begin: wire.Begin, what: str) -> bool:
        """A worker died during the call `begin` announced; True when that dead-lettered an
        event (the call was on one event of the isolated op)."""
        if begin.index >= 0 and begin.first_seq == self.isolate:
            self.skip.append((begin.seq, begin.index))
            text = _deadletter.lines([json.loads(begin.event)], what)
            _deadletter.write_dead_letters(self.dead_letter, text)
            log.error("tracker %r: dead-lettered the event at seq %d index %d: %s", self.name,
                      begin.seq, begin.index, what)
            return True
        self._deaths[begin.first_seq] += 1
        if self._deaths[begin.first_seq] >= ISOLATE_AFTER and self.isolate != begin.first_seq:
            self.isolate = begin.first_seq
            log.error("tracker %r: the worker died %d times on the records from seq %d; "
                      "delivering them one event at a time", self.name, ISOLATE_AFTER,
                      begin.first_seq)
        return False

    def delivered(self, cursor_seq: int) -> None:
        """An op completed records up to `cursor_seq`."""
        self._deaths.clear()
        if self.isolate and cursor_seq >= self.isolate:
            self.isolate, self.skip = 0, []
