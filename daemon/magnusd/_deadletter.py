"""The dead-letter file: events a tracker will never get, one JSON object per line.

Two writers append to it: a worker, for events its backend refuses for good (`PermanentError`),
and the daemon, for an event a worker process died on while delivering it alone. Each line is
written with one `O_APPEND` write and fsynced before delivery moves past the event, so an event
is either delivered, or in this file, or still ahead of the cursor. Lines say what the event was
(`describe`), why it was given up (`error`) and when (`dead_lettered_at`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ._tracker import Event


def describe(e: Event, seq: int, index: int) -> str:
    """The event as a JSON object, with where it is in the journal (record seq, index)."""
    return json.dumps({"seq": seq, "index": index, "run_id": e.run_id, "tag": e.tag,
                       "step_name": e.step_name, "key": e.key, "value": e.value,
                       "step": e.step, "timestamp": e.timestamp, "rank": e.rank},
                      default=repr)


def lines(items: list[dict[str, Any]], error: str) -> str:
    """Dead-letter lines for `items`, each stamped with the error and the time."""
    now = time.time()
    return "".join(json.dumps({**item, "error": error, "dead_lettered_at": now}, default=repr)
                   + "\n" for item in items)


def write_dead_letters(path: str, text: str) -> None:
    """Append `text` (whole lines) to the dead-letter file at `path`, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        data = memoryview(text.encode())
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
