"""systemd integration: sd_notify sequence, watchdog, socket activation, units, journald logs."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import MAGNUSD, Daemon
from magnus import _protocol as proto
from magnusd import _units


class NotifyListener:
    """A fake $NOTIFY_SOCKET: a datagram socket the test binds (a path or abstract)."""

    def __init__(self, root: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"magnus-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            root.mkdir(parents=True, exist_ok=True)
            self.address = str(root / "notify.sock")
            self.sock.bind(self.address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))

    def until(self, pred: Callable[[list[str]], bool], timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.pump(0.05)
            if pred(self.kinds()):
                return
        raise AssertionError(f"notify messages so far: {self.kinds()}")

    def kinds(self) -> list[str]:
        """Messages without STATUS-only updates and watchdog pings."""
        return [m for _, m in self.messages
                if m != "WATCHDOG=1" and not m.startswith(("STATUS=", "EXTEND_TIMEOUT_USEC="))]


@pytest.fixture
def listener(root: Path) -> Iterator[Callable[[bool], NotifyListener]]:
    made: list[NotifyListener] = []

    def make(abstract: bool) -> NotifyListener:
        made.append(NotifyListener(root / str(len(made)), abstract))
        return made[-1]

    yield make
    for n in made:
        n.sock.close()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_sequence(make_daemon: Callable[..., Daemon],
                         listener: Callable[[bool], NotifyListener], abstract: bool) -> None:
    n = listener(abstract)
    d = make_daemon("", extra_env={"NOTIFY_SOCKET": n.address}).start(wait=False)
    n.until(lambda k: len(k) >= 1)
    assert d.alive()
    assert n.kinds()[0].startswith("READY=1")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    n.until(lambda k: len(k) >= 3)
    d.config.write_text("experiment_tracker:\n  type: do-nothing\n")
    n.until(lambda k: len(k) >= 5)
    d.proc.send_signal(signal.SIGTERM)
    n.until(lambda k: len(k) >= 6)
    assert d.proc.wait(30) == 0
    k = n.kinds()
    assert [m.split("\n")[0] for m in k] == ["READY=1", "RELOADING=1", "READY=1",
                                            "RELOADING=1", "READY=1", "STOPPING=1"], k
    for reloading in (k[1], k[3]):  # one datagram: RELOADING=1 with MONOTONIC_USEC
        fields = dict(line.split("=", 1) for line in reloading.split("\n"))
        now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 < now_us - int(fields["MONOTONIC_USEC"]) < 60_000_000
    statuses = [m for _, m in n.messages if "STATUS=" in m]
    assert statuses and all("\n" not in m.split("STATUS=", 1)[1] for m in statuses)


def test_watchdog_period_and_pid(make_daemon: Callable[..., Daemon],
                                 listener: Callable[[bool], NotifyListener]) -> None:
    n = listener(False)
    d = make_daemon("", extra_env={"NOTIFY_SOCKET": n.address,
                                   "WATCHDOG_USEC": "400000"}).start()
    n.pump(2.0)
    pings = [t for t, m in n.messages if m == "WATCHDOG=1"]
    assert len(pings) >= 6, n.messages
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert 0.1 < sorted(gaps)[len(gaps) // 2] < 0.3  # every WATCHDOG_USEC / 2
    d.stop()
    # WATCHDOG_PID names another process: not ours to ping for
    n2 = listener(True)
    d2 = make_daemon("", extra_env={"NOTIFY_SOCKET": n2.address, "WATCHDOG_USEC": "200000",
                                    "WATCHDOG_PID": "1"}).start()
    n2.pump(1.0)
    assert not [m for _, m in n2.messages if m == "WATCHDOG=1"]
    assert any(m.startswith("READY=1") for _, m in n2.messages)
    d2.stop()


def read_frame(s: socket.socket) -> object:
    buf = b""
    while True:
        frames, _, error = proto.split_frames(buf)
        assert error is None
        if frames:
            return proto.decoder.decode(frames[0])
        chunk = s.recv(65536)
        assert chunk, "closed"
        buf += chunk


def test_socket_activation(make_daemon: Callable[..., Daemon], root: Path) -> None:
    d = make_daemon("")
    Path(d.sock).parent.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(d.sock)
    listener.listen(16)
    # A client connects and sends before any daemon runs: the kernel queues it.
    early = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    early.connect(d.sock)
    early.sendall(proto.frame(proto.Hello(proto.PROTOCOL_VERSION, "early", os.getpid()))
                  + proto.frame(proto.Batch("early", 1, "act1", "", "s", [(0, time.time(),
                                                                              {"early": 1})]))
                  + proto.frame(proto.Sync(1, True)))
    fd = listener.fileno()
    wrapper = (f'exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 '
               f'LISTEN_FDNAMES=magnusd.socket exec "$0" serve')
    logf = open(d.log, "ab")  # noqa: SIM115
    d.proc = subprocess.Popen(["bash", "-c", wrapper, MAGNUSD], env=d.env, pass_fds=(fd,),
                              stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                              cwd=root)
    logf.close()
    listener.close()  # the daemon owns it now
    early.settimeout(30)
    assert isinstance(read_frame(early), proto.Welcome)
    assert read_frame(early) == proto.Ack(1)
    early.close()
    assert d.metrics("act1", "s") == {"early": 1}
    st = d.status()
    assert st["socket_activated"] is True and st["socket"] == d.sock
    d.client("from magnus import track_this, flush\ntrack_this(later=2)\nassert flush(10)",
             MAGNUS_RUN_ID="act1", MAGNUS_STEP_NAME="s")
    assert d.metrics("act1", "s") == {"early": 1, "later": 2}
    # a second daemon on the activated socket (another data directory) is refused
    env = {**d.env, "MAGNUS_DATA_DIR": str(root / "data2")}
    r = subprocess.run([MAGNUSD, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "another daemon is serving" in r.stderr, r.stderr
    assert d.alive()
    assert d.stop() == 0
    assert Path(d.sock).exists(), "an inherited socket is never unlinked"
    assert "socket-activated" in d.log_text()


def test_activation_with_the_wrong_socket_type_is_a_clear_error(make_daemon: Callable[..., Daemon],
                                                                 root: Path) -> None:
    d = make_daemon("")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    fd = udp.fileno()
    wrapper = f'exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" serve'
    r = subprocess.run(["bash", "-c", wrapper, MAGNUSD], env=d.env, pass_fds=(fd,),
                       capture_output=True, text=True, timeout=30)
    udp.close()
    assert r.returncode != 0
    assert "AF_UNIX stream socket" in r.stderr and "Traceback" not in r.stderr


def test_journald_log_format(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon("", extra_env={"JOURNAL_STREAM": "8:12345"}).start()
    d.stop()
    lines = [x for x in d.log_text().splitlines() if x.strip()]
    assert lines and all(x.startswith(("<6>", "<4>", "<3>", "<7>")) for x in lines), lines
    assert any(x.startswith("<6>magnusd: ready") for x in lines)


def test_systemd_dir_matches_the_rendered_units() -> None:
    here = Path(__file__).parent.parent / "systemd"
    for scope in ("user", "system"):
        for name, text in _units.render(scope).items():
            assert (here / scope / name).read_text() == text, f"systemd/{scope}/{name}"


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    return path


@pytest.mark.parametrize("scope", ["user", "system"])
def test_units_pass_systemd_analyze_verify(root: Path, scope: str) -> None:
    tool = systemd_analyze()
    version = _units.systemd_version() or 0
    target = root / scope
    r = subprocess.run([MAGNUSD, "install-units", f"--{scope}", "--target", str(target)],
                       capture_output=True, text=True, check=True)
    assert "systemctl" in r.stdout and "enable --now magnusd.socket" in r.stdout
    text = (target / "magnusd.service").read_text()
    assert f"ExecStart={_units.this_magnusd()} serve" in text
    assert ("Type=notify-reload" in text) == (version >= 253)
    runtime = root / "xdg"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    args = [tool, "verify", *(["--user"] if scope == "user" else []),
            str(target / "magnusd.service"), str(target / "magnusd.socket")]
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    print(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not r.stderr.strip(), r.stderr


def test_notify_reload_units_only_lack_the_new_type_on_old_systemd(root: Path) -> None:
    tool = systemd_analyze()
    for name, text in _units.render("system", _units.this_magnusd()).items():
        (root / name).write_text(text)
    r = subprocess.run(
        [tool, "verify", str(root / "magnusd.service"), str(root / "magnusd.socket")],
        capture_output=True, text=True)
    problems = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
    if (_units.systemd_version() or 0) >= 253:
        assert r.returncode == 0 and not problems
    else:  # the only complaint: Type=notify-reload is newer than this systemd
        assert problems and all("notify-reload" in x for x in problems), problems


def test_install_units_dry_run_writes_nothing(root: Path) -> None:
    r = subprocess.run([MAGNUSD, "install-units", "--system", "--dry-run", "--target",
                        str(root / "t")], capture_output=True, text=True, check=True)
    assert "[Socket]" in r.stdout and "SocketGroup=magnus" in r.stdout
    assert not (root / "t").exists()
