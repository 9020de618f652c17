"""Helpers shared by the benchmarks. The daemon harness (`Daemon`, `wait_for`, clients) is the
tests' one, tests/harness.py: tests/ goes on sys.path here, so the benchmarks and the tests drive
the daemon the same way. Results are `_results` Structs; `render.py` writes the Markdown.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

import harness  # noqa: E402 - after the sys.path entry above
from harness import MAGNUSD, PY, clean_env, mem_kb, send, tracker, wait_for  # noqa: E402

__all__ = ["MAGNUSD", "PY", "Daemon", "clean_env", "mem_kb", "send", "tracker", "wait_for"]


class Daemon(harness.Daemon):
    """The harness's daemon, its status asked in-process (the benchmarks poll it often)."""

    def __init__(self, root: Path, config_text: str | None = None,
                 extra_env: dict[str, str] | None = None, *, spool_dir: str | None = None,
                 command: Sequence[str] | None = None) -> None:
        super().__init__(root, config_text, extra_env, spool_dir=spool_dir, command=command,
                         in_process_status=True)

    def run_log(self, run_id: str) -> dict[str, Any]:
        """`magnusd show RUN_ID --json`; raises when there is no such run."""
        run = self.show(run_id)
        if run is None:
            raise RuntimeError(f"magnusd show {run_id} failed")
        return run

    def finish(self, root: Path | None, keep: bool, timeout: float = 60.0) -> dict[str, Any]:
        """Stop (never raising on a slow stop), remove `root` (None: keep it); how it went."""
        code = self.stop(timeout, check=False)
        res = {"daemon_exit": code, "stop_s": self.stop_s, "daemon_log_problems":
               self.log_problems()}
        if root is not None:
            remove_tree(root, keep)
        return res

    def start_client(self, script: str, args: Sequence[str], run_id: str,
                     **env: str) -> subprocess.Popen[str]:
        """One `script` process on run `run_id`, once it printed `ready` (`start_clients`)."""
        return self.start_clients(script, args, [run_id], **env)[0]


def log_exceptions(text: str) -> dict[str, tuple[int, str]]:
    """Each distinct exception line ending a traceback in a log: (how many, last frame)."""
    out: dict[str, tuple[int, str]] = {}
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if not ln.startswith("Traceback"):
            continue
        where = ""
        for j in range(i + 1, len(lines)):
            if lines[j].startswith("  File "):
                where = lines[j].strip()
            elif lines[j] and not lines[j].startswith(" "):
                n, _ = out.get(lines[j], (0, ""))
                out[lines[j]] = (n + 1, where)
                break
    return out


class Ended(msgspec.Struct, kw_only=True):
    """How a case's daemon ended (`Daemon.finish`): a base of the cases' result Structs."""

    daemon_exit: int
    stop_s: float
    daemon_log_problems: list[str]

    def problems(self, where: str) -> list[str]:
        """Its log's problems and a non-zero exit, a line each."""
        out = [f"{where} daemon log: {p[:300]}" for p in self.daemon_log_problems]
        return out + ([f"{where}: daemon exited {self.daemon_exit}"] if self.daemon_exit else [])


def check_python() -> None:
    """The benchmarks need the project's venv (magnus, magnusd and its dependencies)."""
    if not os.path.exists(MAGNUSD):
        sys.exit(f"no magnusd beside {PY}: run with the project's venv, e.g. .venv/bin/python "
                 f"{sys.argv[0]}")


def short_tmpdir(prefix: str) -> Path:
    """A fresh directory under /tmp with a short path (AF_UNIX paths are limited to 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def remove_tree(path: Path, keep: bool) -> None:
    if keep:
        print(f"(kept {path})", file=sys.stderr)
    else:
        shutil.rmtree(path, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def metric_keys_ok(run: dict[str, Any], step_name: str, key: str, steps: range
                   ) -> tuple[int, list[str]]:
    """How many of the expected `key` / `key_<i>` entries the step log holds, and up to 5
    missing names."""
    m = run.get("steps", {}).get(step_name, {}).get("user_defined_metrics", {})
    found, missing = 0, list[str]()
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


def spread(sorted_vals: Sequence[float]) -> dict[str, float]:
    """min, p50, p90, p99 and max of already sorted values (NaN for none)."""
    v, nan = sorted_vals, float("nan")
    return {"min": v[0] if v else nan, "p50": percentile(v, 50), "p90": percentile(v, 90),
            "p99": percentile(v, 99), "max": v[-1] if v else nan}


def med(xs: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(xs) if xs else float("nan")


def last_json(code: int | None, out: str, err: str, what: str) -> dict[str, Any]:
    """A client's results: the last line of its stdout as JSON, its stderr added as `stderr`."""
    if code != 0 or not out.strip():
        raise RuntimeError(f"{what} exited {code}:\n{err[-2000:]}")
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    res["stderr"] = err.strip()
    return res


def client_json(cmd: list[str], env: dict[str, str], timeout: float = 900,
                cwd: Path | None = None) -> dict[str, Any]:
    """Run a client script to the end; its results (`last_json`)."""
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    return last_json(r.returncode, r.stdout, r.stderr, " ".join(cmd[1:3]))


def read_ready(procs: Sequence[subprocess.Popen[str]], timeout: float = 300
               ) -> list[dict[str, Any]]:
    """Wait for clients started with `Daemon.start_clients` to exit; their results."""
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)  # sets p.returncode
        outs.append(last_json(p.returncode, out, err, "client"))
    return outs


def kill_all(procs: Sequence[subprocess.Popen[str] | None]) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()  # our own child, by pid
            p.wait()


def stderr_problems(text: str) -> str:
    """Lines of a client's stderr worth reporting (not the libraries' INFO chatter)."""
    keep = [ln for ln in text.splitlines()
            if any(w in ln for w in ("WARN", "ERROR", "Error", "Traceback", "CRITICAL"))]
    return "\n".join(keep)[:500]


# -- processes, from /proc ----------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children of all its threads, recursively)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of pid's descendants alive now (e.g. the browser under chromedriver)."""
    return sum(x for p in descendants(pid) if (x := cpu_seconds(p)) == x)


def proc_field(pid: int, name: str, key: str) -> str:
    """/proc/<pid>/<name>: the whole file stripped (key ""), or the value after `key:`."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            if not key:
                return f.read().strip()
            for line in f:
                if line.startswith(key + ":"):
                    return line.split()[1]
    except OSError:
        pass
    return ""
