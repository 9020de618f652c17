"""Fuzzing the socket of a live daemon while a good client streams (design §10): whatever
arrives — random bytes, msgpack of wrong shapes, wrong types in the right shapes, huge declared
lengths, deep nesting, partial frames sent slowly, idle connections, connect/close storms, the
fd limit — the good client loses nothing, the daemon keeps answering, its memory stays bounded
and it leaks no file descriptors.

More examples: MAGNUS_FUZZ_EXAMPLES=5000 (the soak sets it)."""

from __future__ import annotations

import os
import resource
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import MAGNUSD, Daemon, wait_for

pytestmark = pytest.mark.reliability
EXAMPLES = int(os.environ.get("MAGNUS_FUZZ_EXAMPLES", "300"))
N = 200_000
GOOD = f"""
    from magnus import track_this, flush
    for i in range(1, {N} + 1):
        track_this(step=i, x=i)
        if i % 10_000 == 0:
            assert flush(60)
"""


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def hello() -> bytes:
    return frame(msgspec.msgpack.encode(["hello", 1, "fuzz" + os.urandom(4).hex(), 0]))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=5),
    max_leaves=30)
tags = st.sampled_from(["hello", "batch", "mark", "sync", "status", "context", "ack", "x", ""])
shaped = st.tuples(tags, st.lists(json_values, max_size=12)).map(lambda t: [t[0], *t[1]])
payloads = st.one_of(
    st.binary(max_size=2000).map(lambda b: (b"", b)),                       # raw bytes
    st.binary(min_size=1, max_size=2000).map(lambda b: (b"", frame(b))),    # framed garbage
    json_values.map(lambda v: (hello(), frame(msgspec.msgpack.encode(v)))),
    shaped.map(lambda v: (hello(), frame(msgspec.msgpack.encode(v)))),      # right tags, wrong
    shaped.map(lambda v: (b"", frame(msgspec.msgpack.encode(v)))),          # ... no hello
    st.integers(0, 2**32 - 1).map(lambda n: (b"", struct.pack(">I", n) + b"\x91")),  # lengths
    st.integers(1, 3000).map(lambda d: (hello(), frame(b"\x91" * d + b"\xc0"))),     # nesting
)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def exchange(path: str, data: bytes, wait: float = 0.2) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(wait)
    try:
        s.connect(path)
        s.sendall(data)
        try:
            while s.recv(65536):
                pass
        except (TimeoutError, OSError):
            pass
    except OSError:
        pass
    finally:
        s.close()


@pytest.fixture
def live(make_daemon: Callable[..., Daemon]) -> Iterator[tuple[Daemon, subprocess.Popen[str]]]:
    d = make_daemon("").start()
    client = d.popen(GOOD, MAGNUS_RUN_ID="good")
    yield d, client
    if client.poll() is None:
        client.kill()
    for pipe in (client.stdout, client.stderr):  # closed, whatever happened to the test
        if pipe is not None:
            pipe.close()
    client.wait(10)


def finish(d: Daemon, client: subprocess.Popen[str], fds_before: int) -> dict[str, Any]:
    _, err = client.communicate(timeout=300)
    assert client.returncode == 0, err
    m = d.metrics("good") or {}
    assert len([k for k in m if k.startswith("x_")]) == N  # the good client lost nothing
    st_ = d.status()
    assert d.proc is not None
    pid = d.proc.pid
    # the run store keeps the good run's files open (log, index, series): a few more than
    # right after start, not one per connection
    wait_for(lambda: fds(pid) <= fds_before + 6, what="descriptors released")
    return {"rss_mb": rss_mb(pid), "fds_before": fds_before, "fds_after": fds(pid),
            "status": st_}


@pytest.mark.timeout(60 + EXAMPLES // 20)  # about 80 examples a second here; the soak runs 5000
def test_random_input_never_hurts_the_good_client_or_the_daemon(
        live: tuple[Daemon, subprocess.Popen[str]]) -> None:
    d, client = live
    assert d.proc is not None
    before = fds(d.proc.pid)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(payloads)
    def one(case: tuple[bytes, bytes]) -> None:
        head, body = case
        exchange(d.sock, head + body, wait=0.05)

    one()
    assert d.status()["refused_clients"] > 0  # the fuzz did reach the protocol checks
    got = finish(d, client, before)
    assert got["rss_mb"] < 200, got
    print(f"fuzz: {EXAMPLES} examples, daemon peak RSS {got['rss_mb']:.1f} MB, "
          f"fds {got['fds_before']} -> {got['fds_after']}")


def test_slow_partial_frames_idle_connections_and_storms(
        live: tuple[Daemon, subprocess.Popen[str]]) -> None:
    d, client = live
    assert d.proc is not None
    before = fds(d.proc.pid)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    try:
        idle = []
        for _ in range(1000):  # idle connections: never say hello
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(d.sock)
            idle.append(s)
        loris = []
        for _ in range(50):  # a frame promised, sent a byte at a time
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(d.sock)
            s.sendall(hello() + struct.pack(">I", 100))
            loris.append(s)
        for _ in range(20):
            for s in loris:
                s.send(b"\x00")
            assert "pid" in d.status()  # still answering
            time.sleep(0.05)
        for s in idle + loris:
            s.close()
        for _ in range(2000):  # connect/close storm
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(d.sock)
            s.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    got = finish(d, client, before)
    print(f"storms: daemon peak RSS {got['rss_mb']:.1f} MB, "
          f"fds {got['fds_before']} -> {got['fds_after']}")


def test_out_of_file_descriptors_the_daemon_pauses_accepting_and_recovers(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    d = make_daemon("")
    with open(d.log, "ab") as log:
        d.proc = subprocess.Popen(["prlimit", "--nofile=64:64", MAGNUSD, "serve"], env=d.env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(d.alive, timeout=30, what="daemon up")
    held = []
    for _ in range(100):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(d.sock)  # the backlog takes them even when accept cannot
        held.append(s)
    wait_for(lambda: "cannot accept clients" in d.log.read_text(), what="accept paused")
    for s in held:
        s.close()
    wait_for(lambda: d.status()["accept_errors"] > 0, timeout=30, what="status answers again")
    d.client("""
        from magnus import track_this, flush
        for i in range(1, 1001):
            track_this(step=i, y=i)
        assert flush(30)
    """, MAGNUS_RUN_ID="after-emfile")
    assert len(d.metrics("after-emfile") or {}) == 1000
    assert d.proc.poll() is None
