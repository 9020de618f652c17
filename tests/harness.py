"""The one daemon harness of the tests and the benchmarks: a real `magnusd serve` subprocess on a
private socket, data directory and config under `root`, the CLI and client processes pointed at
it, and `wait_for`.

Every daemon gets isolated paths through the environment (`MAGNUS_*`), so nothing touches the
user's real daemon, and client scripts run as separate Python processes, as users run them.
The tests import it as `harness` (pytest puts tests/ on sys.path; conftest.py re-exports it);
the benchmarks put tests/ on sys.path in benchmarks/_common.py. Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PY = sys.executable
MAGNUSD = str(Path(PY).parent / "magnusd")
# Debian's Chromium and its driver (make test installs them), for the viewer's browser checks
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


class WaitTimeout(AssertionError, TimeoutError):
    """`wait_for` gave up: a failed assertion to pytest, a TimeoutError to the benchmarks."""


class DaemonExited(AssertionError):
    """The daemon is gone: `wait_for` stops polling at once instead of waiting it out."""


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, every: float = 0.05,
             what: str = "condition") -> Any:
    """Poll `pred` until it returns something truthy and return that. Exceptions count as
    "not yet" (the last one is reported on timeout), except DaemonExited, which is raised."""
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = pred()
            if last:
                return last
        except DaemonExited:
            raise
        except Exception as e:  # keep polling, report the last failure
            last = e
        time.sleep(every)
    raise WaitTimeout(f"timed out after {timeout} s waiting for {what}; last={last!r}")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any MAGNUS_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGNUS_")}
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mem_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of process `pid` in kB from /proc/<pid>/status, (0, 0) when unreadable
    (gone, or not ours to read)."""
    vals = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k = line.split(":")[0]
                if k in vals:
                    vals[k] = int(line.split()[1])
    except OSError:
        pass
    return vals["VmRSS"], vals["VmHWM"]


def tracker(st: dict[str, Any], name: str) -> dict[str, Any]:
    """Tracker `name` in a status; {} while the daemon does not list it."""
    return next((t for t in st.get("trackers", []) if t["name"] == name), {})


class Followed:
    """What `Daemon.follow` saw, in time.monotonic(): when the run log caught up (`runlog`), when
    each tracker first delivered (time, events) and had delivered all (`done`), its largest
    pending; `st` the last status."""

    def __init__(self, names: Sequence[str]) -> None:
        self.runlog: float | None = None
        self.first: dict[str, tuple[float, int]] = {}
        self.done: dict[str, float] = {}
        self.max_pending = dict.fromkeys(names, 0)
        self.st: dict[str, Any] = {}


