"""The call site's side of runs and steps: the buffer, the identity in effect, attempts.

`track_this` extends the module-level `buffer` by three entries — step, unix time,
{key: value} — and nothing else: no tuple is kept per call, so the calls leave nothing for the
garbage collector to walk (a kept tuple per call made every few hundredth call pay a
collection). `Mark`s (step start/end, environment metrics, claims) sit between those triples;
`marks_added` counts them, raised *before* a mark is appended, so a reader that takes its
snapshot of the buffer first and reads the count second never misses one.

Attempts (design §7): one process running one step. An explicit `step()` is an attempt of its
own; the implicit step (`MAGNUS_STEP_NAME`, else "main") becomes one when this process first
records into it (the encoder claims it). Forked and multiprocessing children work inside their
parent's step and open no implicit attempt; the parent claims its implicit attempt before it
forks. Attempt ids are made here — pid, a per-process token, a counter — never from a
connection or client id, so a restart, reconnect or spool never splits an attempt.

`lock` guards the fields and the buffer's marks; it is never held across I/O, so a fork can
always take it.
"""

import _thread
import os
import time

from ._identity import env_metrics, new_run_id, run_id_from

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds: never on `import magnus`
    from typing import Any

DEFAULT_STEP = "main"
MAX_BUFFER = 6_000_000  # entries (3 per call) waiting for the flusher; beyond it calls are dropped

buffer: "list[Any]" = []


class Ctx:
    """Identity of the records that follow it in the buffer (`attempt` empty when implicit)."""

    __slots__ = ("attempt", "explicit", "run_id", "step_name", "tag")

    def __init__(self, run_id: str, tag: str, step_name: str, explicit: bool,
                 attempt: str = "") -> None:
        self.run_id, self.tag, self.step_name, self.explicit = run_id, tag, step_name, explicit
        self.attempt = attempt


class Mark:
    """A non-metric entry in the buffer: "start"/"end" of an attempt, "env" (environment
    metrics), or "claim" (open the implicit attempt of `ctx` now: the process is about to fork).
    `after` is the identity in effect for the entries that follow."""

    __slots__ = ("after", "ctx", "kind", "metrics", "status", "ts")

    def __init__(self, kind: str, ctx: Ctx, after: Ctx, status: str = "",
                 metrics: "dict[str, Any] | None" = None) -> None:
        self.kind, self.ctx, self.after, self.status = kind, ctx, after, status
        self.ts = time.time()
        self.metrics = metrics


def records(entries: "list[Any]") -> "list[tuple[int, float, dict[str, Any]]]":
    """The `track_this` calls among buffer entries, as (step, time, metrics)."""
    out = []
    i, n = 0, len(entries)
    while i < n:
        if type(entries[i]) is Mark:
            i += 1
        else:
            out.append((entries[i], entries[i + 1], entries[i + 2]))
            i += 3
    return out


class Steps:
    """This process's identity in effect at the call site, its attempts and its marks."""

    def __init__(self) -> None:
        self.env_sent: dict[str, Any] = {}  # environment metrics recorded, kept across fork
        self.child = False  # a forked child: works inside the parent's implicit attempt
        self.reset()

    def reset(self) -> None:
        """Everything that belongs to one process (again in a forked child)."""
        self.lock = _thread.allocate_lock()
        self.cur: Ctx | None = None  # identity in effect at the call site
        # (run, step) → the implicit attempt this process opened ("" = joined its parent's)
        self.implicit: dict[tuple[str, str], str] = {}
        self.token = os.urandom(4).hex()
        self.attempts = 0
        self.marks_added = 0

    def current(self) -> Ctx:
        """The identity in effect; read from the environment on first use (and after
        `forget`), making and exporting a run id when the environment names none."""
        cur = self.cur
        if cur is None:
            env = os.environ
            run_id = run_id_from(env)
            if not run_id:
                run_id = env["MAGNUS_RUN_ID"] = new_run_id()
            cur = self.cur = Ctx(run_id, env.get("MAGNUS_RUN_TAG", ""),
                                 env.get("MAGNUS_STEP_NAME") or DEFAULT_STEP, False)
        return cur

    def add_mark(self, mark: Mark) -> None:
        with self.lock:
            self.marks_added += 1  # before the append: see the module's docstring
            buffer.append(mark)
            self.cur = mark.after

    def new_attempt(self) -> str:
        with self.lock:
            self.attempts += 1
            return f"{os.getpid()}-{self.token}-{self.attempts}"

    def unsent_env(self) -> "dict[str, Any]":
        """`MAGNUS_TRACK_*` values this process (or its parent) has not recorded yet: each
        value is recorded once, into the step in effect when it is first seen."""
        sent = self.env_sent
        return {k: v for k, v in env_metrics(os.environ).items()
                if k not in sent or sent[k] != v or type(sent[k]) is not type(v)}

    def add_env_metrics(self, ctx: Ctx) -> None:
        with self.lock:
            new = self.unsent_env()
            self.env_sent.update(new)
        if new:
            self.add_mark(Mark("env", ctx, self.cur or ctx, metrics=new))

    def claim_before_fork(self) -> None:
        """A child about to be forked works inside this process's implicit attempt: make sure
        the encoder opens it."""
        cur = self.current()
        if not self.child and not cur.explicit and (cur.run_id, cur.step_name) not in self.implicit:
            self.add_mark(Mark("claim", cur, cur))

    def end_marks(self, status: str) -> "list[Mark]":
        """The ends of the implicit attempts this process opened (at exit)."""
        cur = self.current()
        return [Mark("end", Ctx(run_id, cur.tag, step_name, False, attempt), cur, status)
                for (run_id, step_name), attempt in sorted(self.implicit.items()) if attempt]
