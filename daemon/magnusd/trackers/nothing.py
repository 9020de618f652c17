"""`do-nothing`: the default tracker; accepts every event and keeps none (the run log has them)."""

from __future__ import annotations

from typing import Any

from .._tracker import BaseExperimentTracker, Event


class DoNothingTracker(BaseExperimentTracker):
    service_name = "do-nothing"

    def log_metric(self, key: str, value: Any, step: int = 0) -> None:
        pass

    def log_batch(self, events: list[Event]) -> None:
        pass
