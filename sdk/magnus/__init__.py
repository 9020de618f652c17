"""magnus: track metrics from any Python process at about a microsecond a call.

    from magnus import track_this
    track_this(loss=0.25, step=3)

Events go to the local `magnusd` daemon, which journals them, keeps the run log and fans them
out to the configured experiment trackers. `import magnus` stays light: msgspec and everything
else is imported by the background flusher, off the caller's path.
"""

from ._api import flush as flush
from ._api import get_experiment_tracker_context as get_experiment_tracker_context
from ._api import step as step
from ._api import track_this as track_this

__all__ = ["flush", "get_experiment_tracker_context", "step", "track_this"]


def __getattr__(name: str) -> str:
    if name == "__version__":  # importlib.metadata costs ~10 ms: only on demand
        from importlib.metadata import version

        return version("magnusd")
    raise AttributeError(f"module 'magnus' has no attribute {name!r}")
