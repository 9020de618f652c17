"""`magnusd serve` under cProfile, every thread included (benchmarks/ingest.py --profile).

    python _profiled_serve.py [--wall] OUT.prof [serve options...]

`python -m cProfile -m magnusd._cli serve` would profile the event-loop thread only, and the
daemon does real work in worker threads (run-store apply and checkpoint, journal fsync,
`anyio.to_thread`). So every thread started through `threading` gets its own profiler (installed
by a one-shot `threading.setprofile` hook), and at exit (SIGTERM/SIGINT: graceful) all of them
are merged into OUT.prof, readable with `pstats`.

Times are each thread's CPU time (`time.thread_time`) by default, so threads parked in a lock,
`epoll` or the file watcher do not drown the work; `--wall` profiles wall-clock time instead
(then blocking calls such as fsync show up too, and so does every idle wait).
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import threading
import time
from typing import Any

_profiles: list[tuple[str, cProfile.Profile]] = []
_lock = threading.Lock()
_timer: list[Any] = [time.thread_time]


def _new_profile() -> cProfile.Profile:
    return cProfile.Profile(_timer[0]) if _timer[0] is not None else cProfile.Profile()


def _start_thread_profiler(frame: Any, event: str, arg: Any) -> None:
    # Called once per new thread (threading.setprofile); enabling the C profiler replaces this
    # Python-level hook for the rest of the thread's life.
    p = _new_profile()
    with _lock:
        _profiles.append((threading.current_thread().name, p))
    p.enable()


class _Snapshot:
    """A profiler's stats taken without disabling it (it may belong to another thread)."""

    def __init__(self, p: cProfile.Profile) -> None:
        p.snapshot_stats()
        self.stats = p.stats

    def create_stats(self) -> None:  # what pstats.Stats calls on profiler-like objects
        pass


def main() -> int:
    args = sys.argv[1:]
    if args and args[0] == "--wall":
        _timer[0] = None  # cProfile's default wall-clock timer
        args = args[1:]
    out = args[0]
    from magnusd._cli import main as magnusd_main

    threading.setprofile(_start_thread_profiler)
    main_prof = _new_profile()
    main_prof.enable()
    rc = 1
    try:
        rc = magnusd_main(["serve", *args[1:]])
    finally:
        main_prof.disable()
        threading.setprofile(None)
        # pstats reads any object with create_stats() and .stats; typeshed names Profile only
        stats = pstats.Stats(_Snapshot(main_prof))  # type: ignore[arg-type]
        with _lock:
            others = list(_profiles)
        for _, p in others:
            stats.add(pstats.Stats(_Snapshot(p)))  # type: ignore[arg-type]
        stats.dump_stats(out)
        sys.stderr.write(f"profile: main thread + {len(others)} other thread(s) -> {out}\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
