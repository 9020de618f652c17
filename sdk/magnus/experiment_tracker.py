"""magnus's import path of the tracker base class, so plugins written for magnus import
unchanged: `from magnus.experiment_tracker import BaseExperimentTracker`.

The classes live with the daemon, which runs trackers (`magnusd.BaseExperimentTracker`). The
SDK never imports the daemon's modules by name: the daemon's distribution registers them in the
`magnus.plugin_api` entry-point group, and this module (imported only by code that asks for it,
never by `import magnus`) loads them from there.
"""

from importlib.metadata import entry_points
from typing import Any

__all__ = ["BaseExperimentTracker", "Event", "RunInfo"]

_found = {ep.name: ep for ep in entry_points(group="magnus.plugin_api")}
_missing = [name for name in __all__ if name not in _found]
if _missing:
    raise ImportError("magnus.experiment_tracker needs the magnusd daemon package installed "
                      f"(entry points {', '.join(_missing)} of group magnus.plugin_api not found)")

BaseExperimentTracker: Any = _found["BaseExperimentTracker"].load()
Event: Any = _found["Event"].load()
RunInfo: Any = _found["RunInfo"].load()
