"""`wandb`: one Weights & Biases run per magnus run (extra: `pip install 'magnusd[wandb]'`).

Config: `project` (default "magnus"), `entity` (default: the API key's default entity), `mode`
(`online`, the default, or `offline`) and `dir` (where W&B writes its run directories; default:
this tracker's state directory under `<data>/trackers/`). Credentials come from W&B's own
environment (`WANDB_API_KEY`, `~/.netrc`) of the daemon; they never appear in the config.

- Run: id = the magnus run id when it is a valid W&B id (`[A-Za-z0-9_-]`, ≤ 64 characters),
  otherwise the id with every other character replaced by `-`, cut to 55 characters and
  followed by `-` and 8 hex digits of its SHA-256 (deterministic, so a daemon restart or an LRU
  eviction resumes the same W&B run: `resume="allow"`). Name = the magnus run id, group = the
  tag (none when empty). At most 16 runs are open at a time; the least recently used is
  finished first. An offline run that is resumed gets another `offline-run-*-<id>` directory
  with the same id (`wandb sync` merges them); the daemon never re-opens a run within a
  second of its last init, since those directories are named by the second. A client context
  in offline mode writes below `<dir>/client-<pid>/` for the same reason.
- Steps: W&B keeps one global, increasing `_step` per run and drops rows logged with a lower
  `step=`. The daemon never passes `step=`; instead each magnus key `k` has its own hidden step
  metric `magnus/step/k` (`define_metric(k, step_metric="magnus/step/k")`) and every row that
  holds `k` also holds `magnus/step/k`. So values arriving with a lower step than before (a
  second process of the run, a restarted script) are kept and plotted at their magnus step.
  Keys containing `*` (W&B reads them as globs) get no `define_metric`: their values and step
  columns are still logged, against W&B's `_step`.
- Rows: consecutive events of a run are grouped into one `run.log(row)` per (key set, step), in
  delivery order; a new row starts when the step changes or a key would repeat. `_timestamp` is
  the time of the row's first event (when it was tracked, not delivered).
- Values (nothing is dropped): int/float (not bool) → numbers, as they are (NaN/inf included);
  str and bool → logged as they are (W&B keeps them in the history, and the last one in the
  summary); None → JSON null in the history (the UI shows a gap; the summary keeps the previous
  value); dict → flattened to dotted keys (`cfg.a`), same rules per leaf, the step metric being
  the top-level key's; an empty dict → the string "{}"; list (and anything else) → a JSON
  string. Keys W&B reserves (`_step`, `_runtime`, `_timestamp`, `_wandb…`) are logged as
  `magnus/<key>`.
- Step ends: `summary["magnus/status/<step name>"]` = SUCCESS or FAIL.
- A failed delivery is retried whole (the W&B run is re-opened), so rows logged before the
  failure can appear twice; values are never lost.
- W&B's own output is silenced in the daemon (`WANDB_SILENT`, `console="off"`), and it does not
  record the daemon's code, git state, host metadata or system metrics, which would describe the
  daemon rather than the tracked process.
- Client context: `with get_experiment_tracker_context() as run:` yields
  `wandb.init(id=<the run's W&B id>, resume="allow", reinit="create_new")` in your process (same
  project, entity, mode, dir, name and group), finished when the block exits without marking the
  W&B run finished (`x_update_finish_state=False`): the daemon keeps writing to it.
- Throughput: W&B's `run.log` costs ~0.7 ms per row here (one round trip to `wandb-core`), so
  one tracker delivers roughly 1,500 rows/s; rows holding several keys go further. The journal
  absorbs bursts meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Literal

import msgspec

from .._tracker import BaseExperimentTracker, Event, RunInfo
from ._wandb_offline import offline_records as offline_records
from ._wandb_rows import STATUS_PREFIX, log_rows, wandb_run_id

__all__ = ["WandbConfig", "WandbTracker", "offline_records", "wandb_run_id"]

log = logging.getLogger("magnusd.trackers.wandb")
MAX_OPEN_RUNS = 16


class WandbConfig(msgspec.Struct, forbid_unknown_fields=True):
    project: str = "magnus"
    entity: str | None = None
    mode: Literal["online", "offline"] = "online"
    dir: str | None = None


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise
    except Exception as e:  # a broken install: report it as missing rather than crash
        raise ImportError(f"wandb failed to import: {type(e).__name__}: {e}") from e
    return wandb


class _Open:
    """A W&B run the daemon has open, and the metrics already defined in it."""

    __slots__ = ("defined", "run")

    def __init__(self, run: Any) -> None:
        self.run = run
        self.defined: set[str] = set()


class WandbTracker(BaseExperimentTracker):
    service_name = "wandb"
    Config = WandbConfig
    extra = "wandb"
    config: WandbConfig

    def __init__(self, config: WandbConfig) -> None:
        super().__init__(config)
        self._wandb: Any = None
        self._runs: OrderedDict[str, _Open] = OrderedDict()  # magnus run id → open W&B run
        self._inited: dict[str, float] = {}  # magnus run id → monotonic time of its last init
        self._lock = threading.Lock()  # _runs: context_state runs concurrently with delivery

    @classmethod
    def check_library(cls) -> None:
        _import_wandb()

    # -- lifecycle --------------------------------------------------------------------------

    def _dir(self) -> str | None:
        d = self.config.dir or self.state_dir
        return os.path.abspath(os.path.expanduser(d)) if d else None

    def start(self) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = _import_wandb()
        d = self._dir()
        if d:
            os.makedirs(d, exist_ok=True)

    def close(self) -> None:
        with self._lock:
            runs = list(self._runs.values())
            self._runs.clear()
        errors = []
        for o in runs:
            try:
                o.run.finish()
            except Exception as e:  # finish the others regardless
                errors.append(e)
        if errors:
            raise errors[0]

    def _open(self, run: RunInfo) -> _Open:
        with self._lock:
            o = self._runs.get(run.run_id)
            if o is not None:
                self._runs.move_to_end(run.run_id)
                return o
        if self._wandb is None:
            self.start()
        wandb = self._wandb
        c = self.config
        # An offline run directory is named by the second of its init: a second init of the
        # same id within that second would reuse (and overwrite) the first one's file.
        import time

        wait = self._inited.get(run.run_id, 0.0) + 1.1 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._inited[run.run_id] = time.monotonic()
        if len(self._inited) > 4 * MAX_OPEN_RUNS:
            self._inited.pop(next(iter(self._inited)))
        wrun = wandb.init(
            project=c.project, entity=c.entity, mode=c.mode, dir=self._dir(),
            id=wandb_run_id(run.run_id), name=run.run_id, group=run.tag or None,
            resume="allow", reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, disable_code=True,
                                    disable_git=True, x_disable_meta=True,
                                    x_disable_stats=True, x_label="magnusd"))
        o = _Open(wrun)
        evicted = None
        with self._lock:
            self._runs[run.run_id] = o
            if len(self._runs) > MAX_OPEN_RUNS:
                evicted = self._runs.popitem(last=False)[1]
        if evicted is not None:
            try:
                evicted.run.finish()
            except Exception as e:  # its rows were handed to W&B already; deliver this run's
                log.warning("finishing W&B run %s failed: %s", evicted.run.id, e)
        return o

    def _drop(self, run_id: str) -> None:
        """Forget a run whose W&B object failed; the retry opens (resumes) it again."""
        with self._lock:
            o = self._runs.pop(run_id, None)
        if o is not None:
            with contextlib.suppress(Exception):
                o.run.finish()

    # -- delivery ---------------------------------------------------------------------------

    def log_metric(self, key: str, value: Any, step: int = 0) -> None:
        run = self.run
        assert run is not None
        import time

        self.log_batch([Event(run.run_id, run.tag, run.step_name, key, value, step, time.time())])

    def log_batch(self, events: list[Event]) -> None:
        i, n = 0, len(events)
        while i < n:
            first = events[i]
            j = i + 1
            while j < n and events[j].run_id == first.run_id:
                j += 1
            try:
                o = self._open(first.run)
                log_rows(o.run, o.defined, events[i:j])
            except Exception:
                self._drop(first.run_id)
                raise
            i = j

    def on_step_end(self, run: RunInfo, status: str) -> None:
        try:
            self._open(run).run.summary[STATUS_PREFIX + run.step_name] = status
        except Exception:
            self._drop(run.run_id)
            raise

    # -- the SDK side -----------------------------------------------------------------------

    def context_state(self, run: RunInfo) -> dict[str, Any]:
        c = self.config
        entity = c.entity
        with self._lock:
            o = self._runs.get(run.run_id)
        if entity is None and o is not None and c.mode == "online":
            with contextlib.suppress(Exception):
                entity = o.run.entity or None
        return {"wandb_run_id": wandb_run_id(run.run_id), "project": c.project,
                "entity": entity, "mode": c.mode, "dir": self._dir(), "name": run.run_id,
                "group": run.tag or None}

    @contextlib.contextmanager
    def client_context(self, run: RunInfo, state: dict[str, Any]) -> Iterator[Any]:
        wandb = _import_wandb()
        s = {**self.context_state(run), **(state or {})}
        d = s.get("dir")
        if d and s.get("mode") == "offline":
            # never the daemon's directory: offline run directories are named by the second
            # of their init, and two processes in the same second would share one file
            d = os.path.join(d, f"client-{os.getpid()}")
        if d:
            with contextlib.suppress(OSError):  # not ours to create: W&B falls back on its own
                os.makedirs(d, exist_ok=True)
        wrun = wandb.init(
            project=s["project"], entity=s.get("entity"), mode=s.get("mode", "online"), dir=d,
            id=s["wandb_run_id"], name=s.get("name"), group=s.get("group"),
            resume="allow", reinit="create_new",
            settings=wandb.Settings(x_update_finish_state=False, x_label="magnus-client"))
        try:
            yield wrun
        finally:
            wrun.finish()

