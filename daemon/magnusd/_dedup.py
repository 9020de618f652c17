"""The duplicate check: the last journaled seq of every client id.

A client resends what was not acknowledged; a message whose (client id, seq) is at or below the
last journaled one for that client is a resend and is dropped. The map is bounded
(`MAX_CLIENTS_REMEMBERED`, oldest forgotten first) and rebuilt at start from the retained
journal (`note`). `undo` restores it when a journal write fails, so the resend is taken.
"""

from __future__ import annotations

import msgspec

from magnus import _protocol as proto

MAX_CLIENTS_REMEMBERED = 100_000


class Dedup:
    """The last journaled seq per client id (bounded; oldest forgotten first)."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.skipped = 0

    def undo(self, previous: dict[str, int | None]) -> None:
        """Restore the last seqs as they were before `admit`s that were not journaled."""
        for client_id, seq in previous.items():
            if seq is None:
                self.last.pop(client_id, None)
            else:
                self.last[client_id] = seq

    def admit(self, client_id: str, seq: int) -> bool:
        last = self.last.get(client_id)
        if last is not None and seq <= last:
            self.skipped += 1
            return False
        if last is None and len(self.last) >= MAX_CLIENTS_REMEMBERED:
            del self.last[next(iter(self.last))]
        self.last[client_id] = seq
        return True

    def note(self, payload: bytes) -> None:
        """Rebuild from a journal record (recovery)."""
        try:
            msg = proto.decoder.decode(payload)
        except (msgspec.DecodeError, ValueError):
            return
        if type(msg) is proto.Batch or type(msg) is proto.StepMark:
            self.admit(msg.client_id, msg.seq)
