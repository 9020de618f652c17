"""Client process of benchmarks/recovery.py: a training loop that tracks until told to stop.

    python _recovery_client.py FIRST_STEP FLUSH_EVERY

After the handshake (`_client_io.ready`) it runs `track_this(step=i, loss=...)` for i =
FIRST_STEP, FIRST_STEP + 1, ... as fast as it can, calling `flush()` after every FLUSH_EVERY
calls, until a second line (or EOF) arrives on stdin (checked at each flush); then a last
flush() and one JSON line: calls made, flushes, whether every flush() returned True,
time.monotonic() stamps.
"""

from __future__ import annotations

import sys
import time

from _client_io import emit, ready, stop_event


def main() -> None:
    first, every = int(sys.argv[1]), int(sys.argv[2])
    from magnus import flush, track_this

    warm_ok = ready(flush)
    stop = stop_event()
    t_first = time.monotonic()
    i = first
    flushes, ok = 0, True
    while not stop.is_set():
        for j in range(i, i + every):
            # a loss curve with some jitter: no two consecutive values alike
            track_this(step=j, loss=2.0 / (1.0 + j * 1e-5) + ((j * 7919) % 1000) * 1e-5)
        i += every
        ok = flush(timeout=120) and ok
        flushes += 1
    t_last = time.monotonic()
    emit({"n": i - first, "flushes": flushes, "flush_ok": ok, "warm_ok": warm_ok,
          "t_first": t_first, "t_last": t_last, "t_flushed": time.monotonic()})


if __name__ == "__main__":
    main()
