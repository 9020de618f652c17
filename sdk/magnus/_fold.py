"""Folding run messages into the RunLog (design §5, §7): one place for the run log's rules.

The daemon folds its run files and journal with it (`magnusd show`), and `magnus.testing`
folds what a test captured in memory, so both answer exactly alike. The result is a
`magnus._runlog.RunLog` Struct.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from . import _protocol as proto
from ._runlog import Attempt, RunLog, State, StepLog


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


class RunFold:
    """Folds run messages, in journal order, into a `RunLog`.

    Attempts are matched by their id (older records without one: by step and client id). An
    end the daemon wrote for a dead process closes an open attempt only; the process's own end
    wins whenever it arrives. Metrics of a rank other than 0 go to the step's `rank_metrics`.
    """

    def __init__(self, run_id: str, step0_only: bool = False) -> None:
        self.run_id = run_id
        self.step0_only = step0_only  # keep only the metrics tracked at step 0
        self.tag = ""
        self.run_config: dict[str, Any] = {"experiment_tracker": []}
        self.steps: dict[str, StepLog] = {}
        self.attempts: dict[tuple[str, str], Attempt] = {}  # (step, attempt id) → it
        self.updated = 0.0

    def step(self, name: str) -> StepLog:
        st = self.steps.get(name)
        if st is None:
            st = self.steps[name] = StepLog(name)
        return st

    def add(self, msg: Any) -> None:
        if msg.tag:
            self.tag = msg.tag
        st = self.step(msg.step_name)
        if type(msg) is proto.Batch:
            if msg.rank:
                udm = st.rank_metrics.setdefault(str(msg.rank), {})
            else:
                udm = st.user_defined_metrics
            for step, ts, metrics in msg.rows():
                if step == 0:
                    udm.update(metrics)
                elif not self.step0_only:
                    for k, v in metrics.items():
                        udm[f"{k}_{step}"] = v
                self.updated = max(self.updated, ts)
        elif type(msg) is proto.StepMark:
            self.mark(st, msg)
        elif getattr(msg, "run_config", None):  # the daemon's index records
            self.run_config = dict(msg.run_config)

    def mark(self, st: StepLog, m: proto.StepMark) -> None:
        key = (m.step_name, m.attempt or m.client_id)
        by_daemon = m.client_id.split("@", 1)[0] == proto.DAEMON_CLIENT_ID
        att = self.attempts.get(key)
        if att is None:
            if by_daemon:
                return  # nothing of that attempt here: nothing to close
            att = self.attempts[key] = Attempt(host=m.host or None, pid=m.pid or None,
                                               rank=m.rank)
            st.attempts.append(att)
        self.updated = max(self.updated, m.ts)
        if m.kind == "start":
            if att.start_time is None:  # a start seen again (a resend) changes nothing
                att.start_time = iso(m.ts)
                att.host, att.pid, att.rank = m.host or None, m.pid or None, m.rank
            return
        if by_daemon and att.end_time is not None:
            return  # the process ended it itself
        if not by_daemon and att.end_time is not None and att.end_reason is None:
            return  # already ended by the process
        att.end_time = iso(m.ts)
        att.status = State.of_end(m.status)
        att.end_reason = m.end_reason if by_daemon else None

    def result(self) -> RunLog:
        for st in self.steps.values():
            states = {a.status for a in st.attempts}
            # A step with no attempt was only written by processes working inside another
            # process's attempt (forked children of a process that never tracked): none of
            # them is running a step of its own, so it is not left PROCESSING for ever.
            st.status = (State.FAIL if State.FAIL in states else
                         State.PROCESSING if State.PROCESSING in states else State.SUCCESS)
        states = {st.status for st in self.steps.values()}
        status = (State.FAIL if State.FAIL in states else
                  State.PROCESSING if State.PROCESSING in states or not states else
                  State.SUCCESS)
        return RunLog(self.run_id, self.tag, status, self.run_config, self.steps)
