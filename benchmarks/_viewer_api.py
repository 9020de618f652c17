"""The viewer's HTTP side for benchmarks/viewer.py: GETs over one keep-alive connection, timed;
the runs spooled before the daemon starts; a bare reader of a run's event stream.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import statistics
import threading
import time
from typing import Any

import msgspec

import _common as C


class Timed(msgspec.Struct):
    """Requests of one API path, ms: the first (cold) alone, then n more."""

    first: float
    median: float
    p99: float
    max: float
    bytes: int
    n: int



class Api:
    """GETs over one keep-alive connection, timed from the request sent to the last byte."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path: str) -> tuple[float, int, Any, int]:
        """(ms, status, decoded JSON, body bytes)."""
        sep = "&" if "?" in path else "?"
        for attempt in (1, 2):  # uvicorn closes a connection idle for 5 s: then a new one
            t0 = time.perf_counter()
            try:
                self.conn.request("GET", f"{path}{sep}token={self.token}")
                r = self.conn.getresponse()
                body = r.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                if attempt == 2:
                    raise
        ms = (time.perf_counter() - t0) * 1000
        return ms, r.status, json.loads(body), len(body)

    def json(self, path: str) -> Any:
        _, status, body, _ = self.get(path)
        if status != 200:
            raise RuntimeError(f"{path}: {status} {body}")
        return body


def timed_requests(api: Api, path: str, n: int, check: Any) -> dict[str, Any]:
    ms0, st, body, size = api.get(path)
    if st != 200:
        raise RuntimeError(f"{path}: {st} {str(body)[:200]}")
    check(body)
    times = []
    for _ in range(n):
        ms, st, body, size = api.get(path)
        if st != 200:
            raise RuntimeError(f"{path}: {st}")
        times.append(ms)
    check(body)
    s = sorted(times)
    return {"first": ms0, "median": statistics.median(s), "p99": C.percentile(s, 99),
            "max": s[-1], "bytes": size, "n": n}


def caught_up(d: C.Daemon, min_seq: int) -> bool:
    st = d.status()
    return bool(st["journal"]["last_seq"] >= min_seq
                and st["runlog"]["applied_seq"] == st["journal"]["last_seq"])


class StreamSink(threading.Thread):
    """Reads `/api/events?run_id=RUN` on a bare socket and throws it away (counting bytes and
    the time of the last one): the daemon's side of a live page, without a browser."""

    def __init__(self, port: int, token: str, run_id: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(f"GET /api/events?run_id={run_id}&token={token} HTTP/1.1\r\n"
                          f"Host: 127.0.0.1:{port}\r\n\r\n".encode())
        self.bytes = 0
        self.last = time.monotonic()
        self.start()

    def run(self) -> None:
        buf = bytearray(1 << 20)
        try:
            while n := self.sock.recv_into(buf):
                self.bytes += n
                self.last = time.monotonic()
        except OSError:
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.join(10)


