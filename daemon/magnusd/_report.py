"""The daemon's status (design §6), assembled from each service's own part, and the one-line
summary systemd shows (`STATUS=`).

Invariants: reading the status changes nothing (only the line keeps the previous event count,
for its events/s); the socket's `StatusReply` carries exactly the Struct's builtins, so
`magnusd status --json` prints what `msgspec.json.encode(status)` gives; `disk_full` and
`storage_errors` say why nothing is acknowledged while the daemon cannot write.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from ._status import AttemptsStatus, ConfigStatus, RunStoreStatus, Status

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._server import Daemon


class Report:
    """Reads a daemon's services; owns nothing of theirs."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self._rate = (time.monotonic(), 0)  # for the events/s of the line

    def status(self) -> Status:
        d = self.d
        s, store = d.settings, d.store
        ingress = d.ingress.stats()
        errors = self.storage_errors()
        return Status(
            pid=os.getpid(),
            uptime_s=round(time.time() - d.started, 3),
            events_total=ingress.events_total, clients=ingress.clients,
            messages_total=ingress.messages_total, refused_clients=ingress.refused_clients,
            config=ConfigStatus(s.config, d.trackers.loaded_at, d.trackers.error),
            trackers=d.trackers.status(),
            sources=d.sources.status(),
            socket=d.socket_path,
            socket_activated=d.activated,
            data_dir=s.data_dir,
            journal=msgspec.structs.replace(
                d.journal.stats(), max_bytes=s.journal_max_bytes, cap_hit=d.cap_hit,
                cap_deleted_segments=d.cap_deleted_segments),
            runlog=store.stats() if store else RunStoreStatus(0, 0, None),
            attempts=AttemptsStatus(len(store.attempts.open) if store else 0,
                                    d.reaper.closed_total if d.reaper else 0),
            duplicates_skipped=d.dedup.skipped,
            accept_errors=d.accept_errors,
            ui=d.viewer.status(),
            disk_full=any("No space left" in e or "quota" in e for e in errors),
            storage_errors=errors,
        )

    def body(self) -> dict[str, Any]:
        """The status as the socket's `StatusReply` carries it."""
        return msgspec.to_builtins(self.status())  # type: ignore[no-any-return]

    def storage_errors(self) -> list[str]:
        """Why the daemon cannot write, if it cannot."""
        d = self.d
        store = d.store
        errors = [e for e in (d.journal.error, store.error if store else None) if e]
        errors += [f"cannot save the cursor of tracker {n!r}"
                   for n in sorted(d.trackers.cursors.failing)]
        return errors

    def line(self) -> str:
        """`1,234 events/s, 2 client(s); main running (5 pending); config ok`."""
        d = self.d
        now, events = time.monotonic(), d.ingress.events_total
        t0, e0 = self._rate
        self._rate = (now, events)
        rate = (events - e0) / (now - t0) if now > t0 else 0.0
        trackers = ", ".join(f"{t.name} {t.state}" + (f" ({t.pending} pending)" if t.pending
                                                      else "")
                             for t in d.trackers.status()) or "no trackers"
        reload = "config error" if d.trackers.error else "config ok"
        storage = self.storage_errors()
        trouble = f"STORAGE: {storage[0]}; " if storage else ""
        return (f"{trouble}{rate:,.0f} events/s, {d.ingress.clients} client(s); {trackers}; "
                f"{reload}")
