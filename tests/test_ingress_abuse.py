"""Ingress under abuse: malformed clients, foreign uids, a second daemon, a stale socket.

Every test runs the real `magnusd serve` subprocess and talks to it over a raw AF_UNIX socket
(design §10: a protocol violation gets an `Error` frame and a closed connection; nobody else is
affected; other uids are refused; a lock guards the socket and the data directory).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conftest import MAGNUSD, Daemon, wait_for
from magnus import _protocol as proto

N_GOOD = 20_000
RECV_TIMEOUT = 10.0


# -- raw protocol helpers --------------------------------------------------------------------

def hello(version: int = proto.PROTOCOL_VERSION, client_id: str = "raw") -> bytes:
    return proto.frame(proto.Hello(version, client_id, os.getpid()))


def batch(run_id: str, records: list[Any], seq: int = 1, client_id: str = "raw",
          step_name: str = "main") -> bytes:
    return proto.frame(proto.Batch(client_id, seq, run_id, "", step_name, records))


def raw_frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(RECV_TIMEOUT)
    try:
        s.connect(path)
    except BaseException:
        s.close()
        raise
    return s


def read_until_close(s: socket.socket, timeout: float = RECV_TIMEOUT) -> bytes:
    """Everything the daemon sends until it closes the connection (fails on timeout)."""
    data = bytearray()
    end = time.monotonic() + timeout
    while True:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the daemon did not close the connection within {timeout} s; "
                                 f"received so far: {decode_all(bytes(data))!r}") from None
        except ConnectionResetError:
            break  # closed with our unread bytes pending: still a close
        if not chunk:
            break
        data += chunk
    return bytes(data)


def decode_all(data: bytes) -> list[Any]:
    payloads, used, error = proto.split_frames(data)
    assert error is None, f"the daemon sent a bad frame: {error}"
    assert used == len(data), f"the daemon sent a truncated frame: {data[used:]!r}"
    return [proto.decoder.decode(p) for p in payloads]


def send_quietly(s: socket.socket, data: bytes) -> None:
    # the daemon may already have closed: what it replied is checked after
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(data)


def exchange(path: str, *sends: bytes, pause: float = 0.0) -> list[Any]:
    """Send each chunk (separately), then read every reply until the daemon closes."""
    s = connect(path)
    try:
        for i, chunk in enumerate(sends):
            if i and pause:
                time.sleep(pause)
            send_quietly(s, chunk)
        return decode_all(read_until_close(s))
    finally:
        s.close()


def assert_refused(msgs: list[Any], *needles: str, welcome: bool = False) -> str:
    """The last message is an Error whose text holds every needle; nothing else but Welcome."""
    assert msgs, "the daemon closed the connection without an Error frame"
    err = msgs[-1]
    assert isinstance(err, proto.Error), f"expected an Error frame last, got {msgs!r}"
    for n in needles:
        assert n.lower() in err.message.lower(), f"{n!r} not in the error {err.message!r}"
    before = msgs[:-1]
    if welcome:
        assert [type(m) for m in before] == [proto.Welcome], msgs
    else:
        assert not before, f"unexpected replies before the Error: {msgs!r}"
    return err.message


def assert_logged_disconnect(d: Daemon, message: str) -> None:
    wait_for(lambda: "disconnected" in d.log_text() and message in d.log_text(), timeout=10,
             what=f"the daemon log to record the disconnect ({message!r})")


# -- the bad clients -------------------------------------------------------------------------
# Each: (what it sends, as separate chunks; substrings of the expected Error; Welcome first?)

TS = 1_700_000_000.0
GOOD_BATCH = [(0, TS, {"ok": 1})]


def _case_table() -> dict[str, tuple[list[bytes], tuple[str, ...], bool]]:
    big = 2 << 20  # 2 MiB declared, over the 1 MiB maximum
    return {
        "garbage_first": ([b"\xff" * 64], ("exceeds the maximum",), False),
        "garbage_after_hello": ([hello(), b"\xff" * 64], ("exceeds the maximum",), True),
        "garbage_payload_after_hello": ([hello(), raw_frame(b"\xc1" * 16)],
                                        ("malformed",), True),
        "zero_length_frame": ([hello(), b"\x00\x00\x00\x00"], ("length 0",), True),
        "zero_length_first": ([b"\x00\x00\x00\x00"], ("length 0",), False),
        "oversized_header": ([hello(), big.to_bytes(4, "big") + b"x" * 1000],
                             ("exceeds the maximum",), True),
        "oversized_header_first": ([big.to_bytes(4, "big")], ("exceeds the maximum",), False),
        "wrong_shape_map": ([hello(), raw_frame(msgspec.msgpack.encode({"a": 1}))],
                            ("malformed",), True),
        "wrong_shape_first": ([raw_frame(msgspec.msgpack.encode({"a": 1}))], ("malformed",),
                              False),
        "unknown_tag": ([hello(), raw_frame(msgspec.msgpack.encode(["nope", 1, 2]))],
                        ("malformed",), True),
        "bytes_value": ([hello(), batch("bad", [(1, TS, {"x": b"\x00\x01"})])],
                        ("malformed",), True),
        "negative_step": ([hello(), batch("bad", [(-1, TS, {"x": 1.0})])], ("malformed",),
                          True),
        "empty_key": ([hello(), batch("bad", [(1, TS, {"": 1.0})])], ("malformed",), True),
        "columnar_lengths": ([hello(), proto.frame(proto.Batch(
            "raw", 1, "bad", "", "main", [], True, ["x"], [1, 2], [TS], [1.0, 2.0]))],
            ("columnar",), True),
        "columnar_two_keys": ([hello(), proto.frame(proto.Batch(
            "raw", 1, "bad", "", "main", [], True, ["x", "y"], [1], [TS], [1.0]))],
            ("columnar",), True),
        "columnar_bytes_value": ([hello(), proto.frame(proto.Batch(
            "raw", 1, "bad", "", "main", [], True, ["x"], [1], [TS],
            [b"\x00"]))],  # type: ignore[list-item]  # the wrong type on purpose
            ("malformed",), True),
        "batch_before_hello": ([batch("bad", GOOD_BATCH)], ("hello",), False),
        "mark_before_hello": ([proto.frame(proto.StepMark("raw", 1, "bad", "", "main", "start",
                                                          TS))], ("hello",), False),
        "wrong_version": ([hello(version=proto.PROTOCOL_VERSION + 98)],
                          ("protocol version", str(proto.PROTOCOL_VERSION + 98)), False),
        "hello_twice": ([hello(), hello()], ("hello",), True),
        "daemon_message_from_client": ([hello(), proto.frame(proto.Ack(1))], ("unexpected",),
                                       True),
    }


CASES = _case_table()


GOOD_CLIENT = f"""
import os, time
from pathlib import Path
from magnus import track_this, flush

