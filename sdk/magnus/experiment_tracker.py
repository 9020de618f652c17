"""magnus's import path of the tracker base class, so plugins written for magnus import
unchanged: `from magnus.experiment_tracker import BaseExperimentTracker`.

The class lives with the daemon, which runs trackers (`magnusd.BaseExperimentTracker`); this
module is imported only by code that asks for it, never by `import magnus`.
"""

from magnusd import BaseExperimentTracker as BaseExperimentTracker
from magnusd import Event as Event
from magnusd import RunInfo as RunInfo

__all__ = ["BaseExperimentTracker", "Event", "RunInfo"]
