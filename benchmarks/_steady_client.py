"""Client process of benchmarks/swap.py: emits events at a steady rate until told to stop.

    python _steady_client.py RATE

After the handshake (`_client_io.ready`) it runs `track_this(loss=i * 1e-6, step=i)` for i = 0,
1, ... keeping up with RATE events/s (checked every ~1 ms; a late tick catches up in a burst)
until a second line (or EOF) arrives on stdin; then flush() and one JSON line: how many events
were sent, time.monotonic() stamps, whether flush() returned True.
"""

from __future__ import annotations

import sys
import time

from _client_io import emit, ready, stop_event


def main() -> None:
    rate = float(sys.argv[1])
    from magnus import flush, track_this

    warm_ok = ready(flush)
    stop = stop_event()
    mono, sleep = time.monotonic, time.sleep
    t_first = mono()
    i = 0
    max_behind = 0
    while not stop.is_set():
        target = int((mono() - t_first) * rate)
        max_behind = max(max_behind, target - i)
        while i < target:
            track_this(loss=i * 1e-6, step=i)
            i += 1
        sleep(0.001)
    t_last = mono()
    ok = flush(timeout=120)
    emit({"n": i, "t_first": t_first, "t_last": t_last, "t_flushed": mono(), "flush_ok": ok,
          "warm_ok": warm_ok, "max_burst": max_behind})


if __name__ == "__main__":
    main()
