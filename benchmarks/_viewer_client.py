"""Client process of benchmarks/viewer.py, two modes (its ingest rounds use _ingest_client.py):

    python _viewer_client.py big N                 # track_this(step=i, loss=...) i = 1..N, flush
    python _viewer_client.py steady RATE S OUTFILE # RATE events/s for S seconds, times to OUTFILE

`steady` tracks step 0 before the handshake (`_client_io.ready`), so the run and its chart
exist before the measurement; `big` runs at once. Each prints one JSON line.

`steady` records time.time() just before each `track_this(step=i, loss=...)` (i = 1, 2, ...)
and writes them as float64 to OUTFILE (index i-1 = step i): the wall-clock moment the event
was tracked, to compare with the page's Date.now() when step i is in its chart data. It keeps
up with RATE checking every ~1 ms (a late tick catches up in a burst) and stops after S s.
"""

from __future__ import annotations

import sys
import time
from array import array

from _client_io import emit, ready


def big(n: int) -> None:
    from magnus import flush, track_this

    t0 = time.monotonic()
    for i in range(1, n + 1):
        track_this(step=i, loss=1000.0 if i == (7 * n) // 9 else 1.0 / i)
    ok = flush(timeout=300)
    emit({"n": n, "flush_ok": ok, "s": time.monotonic() - t0})


def steady(rate: float, seconds: float, outfile: str) -> None:
    from magnus import flush, track_this

    track_this(step=0, loss=1.0)
    warm_ok = ready(flush)
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
    emit({"n": i, "t_first": t_first, "t_last": t_last, "t_flushed": mono(), "flush_ok": ok,
          "warm_ok": warm_ok, "max_burst": max_burst})


def main() -> None:
    mode = sys.argv[1]
    if mode == "big":
        big(int(sys.argv[2]))
    elif mode == "steady":
        steady(float(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
