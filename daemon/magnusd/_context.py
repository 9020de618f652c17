"""A client's `get_experiment_tracker_context()`: which tracker it gets, and that tracker's
own `context_state` for the client's run.

Invariants: the tracker marked `context: true` comes first, else the first one constructed;
its `context_state` runs in its worker (never in the daemon), and a failure there answers an
empty state rather than an error; with no usable tracker the answer names none.
"""

from __future__ import annotations

import logging

import anyio

from magnus import _protocol as proto

from ._tracker import RunInfo
from ._trackers import Trackers

log = logging.getLogger("magnusd")
LOADED_WAIT_S = 60.0  # right after start, trackers may still be loading
WORKER_WAIT_S = 30.0  # a worker between restarts gets a moment


async def tracker_context(trackers: Trackers, req: proto.ContextRequest) -> proto.ContextReply:
    with anyio.move_on_after(LOADED_WAIT_S):
        await trackers.loaded.wait()
    runners = sorted(trackers.runners.values(), key=lambda r: not r.defn.context)
    for r in runners:
        if not r.constructed:
            continue
        run = RunInfo(req.run_id, req.tag, req.step_name)
        try:
            with anyio.fail_after(WORKER_WAIT_S):
                while r.worker is None and not r.done.is_set():  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            state = await r.ask(run)  # the tracker's own context_state, in its worker
        except Exception as e:
            log.warning("tracker %r: context_state failed: %s", r.name, e)
            state = {}
        return proto.ContextReply(r.defn.type, r.name, r.defn.config, state)
    return proto.ContextReply("")
