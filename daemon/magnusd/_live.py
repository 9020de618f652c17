"""The viewer's live stream (design §12): new points and step marks as Server-Sent Events,
read from the journal at each page's own cursor, like a tracker.

Invariants: nothing is copied for pages that are not open (each stream reads the journal from
where it was when it opened); decoding runs in a worker thread, never on the event loop; a
message holds at most `LIVE_BYTES` of journal and `LIVE_POINTS` points a series (a burst is
downsampled keeping each bucket's extremes, as the series API does); NaN and ±inf are sent as
null; a stream with nothing to send sends a keepalive comment every `SSE_KEEPALIVE_S`.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec

from magnus import _protocol as proto

from ._journal import Journal, Reader
from ._reader import Record
from ._series import collect
from ._series import downsample as _series_downsample

SSE_EVERY_S = 0.25
SSE_KEEPALIVE_S = 15.0
LIVE_BYTES = 1 << 20  # journal read per live message
LIVE_POINTS = 5000  # per series per message; more is downsampled (min and max kept)
_decoder = proto.journaled_decoder


class LiveStreams:
    """The open streams of one journal (`open` counts them, for `status`)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.open = 0

    async def events(self, run_id: str | None, tag: str | None) -> AsyncIterator[bytes]:
        """New points (and step marks) as journaled, batched every SSE_EVERY_S."""
        self.open += 1
        try:
            reader = Reader(self.journal.dir, self.journal.last_seq + 1, self.journal)
            yield b": live\n\n"
            last_beat = time.monotonic()
            while True:
                with anyio.move_on_after(SSE_KEEPALIVE_S):
                    await self.journal.wait_written(reader.next_seq - 1)
                data = await anyio.to_thread.run_sync(_message, reader, run_id, tag)
                if data:
                    yield data
                elif time.monotonic() - last_beat > SSE_KEEPALIVE_S:
                    yield b": keepalive\n\n"
                else:
                    continue
                last_beat = time.monotonic()
                await anyio.sleep(SSE_EVERY_S)
        finally:
            self.open -= 1


def _message(reader: Reader, run_id: str | None, tag: str | None) -> bytes | None:
    """The next SSE message (in a worker thread: decoding stays off the event loop)."""
    batch = reader.read(LIVE_BYTES)
    out = _points(batch, run_id, tag) if batch else None
    return b"data: " + msgspec.json.encode(out) + b"\n\n" if out else None


def _points(batch: list[Record], run_id: str | None,
            tag: str | None) -> dict[str, Any] | None:
    series: dict[tuple[str, str, str], dict[str, Any]] = {}
    marks = []
    for _, _, payload in batch:
        msg = _decoder.decode(payload)
        if (run_id and msg.run_id != run_id) or (tag and msg.tag != tag):
            continue
        if isinstance(msg, proto.StepMark):
            marks.append({"run_id": msg.run_id, "step_name": msg.step_name, "kind": msg.kind,
                          "status": msg.status})
            continue
        if not proto.for_trackers(msg):
            continue
        for key, (steps, ts, values) in collect(msg).items():
            s = series.setdefault((msg.run_id, msg.step_name, key),
                                  {"run_id": msg.run_id, "step_name": msg.step_name, "key": key,
                                   "steps": [], "times": [], "values": []})
            s["steps"] += steps
            s["times"] += ts
            s["values"] += [v if v == v and abs(v) != float("inf") else None for v in values]
    if not series and not marks:
        return None
    for s in series.values():  # a burst: keep each bucket's extremes, as the API does
        if len(s["steps"]) > LIVE_POINTS:
            s["steps"], s["times"], s["values"], _ = _series_downsample(
                array("q", s["steps"]), array("d", s["times"]),
                array("d", [math.nan if v is None else v for v in s["values"]]), LIVE_POINTS)
            s["values"] = [v if v == v else None for v in s["values"]]
            s["downsampled"] = True
    return {"series": list(series.values()), "marks": marks}
