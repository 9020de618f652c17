"""Client process of benchmarks/ingest.py, swap.py and viewer.py: sends N events as fast as it
can, then flush().

    python _ingest_client.py N [STEP_NAME]

After the handshake (`_client_io.ready`) it runs `track_this(loss=..., step=i)` for
i = 0..N-1 (inside `step(STEP_NAME)` when given) and `flush()`, and prints one JSON line with
time.monotonic() stamps (system-wide on Linux, so comparable across processes).
"""

from __future__ import annotations

import contextlib
import sys
import time

from _client_io import emit, ready


def main() -> None:
    n = int(sys.argv[1])
    from magnus import flush, step, track_this

    warm_ok = ready(flush)
    t_first = time.monotonic()
    with step(sys.argv[2]) if len(sys.argv) > 2 else contextlib.nullcontext():
        for i in range(n):
            track_this(loss=i * 1e-6, step=i)
    t_loop = time.monotonic()
    ok = flush(timeout=300)
    t_flushed = time.monotonic()
    emit({"t_first": t_first, "t_loop": t_loop, "t_flushed": t_flushed, "flush_ok": ok,
          "warm_ok": warm_ok})


if __name__ == "__main__":
    main()
