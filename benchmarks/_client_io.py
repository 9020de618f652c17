"""What the benchmarks' client processes share (standard library only, so a client stays what
a user's training script would be): the "ready" handshake with the benchmark that started it
(`Daemon.start_clients`), the "stop" line, and the one JSON line of results.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Any


def ready(flush: Callable[..., bool]) -> bool:
    """Warm up (one flush(): the SDK connects and imports msgspec), print "ready", wait for the
    "go" line on stdin; whether the warm-up flush() returned True."""
    ok = flush(timeout=30)
    print("ready", flush=True)
    sys.stdin.readline()
    return ok


def stop_event() -> threading.Event:
    """An Event set when the next line (or EOF) arrives on stdin."""
    stop = threading.Event()

    def wait() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait, daemon=True).start()
    return stop


def emit(res: dict[str, Any]) -> None:
    """The results, one JSON line on stdout (the benchmark reads the last line)."""
    print(json.dumps(res), flush=True)
