"""Shared fixtures: a real `magnusd serve` subprocess on a private socket and data directory.

Every test gets isolated paths through the environment (`MAGNUS_*`), so nothing touches the
user's real daemon, and client scripts run as separate Python processes, as users run them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PY = sys.executable
MAGNUSD = str(Path(PY).parent / "magnusd")


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, every: float = 0.05,
             what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - keep polling, report the last failure
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}")


class Daemon:
    """A `magnusd serve` subprocess and the CLI pointed at it."""

    def __init__(self, root: Path, config_text: str | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.sock = str(root / "s" / "d.sock")  # short: AF_UNIX paths are limited to 108 bytes
        self.data = root / "data"
        self.config = root / "cfg" / "config.yaml"
        self.config.parent.mkdir(parents=True, exist_ok=True)
        if config_text is not None:
            self.config.write_text(config_text)
        self.extra_env = extra_env or {}
        self.log = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith("MAGNUS_")}
        e.update(MAGNUS_SOCKET=self.sock, MAGNUS_DATA_DIR=str(self.data),
                 MAGNUS_CONFIG=str(self.config),
                 MAGNUS_UI_LISTEN="127.0.0.1:0")  # a viewer each, on a free port
        e.update(self.extra_env)
        return e

    def start(self, wait: bool = True, args: tuple[str, ...] = ()) -> Daemon:
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the subprocess
        self.proc = subprocess.Popen([MAGNUSD, "serve", *args], env=self.env, stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=self.root)
        logf.close()
        if wait:
            wait_for(self.alive, timeout=30, what="the daemon to answer status")
        return self

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
        r = subprocess.run([MAGNUSD, "status"], env=self.env, capture_output=True, timeout=20)
        return r.returncode == 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def cli(self, *args: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([MAGNUSD, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if check:
            assert r.returncode == 0, f"magnusd {' '.join(args)} failed: {r.stderr}"
        return r

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json").stdout)  # type: ignore[no-any-return]

    def show(self, run_id: str) -> dict[str, Any] | None:
        r = self.cli("show", run_id, "--json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def metrics(self, run_id: str, step: str = "main") -> dict[str, Any] | None:
        log = self.show(run_id)
        if log is None or step not in log["steps"]:
            return None
        return log["steps"][step]["user_defined_metrics"]  # type: ignore[no-any-return]

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError("daemon did not stop within 60 s of SIGTERM") from None

    def client(self, code: str, *, check: bool = True, timeout: float = 300,
               **env: str) -> subprocess.CompletedProcess[str]:
        """Run `code` in a fresh Python process wired to this daemon."""
        e = self.env
        e.update({k: str(v) for k, v in env.items()})
        r = subprocess.run([PY, "-c", textwrap.dedent(code)], env=e, capture_output=True,
                           text=True, timeout=timeout, cwd=self.root)
        if check:
            assert r.returncode == 0, f"client failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r

    def popen(self, code: str, **env: str) -> subprocess.Popen[str]:
        e = self.env
        e.update({k: str(v) for k, v in env.items()})
        return subprocess.Popen([PY, "-c", textwrap.dedent(code)], env=e, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.root)


@pytest.fixture
def root() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="mg", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_daemon(root: Path) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(config_text: str | None = None, **kw: Any) -> Daemon:
        d = Daemon(root, config_text=config_text, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            os.killpg(d.proc.pid, signal.SIGKILL)
            d.proc.wait(10)


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon(config_text="").start()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In-process SDK use in tests must never reach a real daemon or the user's data."""
    for k in list(os.environ):
        if k.startswith("MAGNUS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("MAGNUS_SOCKET", str(tmp_path / "none.sock"))
    monkeypatch.setenv("MAGNUS_DATA_DIR", str(tmp_path / "data"))
