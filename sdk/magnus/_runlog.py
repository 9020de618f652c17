"""The RunLog (design §7) as msgspec Structs: `msgspec.json.encode(run)` is, byte for byte, the
JSON `magnusd show RUN --json` prints (tests/test_contract_json.py holds it to golden files).

Invariants: field order is the JSON's key order, and every field is always written (null where
unknown, never omitted), so fields are added at the end or not at all. `State` is a StrEnum: a
state compares equal to, and encodes as, its string. `magnus._fold` builds these; the daemon
(`magnusd show`, the viewer) and `magnus.testing` read them, so the SDK and the daemon answer
alike. The SDK never imports the daemon: these live here so that both can use them.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

__all__ = ["Attempt", "RunLog", "State", "StepLog", "as_builtins"]


class State(enum.StrEnum):
    """The status of an attempt, a step or a run."""

    SUCCESS = "SUCCESS"
    FAIL = "FAIL"
    PROCESSING = "PROCESSING"

    @classmethod
    def of_end(cls, status: str) -> State:
        """The state a step end's `status` gives its attempt: SUCCESS when it names none, FAIL
        for any status the SDK never sends."""
        if not status or status == cls.SUCCESS:
            return cls.SUCCESS
        return cls.FAIL


class Attempt(msgspec.Struct):
    """One process running one step. `end_reason` is set only when the daemon closed the
    attempt for a process that died without ending it (the process's own end wins)."""

    start_time: str | None = None  # ISO 8601, UTC
    end_time: str | None = None
    status: State = State.PROCESSING
    host: str | None = None
    pid: int | None = None
    rank: int | None = None  # the process's rank in a distributed job, else None
    end_reason: str | None = None


class StepLog(msgspec.Struct):
    """One step: rank 0's (or a single process's) metrics in `user_defined_metrics` (`key`
    at step 0, `key_<step>` after), other ranks' under their rank in `rank_metrics`."""

    name: str
    status: State = State.PROCESSING
    user_defined_metrics: dict[str, Any] = msgspec.field(default_factory=dict)
    rank_metrics: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    attempts: list[Attempt] = msgspec.field(default_factory=list)


class RunLog(msgspec.Struct):
    """One run: its steps in the order they were first seen."""

    run_id: str
    tag: str
    status: State
    run_config: dict[str, Any]
    steps: dict[str, StepLog]


def as_builtins(run: RunLog) -> dict[str, Any]:
    """The RunLog as dicts, lists and strs: what `json.loads` of `magnusd show --json` gives
    (metric values keep their Python types: NaN stays a float)."""
    return msgspec.to_builtins(run)  # type: ignore[no-any-return]
