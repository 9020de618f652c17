"""The decision of a tracker hot swap (design §8), apart from its doing.

`plan_swap` compares the running trackers with the ones a config wants and says, per wanted
tracker in the config's order, what becomes of it, and which running ones go:

- `KEEP`: same name, same definition, and constructed: its runner is left alone;
- `REPLACE`: same name, but the definition changed (or it never got constructed): a new instance
  takes over at the old one's cursor;
- `START`: a name not running: it starts at its stored cursor, else at the journal head (or
  replays the retained journal with `backfill: true`);
- `REMOVE`: running, no longer wanted: it stops after the op in hand and is retired.

A renamed tracker is a `REMOVE` of the old name and a `START` of the new one. The function is
pure (no I/O, no clock), so `Trackers` uses it both to choose which workers to construct and to
swap, and tests check it in-process.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

from ._config import TrackerDef


class SwapOp(enum.StrEnum):
    KEEP = "keep"
    REPLACE = "replace"
    START = "start"
    REMOVE = "remove"


class Running(Protocol):
    """What the plan needs of a running tracker (a `_workers.Runner`)."""

    @property
    def defn(self) -> TrackerDef: ...

    @property
    def constructed(self) -> bool: ...


class SwapStep(NamedTuple):
    op: SwapOp  # KEEP, REPLACE or START
    defn: TrackerDef  # the wanted definition


class SwapPlan(NamedTuple):
    steps: tuple[SwapStep, ...]  # one per wanted tracker, in the config's order
    remove: tuple[str, ...]  # running names no longer wanted, in their running order

    def names(self, op: SwapOp) -> list[str]:
        if op is SwapOp.REMOVE:
            return list(self.remove)
        return [s.defn.key for s in self.steps if s.op is op]


def plan_swap(running: Mapping[str, Running], wanted: Sequence[TrackerDef]) -> SwapPlan:
    """What a reload to `wanted` does to the `running` trackers (keyed by name)."""
    steps = []
    matched: set[str] = set()
    for d in wanted:
        old = running.get(d.key) if d.key not in matched else None
        if old is None:
            op = SwapOp.START
        else:
            matched.add(d.key)
            op = SwapOp.KEEP if old.defn == d and old.constructed else SwapOp.REPLACE
        steps.append(SwapStep(op, d))
    return SwapPlan(tuple(steps), tuple(n for n in running if n not in matched))
