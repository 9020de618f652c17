"""The client side of `get_experiment_tracker_context()`, without the daemon's modules.

The daemon says which tracker is active (type, name, config, and the facts its
`context_state` gave); here the tracker's plugin class is loaded from the `experiment_tracker`
entry-point group, built with its config decoded into its `Config` struct, and asked for its
`client_context(run, state)` — in the user's process, where the client belongs.
"""

from __future__ import annotations

from typing import Any


class Run:
    """The magnus identity the client context is for (what `magnusd.RunInfo` carries)."""

    __slots__ = ("run_id", "step_name", "tag")

    def __init__(self, run_id: str, tag: str, step_name: str) -> None:
        self.run_id, self.tag, self.step_name = run_id, tag, step_name


def client_context(tracker_type: str, config: dict[str, Any], run: Run,
                   state: dict[str, Any]) -> Any:
    """The active tracker's own client context manager for `run`."""
    from importlib.metadata import entry_points

    import msgspec

    eps = {ep.name: ep for ep in entry_points(group="experiment_tracker")}
    if tracker_type not in eps:
        raise LookupError(f"tracker type {tracker_type!r} is not installed in this "
                          f"environment (installed: {', '.join(sorted(eps)) or 'none'})")
    cls = eps[tracker_type].load()
    tracker = cls(msgspec.convert(config, cls.Config))
    return tracker.client_context(run, state)
