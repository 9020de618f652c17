"""`magnus.testing`: check what your code tracks, in your own tests, with no daemon.

    from magnus.testing import capture

    def test_training_logs_its_loss():
        with capture() as tracked:
            train(epochs=3)                      # calls track_this / step as usual
        assert tracked.metrics("train")["loss_3"] < 0.5
        assert tracked.run()["steps"]["train"]["status"] == "SUCCESS"

Inside the block every message the SDK would send to the daemon is kept in memory instead
(what was tracked before the block and not yet delivered too) and folded with the run log's own
rules (`magnus._fold`, the code `magnusd show` uses): `step` names, `key_<step>` keys, later
values winning, attempts and statuses, ranks, environment metrics. `events()` lists what
trackers would receive. The implicit step of the process (`MAGNUS_STEP_NAME`, else "main") is
still open while the process runs, so its status reads PROCESSING; explicit `step()` blocks end.
Run id, tag and step name are read from the environment again at the start and the end of the
block (a test may set `MAGNUS_RUN_ID`). One capture at a time per process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from . import _client
from ._transport import MemoryTransport

__all__ = ["Captured", "capture"]


class Captured:
    """What was tracked inside `capture()`."""

    def __init__(self) -> None:
        self.transport = MemoryTransport()  # where the SDK's frames go while captured
        self.run_id = ""  # the run this process tracks into while captured

    @property
    def messages(self) -> list[Any]:
        """The Batch and StepMark messages, in order."""
        from . import _protocol as proto

        return [proto.decoder.decode(f[4:]) for f in self.transport.frames]

    @property
    def runs(self) -> dict[str, dict[str, Any]]:
        """Each run's RunLog as plain data, as `json.loads` reads `magnusd show RUN --json`."""
        from ._fold import RunFold
        from ._runlog import as_builtins

        folds: dict[str, RunFold] = {}
        for m in self.messages:
            fold = folds.get(m.run_id)
            if fold is None:
                fold = folds[m.run_id] = RunFold(m.run_id)
            fold.add(m)
        return {run_id: as_builtins(f.result()) for run_id, f in folds.items()}

    def run(self, run_id: str | None = None) -> dict[str, Any]:
        """One run's RunLog: `run_id`, else the run this process tracked into (its
        `MAGNUS_RUN_ID`, or the id it made)."""
        runs = self.runs
        got = runs.get(run_id or self.run_id)
        if got is None:
            raise LookupError(f"no run {run_id or self.run_id!r} was tracked "
                              f"(tracked: {', '.join(runs) or 'none'})")
        return got

    def metrics(self, step: str = "main", run_id: str | None = None) -> dict[str, Any]:
        """A step's `user_defined_metrics`."""
        return dict(self.run(run_id)["steps"][step]["user_defined_metrics"])

    def events(self) -> list[dict[str, Any]]:
        """What trackers would receive: one dict per metric point, in order."""
        from . import _protocol as proto

        out = []
        for m in self.messages:
            if type(m) is proto.Batch and proto.for_trackers(m):
                for step, ts, metrics in m.rows():
                    for key, value in metrics.items():
                        out.append({"run_id": m.run_id, "tag": m.tag, "step_name": m.step_name,
                                    "key": key, "value": value, "step": step,
                                    "timestamp": ts, "rank": m.rank})
        return out


@contextlib.contextmanager
def capture() -> Iterator[Captured]:
    """Keep everything tracked in this block in memory (see the module's docstring)."""
    client = _client.CLIENT
    client.start()
    captured = Captured()
    previous, client.transport = client.transport, captured.transport
    client.forget_identity()  # a test may have changed MAGNUS_RUN_ID and friends
    captured.run_id = client.current().run_id
    try:
        yield captured
    finally:
        client.flush(10)
        client.transport = previous
        client.forget_identity()
