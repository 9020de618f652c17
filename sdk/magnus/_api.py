"""The public calls: `track_this`, `flush`, `step`, `get_experiment_tracker_context`."""

import os
import time

from ._client import CLIENT as _CLIENT
from ._steps import MAX_BUFFER as _MAX_BUFFER
from ._steps import Ctx, Mark
from ._steps import buffer as _buffer
from ._validate import INT_MAX, INT_MIN, check_step, check_value

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and contextlib cost milliseconds: never on `import magnus`
    from collections.abc import Callable
    from types import TracebackType
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])

_extend = _buffer.extend
_time = time.time
_SCALAR = frozenset({float, bool, type(None)})
_STEPS = _CLIENT.steps


def track_this(step: int = 0, **metrics: "Any") -> None:
    """Record each keyword as a metric of the current run and step.

    Values must be JSON-friendly; a bad value, key or step raises TypeError/ValueError here and
    records nothing of the call. Never blocks on I/O: the daemon is reached by a background
    thread.
    """
    if type(step) is not int or step < 0:
        check_step(step)
    for k, v in metrics.items():
        if type(v) in _SCALAR:
            if 0 < len(k) <= 250:
                continue
        elif type(v) is int and INT_MIN <= v <= INT_MAX and 0 < len(k) <= 250:
            continue
        metrics[k] = check_value(k, v)  # str, containers, errors
    if _CLIENT.flusher is None:
        _CLIENT.start()
    if len(_buffer) < _MAX_BUFFER:
        _extend((step, _time(), metrics))  # three entries, no tuple kept: see _steps
    else:
        _CLIENT.dropped += 1


def flush(timeout: float | None = 5.0) -> bool:
    """Block until everything tracked before this call is durable; False on timeout.

    Durable means journaled and fsynced by the daemon, or written to the local spool file when
    the daemon cannot be reached.
    """
    return _CLIENT.flush(timeout)


class step:
    """Run a block (or a decorated function) as the named step of the current run.

    Records the step's start and end; an exception escaping the block marks the step FAIL and
    is re-raised, otherwise it is marked SUCCESS.
    """

    def __init__(self, name: str) -> None:
        if type(name) is not str or not name:
            raise ValueError("step name must be a non-empty str")
        self.name = name
        # (outer, own, pid) per entry: a forked child leaving the block does not end its
        # parent's attempt
        self._stack: list[tuple[Ctx, Ctx, int]] = []

    def __enter__(self) -> "step":
        _CLIENT.start()
        outer = _STEPS.current()
        ctx = Ctx(outer.run_id, outer.tag, self.name, True, _STEPS.new_attempt())
        self._stack.append((outer, ctx, os.getpid()))
        _STEPS.add_mark(Mark("start", ctx, ctx))
        return self

    def __call__(self, fn: "F") -> "F":
        def wrapper(*args: "Any", **kwargs: "Any") -> "Any":
            with self:
                return fn(*args, **kwargs)

        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(wrapper, attr, getattr(fn, attr, None))
        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    def __exit__(self, et: "type[BaseException] | None", ev: "BaseException | None",
                 tb: "TracebackType | None") -> None:
        outer, ctx, pid = self._stack.pop()
        if pid != os.getpid():
            return
        _STEPS.add_env_metrics(ctx)
        ok = et is None or (et is SystemExit and getattr(ev, "code", None) in (0, None))
        _STEPS.add_mark(Mark("end", ctx, outer, "SUCCESS" if ok else "FAIL"))


class _TrackerContext:
    """Built on __enter__: asks the daemon for the active tracker, then lets that tracker's
    plugin build its own client for this run, in this process."""

    def __init__(self) -> None:
        self._cm: Any = None

    def __enter__(self) -> "Any":
        reply = _CLIENT.ask_context()
        if reply is None or not reply.tracker_type:
            return None
        from ._context import Run, client_context  # only when a tracker is active

        cur = _STEPS.current()
        self._cm = client_context(reply.tracker_type, reply.config,
                                  Run(cur.run_id, cur.tag, cur.step_name), reply.state)
        return self._cm.__enter__()

    def __exit__(self, *exc: "Any") -> "Any":
        cm, self._cm = self._cm, None
        return None if cm is None else cm.__exit__(*exc)


def get_experiment_tracker_context() -> "_TrackerContext":
    """The active tracker's own client, attached to the run the daemon writes to.

    A null context (yields None) when no tracker is configured or no daemon answers.
    """
    return _TrackerContext()