class Daemon:
    """A `magnusd serve` subprocess on private paths under `root`, and the CLI pointed at it.

    `config_text` is written to the config file (none: no file, so no trackers); `extra_env` is
    added to the environment of the daemon, its CLI calls and clients (its tracker workers
    inherit it); `command` replaces `[magnusd, "serve"]` (e.g. a profiler around it);
    `spool_dir` sets MAGNUS_SPOOL_DIR; `in_process_status` makes `status()` ask over the socket
    from this process (a CLI start costs ~0.1 s, too coarse for the benchmarks' polling)
    instead of running `magnusd status --json`. The web viewer listens on a free port of its
    own (MAGNUS_UI_LISTEN=127.0.0.1:0), so it runs as in a default daemon and never competes
    for 7470 with another daemon on the machine.
    """

    def __init__(self, root: Path, config_text: str | None = None,
                 extra_env: dict[str, str] | None = None, *, spool_dir: str | None = None,
                 command: Sequence[str] | None = None, in_process_status: bool = False) -> None:
        self.root = root
        self.sock = str(root / "s" / "d.sock")  # short: AF_UNIX paths are limited to 108 bytes
        self.data = root / "data"
        self.config = root / "cfg" / "config.yaml"
        self.config.parent.mkdir(parents=True, exist_ok=True)
        if config_text is not None:
            self.config.write_text(config_text)
        self.extra_env = dict(extra_env or {})
        self.spool_dir = spool_dir
        self.command = list(command) if command else [MAGNUSD, "serve"]
        self.log = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_s = float("nan")  # SIGTERM to exit, set by stop()
        self.in_process_status = in_process_status

    @property
    def env(self) -> dict[str, str]:
        e = clean_env(MAGNUS_SOCKET=self.sock, MAGNUS_DATA_DIR=str(self.data),
                      MAGNUS_CONFIG=str(self.config),
                      MAGNUS_UI_LISTEN="127.0.0.1:0")  # a viewer each, on a free port
        if self.spool_dir:
            e["MAGNUS_SPOOL_DIR"] = self.spool_dir
        e.update(self.extra_env)
        return e

    # -- the process -------------------------------------------------------------------------

    def start(self, wait: bool = True, args: tuple[str, ...] = (), timeout: float = 30.0
              ) -> Daemon:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([*self.command, *args], env=self.env, stdout=logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=self.root)
        if wait:
            wait_for(self.alive, timeout=timeout, what="the daemon to answer status")
        return self

    def alive(self) -> bool:
        """`magnusd status` exits 0; raises DaemonExited when the process is gone."""
        if self.proc is not None and self.proc.poll() is not None:
            raise DaemonExited(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
        r = subprocess.run([MAGNUSD, "status"], env=self.env, capture_output=True, timeout=20)
        return r.returncode == 0

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 60.0, *, check: bool = True) -> int:
        """SIGTERM and wait for the graceful exit (its duration lands in `stop_s`); returns the
        exit code. Past `timeout` the process group is killed, and with `check` that fails."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            if check:
                raise AssertionError(f"daemon did not stop within {timeout} s of SIGTERM"
                                     ) from None
            return self.proc.returncode
        finally:
            self.stop_s = time.monotonic() - t0

    def rss_kb(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the daemon process in kB, (0, 0) when unreadable. The daemon
        only: each tracker runs in its own worker process (see `workers`)."""
        return mem_kb(self.proc.pid) if self.proc is not None else (0, 0)

    def log_text(self, tail: int | None = 5000) -> str:
        """The daemon's log (its last `tail` characters; None: all of it)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return text if tail is None else text[-tail:]

    def log_problems(self) -> list[str]:
        """Log lines at WARNING or above, and tracebacks."""
        return [ln for ln in self.log_text(None).splitlines()
                if " WARNING " in ln or " ERROR " in ln or " CRITICAL " in ln
                or ln.startswith("Traceback")]

    # -- asking it ---------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([MAGNUSD, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if check:
            assert r.returncode == 0, f"magnusd {' '.join(args)} failed: {r.stderr}"
        return r

    def status(self) -> dict[str, Any]:
        """`magnusd status --json` (asked in-process with `in_process_status`)."""
        if self.in_process_status:
            try:
                from magnusd._cli import request_status
            except ImportError:  # the daemon's modules moved: ask through the CLI
                self.in_process_status = False
            else:
                return request_status(self.sock)
        out = self.cli("status", "--json").stdout
        return json.loads(out)  # type: ignore[no-any-return]

    def show(self, run_id: str) -> dict[str, Any] | None:
        """`magnusd show <run_id> --json`, None when it fails (no such run)."""
        r = self.cli("show", run_id, "--json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def metrics(self, run_id: str, step: str = "main") -> dict[str, Any] | None:
        log = self.show(run_id)
        if log is None or step not in log["steps"]:
            return None
        return log["steps"][step]["user_defined_metrics"]  # type: ignore[no-any-return]

    def wait_applied(self, min_events: int, timeout: float = 120.0,
                     every: float = 0.01) -> tuple[float, dict[str, Any]]:
        """Poll status until the run log caught up with the journal and `events_total` reached
        `min_events`; return (time.monotonic() at that moment, the status)."""
        def caught_up() -> dict[str, Any] | None:
            st = self.status()
            ok = (st["events_total"] >= min_events
                  and st["runlog"]["applied_seq"] == st["journal"]["last_seq"])
            return st if ok else None

        st: dict[str, Any] = wait_for(caught_up, timeout, every, "the run log to catch up")
        return time.monotonic(), st

    def workers(self, st: dict[str, Any] | None = None) -> dict[str, int]:
        """Tracker name -> its worker's pid, from `status` (trackers without a live worker
        are left out)."""
        st = st if st is not None else self.status()
        return {t["name"]: t["pid"] for t in st.get("trackers", []) if t.get("pid")}

    def watch(self, step: Callable[[dict[str, Any], float], bool], timeout: float,
              every: float = 0.01, what: str = "condition") -> dict[str, Any]:
        """Ask `status` every `every` s and pass it with time.monotonic() to `step` until that
        returns True; the last status. TimeoutError (the last status in it) past `timeout`."""
        end = time.monotonic() + timeout
        while True:
            st = self.status()
            now = time.monotonic()
            if step(st, now):
                return st
            if now > end:
                raise TimeoutError(f"{what}: not within {timeout} s; trackers "
                                   f"{st.get('trackers')}\n{self.log_text(3000)}")
            time.sleep(every)

    def follow(self, base: dict[str, Any], n: int, names: Sequence[str] = (), *, timeout: float,
               runlog: bool = True, every: float = 0.01, caught_up: bool = False,
               sample: Callable[[dict[str, Any]], None] | None = None) -> Followed:
        """Poll `status` (each passed to `sample`) until `n` events more than in `base` are in
        the journal, the run log caught up with it (with `runlog`) and each named tracker
        delivered `n` more with none pending (and says `caught_up`, with `caught_up`)."""
        f = Followed(names)
        b_deliv = {k: tracker(base, k).get("delivered", 0) for k in names}

        def step(st: dict[str, Any], now: float) -> bool:
            if sample is not None:
                sample(st)
            journaled = st["events_total"] - base["events_total"] >= n
            if (f.runlog is None and journaled
                    and st["runlog"]["applied_seq"] == st["journal"]["last_seq"]):
                f.runlog = now
            for k in names:
                t = tracker(st, k)
                got = t.get("delivered", 0) - b_deliv[k]
                f.max_pending[k] = max(f.max_pending[k], t.get("pending", 0))
                if k not in f.first and got > 0:
                    f.first[k] = (now, got)
                if (k not in f.done and journaled and t.get("pending") == 0 and got >= n
                        and (t.get("caught_up") or not caught_up)):
                    f.done[k] = now
            f.st = st
            return (f.runlog is not None or not runlog) and len(f.done) == len(names)

        self.watch(step, timeout, every, "caught up")
        return f

    def trackers_up(self, names: Sequence[str], timeout: float = 60.0, every: float = 0.02
                    ) -> dict[str, Any]:
        """Poll status until every named tracker is `running` with a worker pid; that status."""
        st: dict[str, Any] = wait_for(lambda: (s := self.status()) and all(
            (t := tracker(s, n)).get("state") == "running" and t.get("pid")
            for n in names) and s, timeout, every, f"trackers {list(names)} running")
        return st

    # -- clients -----------------------------------------------------------------------------

    def client_env(self, **env: str) -> dict[str, str]:
        e = self.env
        e.update({k: str(v) for k, v in env.items()})
        return e

    def client(self, code: str, *, check: bool = True, timeout: float = 300,
               **env: str) -> subprocess.CompletedProcess[str]:
        """Run `code` in a fresh Python process wired to this daemon."""
        r = subprocess.run([PY, "-c", textwrap.dedent(code)], env=self.client_env(**env),
                           capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if check:
            assert r.returncode == 0, f"client failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r

    def popen(self, code: str, **env: str) -> subprocess.Popen[str]:
        """Start `code` in a fresh Python process wired to this daemon (pipes for its output)."""
        return subprocess.Popen([PY, "-c", textwrap.dedent(code)], env=self.client_env(**env),
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=self.root)

    def start_clients(self, script: str, args: Sequence[str], run_ids: Sequence[str],
                      **env: str) -> list[subprocess.Popen[str]]:
        """One `script` process per run id (MAGNUS_RUN_ID), each waited for until it prints
        `ready`; they read commands from stdin (see `send`)."""
        procs = []
        for rid in run_ids:
            procs.append(subprocess.Popen([PY, script, *args],
                                          env=self.client_env(MAGNUS_RUN_ID=rid, **env),
                                          text=True, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"client not ready: {line!r} "
                                   f"{p.stderr.read() if p.stderr else ''}")
        return procs


def send(procs: Sequence[subprocess.Popen[str]], text: str) -> None:
    """Write `text` to every client's stdin."""
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(text)
        p.stdin.flush()


def chromium(**capabilities: Any) -> Any:
    """A headless Debian Chromium driven through its chromedriver (never a downloaded one)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM or ""
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000"):
        opts.add_argument(arg)
    for name, value in capabilities.items():
        opts.set_capability(name, value)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def bulk_runs_spool(n: int) -> bytes:
    """n runs of one step each (start, one point, end), as a client's spool file holds them."""
    from magnus import _protocol as proto

    frames = []
    for i in range(n):
        run, tag = f"bulk{i:05d}", "even" if i % 2 == 0 else "odd"
        frames.append(proto.frame(proto.StepMark(f"c{i}", 1, run, tag, "main", "start",
                                                 1.7e9 + i, "", f"a{i}", "h", 1, 0, None)))
        frames.append(proto.frame(proto.Batch(f"c{i}", 2, run, tag, "main",
                                              [(1, 1.7e9 + i, {"x": i})])))
        frames.append(proto.frame(proto.StepMark(f"c{i}", 3, run, tag, "main", "end",
                                                 1.7e9 + i + 1, "SUCCESS", f"a{i}", "h", 1)))
    return b"".join(frames)
