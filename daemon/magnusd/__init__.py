"""magnusd: the magnus tracking daemon — journal, run logs and tracker fan-out.

The public surface is the tracker plugin API; everything else is the daemon's own.
"""

from ._tracker import BaseExperimentTracker as BaseExperimentTracker
from ._tracker import Event as Event
from ._tracker import PermanentError as PermanentError
from ._tracker import RunInfo as RunInfo

__all__ = ["BaseExperimentTracker", "Event", "PermanentError", "RunInfo"]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version

        return version("magnusd")
    raise AttributeError(f"module 'magnusd' has no attribute {name!r}")
