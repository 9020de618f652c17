"""Client process of benchmarks/track_values.py (run fresh for each case; prints one JSON line).

    python _values_client.py KIND N EXPECTED_DIR

KIND is the type of the value given to `track_this(loss=v, step=i)`, i = 1..N:

    float   a plain Python float, i * 1e-6
    f64     np.float64(i * 1e-6)
    f32     np.float32(i * 0.5)
    i64     np.int64(i)
    arr16   a numpy array of 16 float32, i + 0.25 * k for k = 0..15
    torch   a 0-d torch tensor, torch.tensor(i * 0.5) (float32)

(all exact in their type, so the run log can be checked value by value). The N + 1 values (step
0 is the warm-up call) are built before any call is timed; every call is then timed alone with
perf_counter_ns, as in _track_client.py, and the timer's own cost is measured the same way in
the same process first. The process's CPU time over the loop and the final flush(), the main
thread's share of it and the SDK flusher thread's whole CPU time (/proc/self/task/TID/stat) are
reported too: unlike the mean call time they do not count time the process waited for a CPU.
numpy / torch are imported only by the cases that use them, before `magnus`.

EXPECTED_DIR is the directory `magnus` must be imported from (the baseline's extracted copy or
the working tree's sdk/magnus): the client refuses to run (exit 3) when it is not.
"""

from __future__ import annotations

import json
import os
import sys
import time
from array import array
from typing import Any

from _track_client import summary, timer_overhead

KINDS = ("float", "f64", "f32", "i64", "arr16", "torch")


def expected(kind: str, i: int) -> Any:
    """The value step i must have in the run log (what _values_client.py sent, as plain JSON)."""
    if kind in ("float", "f64"):
        return i * 1e-6
    if kind in ("f32", "torch"):
        return i * 0.5
    if kind == "i64":
        return i
    return [i + 0.25 * k for k in range(16)]  # arr16


def plain_ok(kind: str, v: Any, want: Any) -> bool:
    if kind == "i64":
        return type(v) is int and v == want
    if kind == "arr16":
        return type(v) is list and all(type(x) is float for x in v) and v == want
    return type(v) is float and v == want


def build(kind: str, n: int) -> list[Any]:
    """The values for steps 0..n (index = step)."""
    r = range(n + 1)
    if kind == "float":
        return [i * 1e-6 for i in r]
    if kind == "torch":
        import torch

        return [torch.tensor(i * 0.5) for i in r]
    import numpy as np

    if kind == "f64":
        return [np.float64(i * 1e-6) for i in r]
    if kind == "f32":
        return [np.float32(i * 0.5) for i in r]
    if kind == "i64":
        return [np.int64(i) for i in r]
    if kind == "arr16":
        ramp = np.arange(16, dtype=np.float32) * np.float32(0.25)
        return [ramp + np.float32(i) for i in r]  # a fresh float32 array each
    raise SystemExit(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")


def thread_cpu_s(name: str) -> float | None:
    """CPU seconds (user + system) the named thread of this process has used, from /proc."""
    import threading

    for t in threading.enumerate():
        if t.name == name and t.native_id is not None:
            try:
                with open(f"/proc/self/task/{t.native_id}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                return None
            fields = stat[stat.rindex(b")") + 2 :].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def main() -> None:
    kind, n, expected_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    t_build = time.perf_counter()
    values = build(kind, n)
    build_s = time.perf_counter() - t_build

    t_imp = time.perf_counter()
    import magnus
    from magnus import flush, track_this

    import_s = time.perf_counter() - t_imp
    where = os.path.dirname(os.path.realpath(magnus.__file__))
    print(f"magnus imported from {magnus.__file__}", file=sys.stderr)
    if where != os.path.realpath(expected_dir):
        print(f"wrong magnus: {where}, expected {os.path.realpath(expected_dir)}",
              file=sys.stderr)
        sys.exit(3)

    track_this(loss=values[0], step=0)  # warm-up: starts the flusher thread, warms the path
    time.sleep(0.3)  # let the flusher import msgspec and connect, off the clock
    timer = timer_overhead(n)
    pc = time.perf_counter_ns
    out = array("q", bytes(8 * n))
    cpu0, main0 = time.process_time(), time.thread_time()
    t_loop = time.perf_counter()
    for i in range(1, n + 1):
        v = values[i]
        t0 = pc()
        track_this(loss=v, step=i)
        t1 = pc()
        out[i - 1] = t1 - t0
    loop_s = time.perf_counter() - t_loop
    t_flush = time.perf_counter()
    ok = flush(timeout=120)
    flush_s = time.perf_counter() - t_flush
    cpu_s, main_cpu_s = time.process_time() - cpu0, time.thread_time() - main0
    res: dict[str, Any] = {"kind": kind, "calls": summary(out), "timer": summary(timer),
                           "loop_s": loop_s, "flush_ok": ok, "flush_s": flush_s,
                           "cpu_s": cpu_s, "main_cpu_s": main_cpu_s,
                           "flusher_cpu_s": thread_cpu_s("magnus-flusher"),
                           "import_s": import_s, "build_s": build_s,
                           "magnus_file": magnus.__file__,
                           "value_type": f"{type(values[1]).__module__}.{type(values[1]).__name__}"}
    try:  # SDK internals, for the report only
        from magnus import _client

        c = _client.CLIENT
        res.update(dropped=c.dropped, spooled_files=c.spooled_files,
                   run_id=c.current().run_id, last_error=c.last_error)
    except Exception as e:
        res["internals_error"] = repr(e)
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
