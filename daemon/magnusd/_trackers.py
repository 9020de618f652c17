"""The running tracker set, and hot reload of the config file.

A reload (file watch or SIGHUP) reads the file, compares it with the last text seen, parses and
validates it, and starts a worker process for every new or changed tracker, which imports the
plugin, decodes its `config:` block and constructs it — all before touching what runs (tracker
libraries are never imported by the daemon). On any error the running set stays, the new
workers are stopped, and the error is shown in `status` (`config.error`).
Then: an unchanged tracker (same name, same definition) is left alone; a changed one is stopped
after the op in hand and its replacement continues from its cursor; a new name starts at the
journal head (or replays the retained journal with `backfill: true`); a removed one stops after
the op in hand. At daemon start there is no running set to keep, so a tracker that fails to load
or construct is shown `disabled` with its error while the others run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import anyio
import anyio.abc

from . import _config, _plugins
from . import _workerwire as wire
from ._config import Config, ConfigError, TrackerDef
from ._fanout import Cursor, CursorStore, start_cursor
from ._journal import Journal
from ._status import TrackerState, TrackerStatus
from ._swap import SwapOp, SwapPlan, plan_swap
from ._tracker import BaseExperimentTracker
from ._workerproc import Spawner, Worker
from ._workers import Runner

log = logging.getLogger("magnusd.trackers")
DEBOUNCE_MS = 200
STUCK_S = 3.0


class Built(NamedTuple):
    """A plan step's new worker, constructed and ready (None: kept, or failed)."""

    defn: TrackerDef
    worker: Worker | None
    error: str | None


class Resolved(NamedTuple):
    defn: TrackerDef
    cls: type[BaseExperimentTracker] | None
    conf: Any
    error: str | None  # unknown type, failed import, missing extra, bad `config:` block


def validate(cfg: Config, text: str = "") -> list[Resolved]:
    """Resolve each tracker's class and decode its `config:` block into the class's struct
    (for `magnusd check-config`: it imports the plugins, which the daemon never does).

    `text`, the YAML the config came from, lets errors name their line.
    """
    out = []
    for i, d in enumerate(cfg.trackers):
        where = (f"$.experiment_tracker[{i}]" if isinstance(cfg.experiment_tracker, list)
                 else "$.experiment_tracker")
        try:
            cls = _plugins.load_class(d.type)
            _plugins.check_available(cls, d.type)
            conf = _plugins.decode_config(cls, d.config, f"{where}.config")
        except _plugins.PluginError as e:
            msg = str(e)
            if text and "- at `" in msg:
                msg = _config.with_line(msg, text)
            out.append(Resolved(d, None, None, f"{where} ({d.key}): {msg}"))
            continue
        out.append(Resolved(d, cls, conf, None))
    return out


