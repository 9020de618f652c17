"""Buffer entries → numbered wire frames: pure apart from the counters it owns.

An `Encoder` walks the call-site buffer's entries (`_steps`: step, time, metrics triples and
`Mark`s) in order, keeping the identity in effect at the walk's head, and returns `Frame`s whose
`seq` run on from the last one it numbered under the current client id. Records are cut into
`Batch`es of at most `BATCH_RECORDS`; a batch where every call tracked the same single key takes
the columnar form. An implicit step's first record (or environment metrics, or a claim before a
fork) opens this process's attempt there first (`Steps.implicit`). A batch over the frame limit
is halved until it fits; a single record that cannot be encoded is counted in `dropped` and
reported through `warn` — values were validated at the call site, so that is a bug, not input.

Called by one thread at a time (the flusher's encode lock); never does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any, Literal

from . import _protocol as proto
from ._identity import host_from, pid_namespace, process_start_ticks, rank_from
from ._limits import MAX_FRAME
from ._steps import Ctx, Mark, Steps

BATCH_RECORDS = 2048


class Proc:
    """This process as attempts name it (made off the caller's path, again after fork)."""

    __slots__ = ("host", "pid", "pid_ns", "pid_start", "rank")

    def __init__(self, environ: Any, pid: int) -> None:
        self.host = host_from(environ)
        self.pid = pid
        self.pid_start = process_start_ticks()
        self.pid_ns = pid_namespace()
        self.rank = rank_from(environ)


class Frame:
    """One encoded message: its `seq`, its bytes (length prefix included), and how many metric
    records it carries (what counts towards the in-memory bound)."""

    __slots__ = ("data", "records", "seq")

    def __init__(self, seq: int, data: bytes, records: int) -> None:
        self.seq, self.data, self.records = seq, data, records


class Encoder:
    def __init__(self, steps: Steps, proc: Proc, client_id: str,
                 warn: Callable[[str], None]) -> None:
        self.steps, self.proc, self.client_id, self.warn = steps, proc, client_id, warn
        self.seq = 0  # last seq numbered
        self.head: Ctx | None = None  # identity in effect at the next entry
        self.marks_seen = 0
        self.dropped = 0

    def encode(self, entries: list[Any], marks_added: int) -> list[Frame]:
        """Frames for `entries`, a snapshot taken from the buffer's head; `marks_added` is
        `Steps.marks_added` read *after* the snapshot (so every mark in it is counted)."""
        out: list[Frame] = []
        ctx = self.head or self.steps.current()
        if marks_added == self.marks_seen:
            self._records(ctx, entries, out)
        else:
            start = i = 0
            n = len(entries)
            while i < n:
                e = entries[i]
                if type(e) is Mark:
                    self.marks_seen += 1
                    self._records(ctx, entries[start:i], out)
                    self._mark(e, out)
                    ctx = e.after
                    i = start = i + 1
                else:
                    i += 3
            self._records(ctx, entries[start:], out)
        self.head = ctx
        return out

    def _records(self, ctx: Ctx, flat: list[Any], out: list[Frame]) -> None:
        if not flat:
            return
        self._claim_implicit(ctx, out)
        step = 3 * BATCH_RECORDS
        for i in range(0, len(flat), step):
            end = i + step
            self._batch(ctx, flat[i:end:3], flat[i + 1 : end : 3], flat[i + 2 : end : 3], out)

    def _claim_implicit(self, ctx: Ctx, out: list[Frame]) -> None:
        """Open this process's attempt of an implicit step on its first record there."""
        key = (ctx.run_id, ctx.step_name)
        implicit = self.steps.implicit
        if ctx.explicit or key in implicit:
            return
        if self.steps.child:
            implicit[key] = ""  # inside the parent's attempt
            return
        own = Ctx(ctx.run_id, ctx.tag, ctx.step_name, False, self.steps.new_attempt())
        implicit[key] = own.attempt
        out.append(self._mark_frame(Mark("start", own, ctx)))

    def _batch(self, ctx: Ctx, steps: list[int], ts: list[float], metrics: list[dict[str, Any]],
               out: list[Frame]) -> None:
        seq = self.seq + 1
        msg = self._columnar(ctx, seq, steps, ts, metrics)
        if msg is None:
            msg = proto.Batch(self.client_id, seq, ctx.run_id, ctx.tag, ctx.step_name,
                              list(zip(steps, ts, metrics, strict=True)), True,
                              rank=self.proc.rank)
        try:
            payload = proto.encoder.encode(msg)
        except (TypeError, ValueError, OverflowError) as e:  # validated at the call site
            self.warn(f"could not encode {len(steps)} records: {e}")
            self.dropped += len(steps)
            return
        if len(payload) > MAX_FRAME:
            if len(steps) == 1:
                self.warn("a record exceeds the maximum frame size and was dropped")
                self.dropped += 1
                return
            h = len(steps) // 2
            self._batch(ctx, steps[:h], ts[:h], metrics[:h], out)
            self._batch(ctx, steps[h:], ts[h:], metrics[h:], out)
            return
        self.seq = seq
        out.append(Frame(seq, len(payload).to_bytes(4, "big") + payload, len(steps)))

    def _columnar(self, ctx: Ctx, seq: int, steps: list[int], ts: list[float],
                  metrics: list[dict[str, Any]]) -> proto.Batch | None:
        """The columnar form when every call tracked the same single key, else None."""
        first = metrics[0]
        if len(first) != 1 or set(map(len, metrics)) != {1}:
            return None
        key = next(iter(first))
        try:
            values = list(map(itemgetter(key), metrics))
        except KeyError:
            return None
        return proto.Batch(self.client_id, seq, ctx.run_id, ctx.tag, ctx.step_name, [], True,
                           [key], steps, ts, values, self.proc.rank)

    def _mark(self, m: Mark, out: list[Frame]) -> None:
        if m.kind in ("env", "claim"):
            self._claim_implicit(m.ctx, out)  # environment metrics need an attempt too
        if m.kind != "claim":
            out.append(self._mark_frame(m))

    def _mark_frame(self, m: Mark) -> Frame:
        c, p = m.ctx, self.proc
        self.seq += 1
        msg: proto.Batch | proto.StepMark
        if m.kind == "env":
            msg = proto.Batch(self.client_id, self.seq, c.run_id, c.tag, c.step_name,
                              [(0, m.ts, m.metrics or {})], False, rank=p.rank)
        else:
            kind: Literal["start", "end"] = "start" if m.kind == "start" else "end"
            msg = proto.StepMark(self.client_id, self.seq, c.run_id, c.tag, c.step_name, kind,
                                 m.ts, m.status, c.attempt, p.host, p.pid, p.pid_start, p.rank,
                                 pid_ns=p.pid_ns)
        return Frame(self.seq, proto.frame(msg), 1)
