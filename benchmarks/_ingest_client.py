"""Client process of benchmarks/ingest.py: sends N events as fast as it can, then flush().

    python _ingest_client.py N

Warms up (one flush(): the SDK connects and imports msgspec), prints "ready", waits for a line
on stdin, then runs `track_this(loss=..., step=i)` for i = 0..N-1 and `flush()`, and prints one
JSON line with time.monotonic() stamps (system-wide on Linux, so comparable across processes).
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    n = int(sys.argv[1])
    from magnus import flush, track_this

    warm_ok = flush(timeout=30)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    t_first = time.monotonic()
    for i in range(n):
        track_this(loss=i * 1e-6, step=i)
    t_loop = time.monotonic()
    ok = flush(timeout=300)
    t_flushed = time.monotonic()
    sys.stdout.write(json.dumps({"t_first": t_first, "t_loop": t_loop, "t_flushed": t_flushed,
                                 "flush_ok": ok, "warm_ok": warm_ok}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
