"""Client process of benchmarks/viewer.py, three modes:

    python _viewer_client.py big N                 # track_this(step=i, loss=...) i = 1..N, flush
    python _viewer_client.py steady RATE S OUTFILE # RATE events/s for S seconds, times to OUTFILE
    python _viewer_client.py burst N STEP_NAME     # N events as fast as it can in step(STEP_NAME)

Each warms up first (one flush(): the SDK connects and imports msgspec; `steady` also tracks
step 0 and flushes it, so the run and its chart exist before the measurement), prints "ready",
waits for a line on stdin (`big` does not wait), then runs and prints one JSON line.

`steady` records time.time() just before each `track_this(step=i, loss=...)` (i = 1, 2, ...)
and writes them as float64 to OUTFILE (index i-1 = step i): the wall-clock moment the event
was tracked, to compare with the page's Date.now() when step i is in its chart data. It keeps
up with RATE checking every ~1 ms (a late tick catches up in a burst) and stops after S s.
`burst` stamps time.monotonic() like benchmarks/_ingest_client.py.
"""

from __future__ import annotations

import json
import sys
import time
from array import array


def big(n: int) -> None:
    from magnus import flush, track_this

    t0 = time.monotonic()
    for i in range(1, n + 1):
        track_this(step=i, loss=1000.0 if i == (7 * n) // 9 else 1.0 / i)
    ok = flush(timeout=300)
    print(json.dumps({"n": n, "flush_ok": ok, "s": time.monotonic() - t0}), flush=True)


def steady(rate: float, seconds: float, outfile: str) -> None:
    from magnus import flush, track_this

    track_this(step=0, loss=1.0)
    warm_ok = flush(timeout=30)
    print("ready", flush=True)
    sys.stdin.readline()
    wall, mono, sleep = time.time, time.monotonic, time.sleep
    times = array("d")
    stamp = times.append
    t_first = mono()
    end = t_first + seconds
    i = 0
    max_burst = 0
    while True:
        now = mono()
        if now >= end:
            break
        target = int((now - t_first) * rate)
        max_burst = max(max_burst, target - i)
        while i < target:
            i += 1
            stamp(wall())
            track_this(step=i, loss=1.0 / (1 + i * 1e-4))
        sleep(0.001)
    t_last = mono()
    ok = flush(timeout=120)
    with open(outfile, "wb") as f:
        times.tofile(f)
    print(json.dumps({"n": i, "t_first": t_first, "t_last": t_last, "t_flushed": mono(),
                      "flush_ok": ok, "warm_ok": warm_ok, "max_burst": max_burst}), flush=True)


def burst(n: int, step_name: str) -> None:
    from magnus import flush, step, track_this

    warm_ok = flush(timeout=30)
    print("ready", flush=True)
    sys.stdin.readline()
    t_first = time.monotonic()
    with step(step_name):
        for i in range(n):
            track_this(loss=i * 1e-6, step=i)
    t_loop = time.monotonic()
    ok = flush(timeout=300)
    t_flushed = time.monotonic()
    print(json.dumps({"t_first": t_first, "t_loop": t_loop, "t_flushed": t_flushed,
                      "flush_ok": ok, "warm_ok": warm_ok}), flush=True)


def main() -> None:
    mode = sys.argv[1]
    if mode == "big":
        big(int(sys.argv[2]))
    elif mode == "steady":
        steady(float(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
    elif mode == "burst":
        burst(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