class Trackers:
    def __init__(self, journal: Journal, data_dir: str, config_path: str,
                 environ: Mapping[str, str]) -> None:
        self.journal = journal
        self.cursors = CursorStore(os.path.join(data_dir, "trackers"))
        self.path = config_path
        self.environ = environ
        self.journal_dir = journal.dir
        self.spawner = Spawner()
        self.runners: dict[str, Runner] = {}
        self.text: str | None = None  # the config text last acted on
        self.loaded_at: float | None = None
        self.error: str | None = None
        self.definitions: list[dict[str, Any]] = []  # as written (no ${} values): run logs
        self._tg: anyio.abc.TaskGroup | None = None
        self._lock = anyio.Lock()
        self._start_head: Cursor | None = None
        self.loaded = anyio.Event()  # the config of the start has been acted on
        self.notifier: Any = None  # _systemd.Notifier, set by the daemon
        self.on_change: list[Any] = []  # callbacks(definitions) after a successful load
        self.on_sources: list[Any] = []  # callbacks(source definitions), likewise

    def status(self) -> list[TrackerStatus]:
        return [r.status() for r in self.runners.values()]

    def min_cursor(self) -> int | None:
        return min((r.cursor.seq for r in self.runners.values()), default=None)

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                    ) -> None:
        """Own the runners' tasks; load the config at start, without delaying readiness.

        Importing a tracker's library can take seconds (MLflow); clients are served meanwhile,
        and a tracker new at this start begins at the journal head as of the start, so it
        misses nothing journaled while it loaded.
        """
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._start_head = Cursor(self.journal.last_seq, self.journal.events)
                task_status.started()
                await self.reload("start", initial=True)
                self._start_head = None
                self.loaded.set()
                await anyio.sleep_forever()
        finally:
            await self.spawner.aclose()

    # -- reload -----------------------------------------------------------------------------

    async def reload(self, reason: str, initial: bool = False, force_notify: bool = False) -> bool:
        """Reload the config; systemd hears RELOADING=1 … READY=1 around every real reload."""
        async with self._lock:
            text = _config.read_text(self.path)
            changed = initial or text != self.text
            notify = self.notifier is not None and not initial and (changed or force_notify)
            if notify:
                self.notifier.reloading()
            try:
                return await self._reload(reason, initial, text, changed)
            finally:
                if notify:
                    self.notifier.ready("config " + ("error: " + self.error.splitlines()[0]
                                                     if self.error else "reloaded"))

    async def _reload(self, reason: str, initial: bool, text: str | None, changed: bool) -> bool:
        if not changed:
            log.info("config reload (%s): %s unchanged", reason, self.path)
            return True
        self.text = text
        try:
            cfg = _config.parse(text or "", self.path, self.environ)
            if initial:  # runs seen while the workers load already name these trackers
                self._set_definitions(text)
            plan = plan_swap(self.runners, cfg.trackers)
            built = await self._construct(cfg, plan, initial, text or "")
        except ConfigError as e:
            self.error = str(e)
            log.error("config reload (%s) rejected, %s: %s", reason,
                      "running without trackers" if initial else "the running trackers stay",
                      e)
            return False
        self._swap(plan, built)
        for cb in self.on_sources:
            cb(cfg.sources or [])
        self.error = "\n".join(b.error for b in built if b.error) or None
        self.loaded_at = time.time()
        self._set_definitions(text)
        log.info("config reload (%s) applied: %d tracker(s): %s", reason, len(self.runners),
                 ", ".join(f"{r.name} ({r.defn.type})" for r in self.runners.values())
                 or "none")
        return True

    def _spec(self, d: TrackerDef) -> wire.Spec:
        return wire.Spec(d.key, d.type, d.config, self.journal_dir,
                         self.cursors.state_dir(d.key), self.cursors.dead_letter_path(d.key))

    def _set_definitions(self, text: str | None) -> None:
        self.definitions = _config.raw_definitions(text or "")
        for cb in self.on_change:
            cb(self.definitions)

    async def _construct(self, cfg: Config, plan: SwapPlan, initial: bool, text: str
                         ) -> list[Built]:
        """Workers for the plan's new and changed trackers, each constructed and ready, in
        parallel; one `Built` per plan step (a kept one has no worker).

        A failure disables that tracker at start, and rejects the whole config on a reload
        (the workers already started are stopped).
        """
        out: list[Built | None] = [None] * len(plan.steps)

        async def one(i: int, op: SwapOp, d: TrackerDef) -> None:
            if op is SwapOp.KEEP:
                out[i] = Built(d, None, None)  # unchanged: keep the runner
                return
            spawned = await self.spawner.spawn(self._spec(d))
            worker, error = spawned.worker, spawned.error
            if error is not None:
                where = (f"$.experiment_tracker[{i}]" if isinstance(cfg.experiment_tracker, list)
                         else "$.experiment_tracker")
                if "- at `config" in error:
                    error = _config.with_line(error.replace("- at `config",
                                                            f"- at `{where}.config"), text)
                error = f"{where} ({d.key}): {error}"
            out[i] = Built(d, worker, error)

        async with anyio.create_task_group() as tg:
            for i, (op, d) in enumerate(plan.steps):
                tg.start_soon(one, i, op, d)
        built = [b for b in out if b is not None]
        problems = [b.error for b in built if b.error]
        if problems and not initial:
            for b in built:
                if b.worker is not None:
                    b.worker.kill()
                    await b.worker.reap()
            raise ConfigError(self.path, problems)
        for b in built:
            if b.error:
                log.error("%s; it is disabled", b.error)
        return built

    def _swap(self, plan: SwapPlan, built: list[Built]) -> None:
        assert self._tg is not None
        new: dict[str, Runner] = {}
        for (op, d), b in zip(plan.steps, built, strict=True):
            if op is SwapOp.KEEP:
                new[d.key] = self.runners[d.key]  # unchanged
                continue
            spec = self._spec(d)
            if op is SwapOp.REPLACE:  # changed: the new instance takes over the cursor
                old = self.runners[d.key]
                log.info("tracker %r: definition changed; the new instance takes over at the "
                         "old one's cursor", d.key)
                old.stop()
                runner = Runner(d, spec, self.journal, self.cursors, old.cursor, b.worker,
                                b.error, after=old)
            else:
                cursor = self.cursors.load(d.key)
                if cursor is None:
                    replay = d.backfill or d.key in self.cursors.unreadable
                    cursor = ((self._start_head if self._start_head and not replay else None)
                              or start_cursor(self.journal, replay))
                self.cursors.save(d.key, cursor)
                runner = Runner(d, spec, self.journal, self.cursors, cursor, b.worker, b.error)
            new[d.key] = runner
            self._tg.start_soon(runner.run)
        for name in plan.remove:
            old = self.runners[name]
            log.info("tracker %r removed: it stops after the batch in hand", name)
            old.stop()
            self._tg.start_soon(self._retire, old)
        self.runners = new

    async def _retire(self, old: Runner) -> None:
        await old.done.wait()
        if old.name not in self.runners:
            self.cursors.delete(old.name)

    # -- watching ---------------------------------------------------------------------------

    async def watch(self, stop: anyio.Event) -> None:
        """Reload whenever the config file changes (editors save by rename: watch the dir)."""
        import watchfiles

        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        name = os.path.basename(self.path)
        async for _ in watchfiles.awatch(
                directory, watch_filter=lambda _c, p: os.path.basename(p) == name,
                debounce=DEBOUNCE_MS, step=20, stop_event=stop, rust_timeout=1000,
                recursive=False):
            await self.reload("file changed")

    async def drain(self, seconds: float) -> None:
        """At shutdown: let trackers deliver what is pending (bounded; a tracker whose call
        has hung for STUCK_S is not waited for), then stop them."""
        with anyio.move_on_after(seconds):
            while any(r.status().pending and r.state is TrackerState.RUNNING  # noqa: ASYNC110
                      and not r.stuck(STUCK_S)  # (it polls several runners' state)
                      for r in self.runners.values()):
                await anyio.sleep(0.05)
        for r in self.runners.values():
            r.stop()
        with anyio.move_on_after(5):
            for r in self.runners.values():
                await r.done.wait()