ready, go = Path(os.environ["T_READY"]), Path(os.environ["T_GO"])
for i in range(1, {N_GOOD // 2} + 1):
    track_this(loss=i * 0.5, step=i)
assert flush(timeout=60), "first flush failed"
ready.touch()
for i in range({N_GOOD // 2} + 1, {N_GOOD} + 1):
    track_this(loss=i * 0.5, step=i)
    if i % 200 == 0:
        time.sleep(0.002)  # keep sending while the bad clients run
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
print("FLUSHED", flush(timeout=60))
"""


def run_with_good_client(d: Daemon, root: Path, abuse: Callable[[], None]) -> None:
    """Run `abuse` while a well-behaved client is connected and tracking; check it lost nothing."""
    ready, go = root / "ready", root / "go"
    p = d.popen(GOOD_CLIENT, MAGNUS_RUN_ID="good", T_READY=str(ready), T_GO=str(go))
    try:
        wait_for(lambda: ready.exists() or p.poll() is not None, timeout=60,
                 what="the good client's first half")
        assert p.poll() is None, f"the good client died: {p.communicate()}"
        abuse()
    finally:
        go.touch()
        out, err = p.communicate(timeout=120)
    assert p.returncode == 0, f"good client failed:\n{out}\n{err}"
    assert "FLUSHED True" in out, f"the good client's flush() did not return True:\n{out}\n{err}"
    m = d.metrics("good", "main")
    assert m is not None, "run 'good' is missing"
    want = {f"loss_{i}": i * 0.5 for i in range(1, N_GOOD + 1)}
    missing = sorted(set(want) - set(m), key=lambda k: int(k.split("_")[1]))
    assert not missing, f"{len(missing)} keys lost, e.g. {missing[:5]}"
    wrong = [k for k, v in want.items() if m[k] != v]
    assert not wrong, f"wrong values: {[(k, m[k]) for k in wrong[:5]]}"
    assert set(m) == set(want), f"unexpected keys: {sorted(set(m) - set(want))[:5]}"


# -- (a) malformed input ---------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_bad_client_gets_error_and_is_disconnected(daemon: Daemon, root: Path, case: str) -> None:
    sends, needles, welcome = CASES[case]
    seen: list[str] = []

    def abuse() -> None:
        msgs = exchange(daemon.sock, *sends, pause=0.05)
        seen.append(assert_refused(msgs, *needles, welcome=welcome))

    run_with_good_client(daemon, root, abuse)
    assert_logged_disconnect(daemon, seen[0])
    # Nothing of the refused message reached the store.
    assert daemon.show("bad") is None, f"a refused message was stored: {daemon.show('bad')}"
    st = daemon.status()
    assert st["refused_clients"] >= 1
    assert st["clients"] <= 1  # only the CLI's own status connection may remain


def test_many_bad_clients_at_once_do_not_disturb_a_good_one(daemon: Daemon, root: Path) -> None:
    errors: list[BaseException] = []

    def one(case: str) -> None:
        sends, needles, welcome = CASES[case]
        try:
            assert_refused(exchange(daemon.sock, *sends), *needles, welcome=welcome)
        except BaseException as e:  # reported below
            errors.append(e)

    def abuse() -> None:
        threads = [threading.Thread(target=one, args=(c,)) for _ in range(4) for c in CASES]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, f"{len(errors)} bad clients misbehaved: {errors[:3]}"

    run_with_good_client(daemon, root, abuse)
    assert daemon.show("bad") is None
    assert daemon.status()["refused_clients"] >= 4 * len(CASES)


@pytest.mark.parametrize("split", [False, True], ids=["one_send", "separate_sends"])
def test_frames_before_the_bad_one_are_kept(daemon: Daemon, split: bool) -> None:
    good = batch("prefix", [(0, TS, {"answer": 42}), (7, TS, {"loss": 0.25})])
    bad = b"\xff" * 64
    sends = [hello(), good, bad] if split else [hello() + good + bad]
    msgs = exchange(daemon.sock, *sends, pause=0.05)
    message = assert_refused(msgs, "exceeds the maximum", welcome=True)
    assert_logged_disconnect(daemon, message)
    m = wait_for(lambda: daemon.metrics("prefix", "main"), timeout=10,
                 what="the batch sent before the garbage to be in the run log")
    assert m == {"answer": 42, "loss_7": 0.25}


def test_valid_batch_then_invalid_batch_keeps_the_valid_one(daemon: Daemon) -> None:
    good = batch("prefix2", [(3, TS, {"acc": 0.5})], seq=1)
    bad = batch("prefix2", [(4, TS, {"acc": b"raw bytes"})], seq=2)
    msgs = exchange(daemon.sock, hello() + good + bad)
    message = assert_refused(msgs, "malformed", welcome=True)
    assert_logged_disconnect(daemon, message)
    m = wait_for(lambda: daemon.metrics("prefix2", "main"), timeout=10, what="the valid batch")
    assert m == {"acc_3": 0.5}


def test_sync_before_the_bad_frame_is_acked(daemon: Daemon) -> None:
    """A client that asked for durability before breaking the protocol still gets its Ack."""
    data = hello() + batch("acked", GOOD_BATCH) + proto.frame(proto.Sync(5, urgent=True))
    msgs = exchange(daemon.sock, data + b"\xff" * 64)
    assert [type(m) for m in msgs] == [proto.Welcome, proto.Ack, proto.Error], msgs
    assert msgs[1].seq == 5
    assert daemon.metrics("acked", "main") == {"ok": 1}


# -- (b) other uids and socket permissions ---------------------------------------------------

NOBODY = 65534
RAW_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
except OSError:
    pass
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
    if sys.argv[3] == "one":
        break
print(data.hex())
"""


def _python_for_nobody() -> str:
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable):
        if os.path.exists(cand) and subprocess.run(
                [cand, "-c", "pass"], user=NOBODY, group=NOBODY, capture_output=True,
                timeout=30).returncode == 0:
            return cand
    pytest.skip(f"no Python interpreter executable by uid {NOBODY}")


def _open_up(d: Daemon) -> None:
    """Let uid 65534 reach the socket (the tmp root is 0700)."""
    os.chmod(d.root, 0o755)
    os.chmod(os.path.dirname(d.sock), 0o755)
    os.chmod(d.sock, 0o777)


def _as_nobody(d: Daemon, payload: bytes, mode: str = "close") -> list[Any]:
    py = _python_for_nobody()
    r = subprocess.run([py, "-c", RAW_CLIENT, d.sock, payload.hex(), mode], user=NOBODY,
                       group=NOBODY, extra_groups=[], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"the uid {NOBODY} client failed: {r.stderr}"
    return decode_all(bytes.fromhex(r.stdout.strip()))


needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="switching to another uid (65534) needs root")


@needs_root
def test_other_uid_is_refused(daemon: Daemon) -> None:
    _open_up(daemon)
    msgs = _as_nobody(daemon, hello() + batch("foreign", GOOD_BATCH))
    assert len(msgs) == 1 and isinstance(msgs[0], proto.Error), msgs
    assert msgs[0].message == f"uid {NOBODY} may not use this daemon"
    wait_for(lambda: f"refused a client of uid {NOBODY}" in daemon.log_text(), timeout=10,
             what="the daemon log to record the refusal")
    assert daemon.show("foreign") is None
    assert daemon.status()["refused_clients"] >= 1


@needs_root
def test_allowed_other_uid_is_accepted(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(config_text="", extra_env={"MAGNUS_ALLOW_UIDS": str(NOBODY)}).start()
    _open_up(d)
    msgs = _as_nobody(d, hello(), mode="one")
    assert [type(m) for m in msgs] == [proto.Welcome], msgs


def test_socket_and_its_new_directory_are_private(make_daemon: Callable[..., Daemon],
                                                  root: Path) -> None:
    d = make_daemon(config_text="")
    d.sock = str(root / "new" / "sub" / "d.sock")
    assert not os.path.exists(os.path.dirname(d.sock))
    d.start()
    assert stat.S_ISSOCK(os.lstat(d.sock).st_mode)
    assert stat.S_IMODE(os.lstat(d.sock).st_mode) == 0o600, oct(os.lstat(d.sock).st_mode)
    dmode = stat.S_IMODE(os.stat(os.path.dirname(d.sock)).st_mode)
    assert dmode == 0o700, oct(dmode)
    assert d.status()["socket"] == d.sock


# -- (c) a second daemon ---------------------------------------------------------------------

def _second_serve(first: Daemon, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    e = first.env
    e.update(env)
    t0 = time.monotonic()
    r = subprocess.run([MAGNUSD, "serve"], env=e, capture_output=True, text=True, timeout=30)
    return r, time.monotonic() - t0


def _first_still_serves(d: Daemon, run_id: str) -> None:
    assert d.proc is not None and d.proc.poll() is None, "the first daemon died"
    assert stat.S_ISSOCK(os.lstat(d.sock).st_mode), "the first daemon's socket is gone"
    st = d.status()
    assert st["pid"] == d.proc.pid
    r = d.client("""
        from magnus import track_this, flush
        track_this(answer=42)
        assert flush(timeout=20)
    """, MAGNUS_RUN_ID=run_id)
    assert r.returncode == 0
    assert d.metrics(run_id, "main") == {"answer": 42}


@pytest.mark.parametrize("what", ["both", "socket", "data_dir"])
def test_second_daemon_exits_and_first_keeps_serving(daemon: Daemon, root: Path,
                                                     what: str) -> None:
    assert daemon.proc is not None
    env = {}
    if what == "socket":  # same socket, another data directory
        env["MAGNUS_DATA_DIR"] = str(root / "data2")
    elif what == "data_dir":  # same data directory, another socket
        env["MAGNUS_SOCKET"] = str(root / "s2" / "d.sock")
    r, took = _second_serve(daemon, **env)
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"a second daemon started:\n{out}"
    assert took < 10, f"the second daemon took {took:.1f} s to give up"
    assert "another magnusd" in out and f"pid {daemon.proc.pid}" in out, out
    assert "Traceback" not in out, out
    expect = "socket" if what == "socket" else "data directory"
    assert expect in out, out
    _first_still_serves(daemon, f"after-second-{what}")


# -- (d) a stale socket ----------------------------------------------------------------------

def test_stale_socket_from_killed_daemon_is_replaced(daemon: Daemon) -> None:
    daemon.client("""
        from magnus import track_this, flush
        track_this(before=1)
        assert flush(timeout=20)
    """, MAGNUS_RUN_ID="stale")
    daemon.kill9()
    assert stat.S_ISSOCK(os.lstat(daemon.sock).st_mode), "kill -9 should leave the socket file"
    with pytest.raises(ConnectionRefusedError):
        connect(daemon.sock)
    r = daemon.cli("status", check=False)
    assert r.returncode != 0
    daemon.start()
    assert daemon.status()["pid"] == daemon.proc.pid  # type: ignore[union-attr]
    daemon.client("""
        from magnus import track_this, flush
        track_this(after=2)
        assert flush(timeout=20)
    """, MAGNUS_RUN_ID="stale")
    assert daemon.metrics("stale", "main") == {"before": 1, "after": 2}


def test_non_socket_file_at_the_socket_path_is_not_deleted(make_daemon: Callable[..., Daemon]
                                                            ) -> None:
    d = make_daemon(config_text="")
    os.makedirs(os.path.dirname(d.sock), mode=0o700)
    Path(d.sock).write_text("precious")
    r = subprocess.run([MAGNUSD, "serve"], env=d.env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0
    assert "not a socket" in r.stderr, r.stderr
    assert Path(d.sock).read_text() == "precious"

