"""Shared fixtures: a real `magnusd serve` subprocess on a private socket and data directory
(the harness itself is tests/harness.py, shared with the benchmarks).

Every test gets isolated paths through the environment (`MAGNUS_*`), so nothing touches the
user's real daemon, and client scripts run as separate Python processes, as users run them.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import MAGNUSD, PY, Daemon, wait_for

__all__ = ["MAGNUSD", "PY", "Daemon", "wait_for"]  # test files import these from conftest


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
