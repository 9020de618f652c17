"""Client process of benchmarks/track_this.py (run fresh for each case; prints one JSON line).

    python _track_client.py magnus N [DIR]  # track_this(loss=x, step=i), i = 1..N, each call
                                            # timed; `magnus` must come from DIR when given
    python _track_client.py floor N    # the pure-Python floor: list.append of a tuple (the
                                       # list is emptied every 8192 entries, off the clock)

Every call is timed alone with perf_counter_ns; the timer's own cost (two back-to-back
perf_counter_ns calls) is measured the same way, in the same process, before the calls.
Only standard-library modules are imported besides `magnus`, so the process is what a user's
training script would be.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from array import array

QS = (50, 90, 99, 99.9, 99.99)


def summary(a: array[int]) -> dict[str, float]:
    s = sorted(a)
    n = len(s)
    out: dict[str, float] = {f"p{q:g}": s[max(0, min(n - 1, math.ceil(q * n / 100) - 1))]
                             for q in QS}  # nearest rank
    out["mean"] = sum(s) / n
    out["max"] = s[-1]
    out["n"] = n
    return out


def timer_overhead(n: int) -> array[int]:
    pc = time.perf_counter_ns
    out = array("q", bytes(8 * n))
    for i in range(n):
        t0 = pc()
        t1 = pc()
        out[i] = t1 - t0
    return out


def run_magnus(n: int, where: str | None) -> dict[str, object]:
    t_imp = time.perf_counter()
    import magnus
    from magnus import flush, track_this

    import_s = time.perf_counter() - t_imp
    got = os.path.dirname(os.path.realpath(magnus.__file__ or ""))
    if where and got != os.path.realpath(where):
        sys.exit(f"magnus imported from {got}, expected {where}")
    track_this(loss=0.0, step=0)  # warm-up: starts the flusher thread (key "loss")
    time.sleep(0.3)  # let the flusher import msgspec and connect (or fail to) off the clock
    timer = timer_overhead(n)
    pc = time.perf_counter_ns
    out = array("q", bytes(8 * n))
    t_loop = time.perf_counter()
    for i in range(1, n + 1):
        x = i * 1e-6
        t0 = pc()
        track_this(loss=x, step=i)
        t1 = pc()
        out[i - 1] = t1 - t0
    loop_s = time.perf_counter() - t_loop
    t_flush = time.perf_counter()
    ok = flush(timeout=120)
    flush_s = time.perf_counter() - t_flush
    res: dict[str, object] = {"calls": summary(out), "timer": summary(timer), "loop_s": loop_s,
                              "flush_ok": ok, "flush_s": flush_s, "import_s": import_s}
    try:  # SDK internals, for the report only
        from magnus import _client

        c = _client.CLIENT
        res.update(dropped=c.dropped, spooled_files=c.spooled_files,
                   run_id=c.current().run_id, last_error=c.last_error)
    except Exception as e:
        res["internals_error"] = repr(e)
    return res


def run_floor(n: int) -> dict[str, object]:
    timer = timer_overhead(n)
    pc = time.perf_counter_ns
    now = time.time
    buf: list[object] = []
    append = buf.append
    out = array("q", bytes(8 * n))
    kept = 0
    for i in range(1, n + 1):
        x = i * 1e-6
        t0 = pc()
        append((i, now(), {"loss": x}))
        t1 = pc()
        out[i - 1] = t1 - t0
        if len(buf) >= 8192:  # drained off the clock, as the SDK's flusher drains its buffer
            kept += len(buf)
            del buf[:]
    return {"calls": summary(out), "timer": summary(timer), "kept": kept + len(buf)}


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    where = sys.argv[3] if len(sys.argv) > 3 else None
    res = run_magnus(n, where) if mode == "magnus" else run_floor(n)
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
