"""Helpers shared by the benchmarks: a private `magnusd serve` subprocess, status polling,
run-log checks, percentiles and markdown output. Standard library only (plus the project).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
PY = sys.executable
MAGNUSD = str(Path(PY).parent / "magnusd")


def check_python() -> None:
    """The benchmarks need the project's venv (magnus, magnusd and its dependencies)."""
    if not os.path.exists(MAGNUSD):
        sys.exit(f"no magnusd beside {PY}: run with the project's venv, e.g. .venv/bin/python "
                 f"{sys.argv[0]}")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any MAGNUS_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGNUS_")}
    env.update(extra)
    return env


def short_tmpdir(prefix: str) -> Path:
    """A fresh directory under /tmp with a short path (AF_UNIX paths are limited to 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def wait_for(pred: Callable[[], Any], timeout: float, every: float = 0.05,
             what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}; last={last!r}")


class Daemon:
    """`magnusd serve` as a subprocess on private paths under `root`.

    `command` replaces the default `[magnusd, "serve"]` (the ingest benchmark's profiler);
    `extra_env` is added to its environment (its tracker workers inherit it), `cwd` is its
    working directory (default: this process's). The daemon's web viewer (on by default since
    9bcee4f, 127.0.0.1:7470) listens on a free port of its own (MAGNUS_UI_LISTEN), so that it
    runs in every benchmark daemon as in a default one and never competes for 7470 with
    another daemon on the machine; older daemons ignore the variable.
    """

    def __init__(self, root: Path, spool_dir: str | None = None,
                 command: Sequence[str] | None = None, extra_env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.root = root
        (root / "s").mkdir(parents=True, exist_ok=True)
        os.chmod(root / "s", 0o700)
        self.sock = str(root / "s" / "d.sock")
        self.data = str(root / "data")
        self.config = str(root / "config.yaml")  # missing file = no trackers
        self.spool_dir = spool_dir
        self.log = root / "daemon.log"
        self.command = list(command) if command else [MAGNUSD, "serve"]
        self.extra_env = dict(extra_env or {})
        self.ui_listen = f"127.0.0.1:{free_port()}"
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_s = float("nan")  # SIGTERM to exit
        self._status_fn: Callable[[str], dict[str, Any]] | None = None

    @property
    def env(self) -> dict[str, str]:
        e = clean_env(MAGNUS_SOCKET=self.sock, MAGNUS_DATA_DIR=self.data,
                      MAGNUS_CONFIG=self.config, MAGNUS_UI_LISTEN=self.ui_listen)
        if self.spool_dir:
            e["MAGNUS_SPOOL_DIR"] = self.spool_dir
        e.update(self.extra_env)
        return e

    def start(self, timeout: float = 30.0) -> Daemon:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=self.cwd)
        wait_for(self._answers, timeout, 0.05, "`magnusd status` to exit 0")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"magnusd exited with {self.proc.returncode}:\n{self.log_text()}")
        r = subprocess.run([MAGNUSD, "status"], env=self.env, capture_output=True, timeout=30)
        return r.returncode == 0

    def status(self) -> dict[str, Any]:
        """`magnusd status --json`, asked in-process (a CLI start costs ~0.1 s, too coarse for
        polling); falls back to the CLI when the project's helper is not importable."""
        if self._status_fn is None:
            try:
                from magnusd._cli import request_status

                self._status_fn = request_status
            except ImportError:
                self._status_fn = self._status_cli
        return self._status_fn(self.sock)

    def _status_cli(self, _sock: str) -> dict[str, Any]:
        r = subprocess.run([MAGNUSD, "status", "--json"], env=self.env, capture_output=True,
                           timeout=30, check=True)
        return json.loads(r.stdout)

    def status_cli(self) -> dict[str, Any]:
        return self._status_cli(self.sock)

    def show(self, run_id: str) -> dict[str, Any]:
        r = subprocess.run([MAGNUSD, "show", run_id, "--json"], env=self.env,
                           capture_output=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"magnusd show {run_id} failed: {r.stderr.decode().strip()}")
        return json.loads(r.stdout)

    def wait_applied(self, min_events: int, timeout: float = 120.0,
                     every: float = 0.01) -> tuple[float, dict[str, Any]]:
        """Poll status until the run log caught up with the journal and `events_total` reached
        `min_events`; return (time.monotonic() at that moment, the status)."""
        end = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < end:
            st = self.status()
            if (st["events_total"] >= min_events
                    and st["runlog"]["applied_seq"] == st["journal"]["last_seq"]):
                return time.monotonic(), st
            time.sleep(every)
        raise TimeoutError(f"run log did not catch up within {timeout} s: {st}")

    def rss_kb(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the daemon process in kB, (0, 0) when unreadable. The daemon
        only: each tracker runs in its own worker process (see `workers`)."""
        return mem_kb(self.proc.pid) if self.proc is not None else (0, 0)

    def workers(self, st: dict[str, Any] | None = None) -> dict[str, int]:
        """Tracker name -> its worker's pid, from `status` (trackers without a live worker
        are left out)."""
        st = st if st is not None else self.status()
        return {t["name"]: t["pid"] for t in st.get("trackers", []) if t.get("pid")}

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait for the graceful exit; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # our own child, by pid
                self.proc.wait()
            self.stop_s = time.monotonic() - t0
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_problems(self) -> list[str]:
        """Log lines at WARNING or above, and tracebacks."""
        return [ln for ln in self.log_text().splitlines()
                if " WARNING " in ln or " ERROR " in ln or " CRITICAL " in ln
                or ln.startswith("Traceback")]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    import socket

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


def metric_keys_ok(run: dict[str, Any], step_name: str, key: str, steps: range
                   ) -> tuple[int, list[str]]:
    """How many of the expected `key` / `key_<i>` entries the step log holds, and up to 5
    missing names."""
    m = run.get("steps", {}).get(step_name, {}).get("user_defined_metrics", {})
    found, missing = 0, []
    for i in steps:
        name = key if i == 0 else f"{key}_{i}"
        if name in m:
            found += 1
        elif len(missing) < 5:
            missing.append(name)
    return found, missing


def percentile(sorted_vals: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_vals:
        return float("nan")
    k = math.ceil(q / 100 * len(sorted_vals)) - 1
    return sorted_vals[max(0, min(len(sorted_vals) - 1, k))]


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def machine_line() -> str:
    import platform

    try:
        load = "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "load average unknown"
    return (f"{platform.python_implementation()} {platform.python_version()}, "
            f"{os.cpu_count()} CPU(s), {platform.machine()}, {load} (other processes on the "
            f"machine skew the tails), {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")


def write_report(name: str, text: str) -> Path:
    OUT_DIR.mkdir(exist_ok=True)
    path = OUT_DIR / f"{name}.md"
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


def remove_tree(path: Path, keep: bool) -> None:
    if keep:
        print(f"(kept {path})", file=sys.stderr)
    else:
        shutil.rmtree(path, ignore_errors=True)


def start_clients(script: str, arg: str | Sequence[str], d: Daemon, run_ids: list[str],
                  cspool: str) -> list[subprocess.Popen[str]]:
    """One client process per run id, each started and waited for until it prints `ready`
    (the daemon's `extra_env`, e.g. a PYTHONPATH, reaches the clients too)."""
    args = [arg] if isinstance(arg, str) else list(arg)
    procs = []
    for rid in run_ids:
        env = clean_env(MAGNUS_SOCKET=d.sock, MAGNUS_DATA_DIR=d.data, MAGNUS_CONFIG=d.config,
                          MAGNUS_RUN_ID=rid, MAGNUS_SPOOL_DIR=cspool)
        env.update(d.extra_env)
        procs.append(subprocess.Popen([PY, script, *args], env=env, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"client not ready: {line!r} "
                               f"{p.stderr.read() if p.stderr else ''}")
    return procs


def send(procs: list[subprocess.Popen[str]], text: str) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(text)
        p.stdin.flush()


def finish(d: Daemon, root: Path, keep: bool, res: dict[str, Any]) -> None:
    """Stop the daemon, note how it went in `res`, and remove the run's files."""
    res["daemon_exit"] = d.stop()
    res["stop_s"] = d.stop_s
    res["daemon_log_problems"] = d.log_problems()
    remove_tree(root, keep)
