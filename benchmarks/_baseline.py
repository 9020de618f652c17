"""Which code the benchmarks measure (read-only git use): the working tree's state, or another
revision's sdk/magnus or daemon/magnusd (`git archive REV` extracted to a temp dir, imported
through PYTHONPATH ahead of the editable install), e.g. a baseline SDK next to the working
tree's (track_this.py --baseline, track_values.py, recovery.py --rev, rss.py --daemon-rev).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import _common as C
from _results import Result


def git(*args: str) -> str:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never refresh the index
    return subprocess.run(["git", "-C", str(C.REPO), *args], env=env, capture_output=True,
                          text=True, check=True, timeout=120).stdout.strip()


def tree_state(*paths: str) -> str:
    """HEAD, and how many files under `paths` have uncommitted changes."""
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    except (OSError, subprocess.SubprocessError) as e:
        return f"(git: {e})"
    n = len(dirty.splitlines())
    under = " ".join(f"{p}/" for p in paths)
    return f"HEAD {head}" + (f" + {n} uncommitted file(s) under {under}" if n else "")


def checkout(rev: str, dest: Path, *paths: str) -> tuple[str, str]:
    """`git archive REV PATHS | tar -x -C dest`: (the full commit id, a PYTHONPATH putting each
    path's parent first, e.g. dest/daemon for daemon/magnusd)."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    arch = subprocess.run(["git", "-C", str(C.REPO), "archive", commit, *paths],
                          capture_output=True, timeout=120, check=True)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch.stdout, check=True, timeout=120)
    return commit, ":".join(str(dest / Path(p).parent) for p in paths)


def import_origin(extra_env: dict[str, str], *modules: str) -> list[str]:
    """Where `modules` are imported from with `extra_env` (e.g. a PYTHONPATH)."""
    code = "; ".join(f"import {m}; print({m}.__file__)" for m in modules)
    r = subprocess.run([C.PY, "-c", code], env=C.clean_env(**extra_env), capture_output=True,
                       text=True, check=True, timeout=60)
    return r.stdout.split()


def extract_sdk(rev: str, dest: Path) -> str:
    """`git archive REV sdk/magnus | tar -x -C dest`; returns the full commit id. The SDK is
    then importable with PYTHONPATH=dest/sdk."""
    commit, _ = checkout(rev, dest, "sdk/magnus")
    if not (dest / "sdk" / "magnus" / "__init__.py").is_file():
        raise RuntimeError(f"no sdk/magnus/__init__.py at {rev}")
    return commit


def sdk_env(env: dict[str, str], sdk_dir: Path | None) -> tuple[dict[str, str], Path]:
    """`env` for a client importing the SDK at `sdk_dir` (a `git archive` copy, imported ahead
    of the editable install; None: the working tree's), and where `magnus` must come from."""
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    if sdk_dir is None:
        return env, C.REPO / "sdk" / "magnus"
    return env | {"PYTHONPATH": str(sdk_dir)}, sdk_dir / "magnus"


def import_cost(runs: int, sdks: dict[str, Path | None]) -> tuple[list[Result], list[str]]:
    """Per SDK, all interleaved, bytecode writing allowed (a warm-up run of each first: the
    .pyc files exist): the median wall time of `python -c 'import magnus'` minus that of
    `python -c pass`, and the median of `python -X importtime`'s cumulative time of `magnus`
    (the import alone, without the interpreter's start-up noise)."""
    env = C.clean_env()
    for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH"):
        env.pop(k, None)
    envs = {sdk: env if path is None else dict(env, PYTHONPATH=str(path))
            for sdk, path in sdks.items()}
    wall: dict[str, list[float]] = {k: [] for k in ("pass", *sdks)}
    cumul: dict[str, list[float]] = {k: [] for k in sdks}
    loads = []
    for i in range(runs + 1):
        loads.append(os.getloadavg()[0])
        for k in wall:
            cmd = [C.PY, "-c", "pass" if k == "pass" else "import magnus"]
            t0 = time.perf_counter()
            subprocess.run(cmd, env=envs.get(k, env), check=True)
            if i:  # run 0 is the warm-up
                wall[k].append((time.perf_counter() - t0) * 1000)
        for k in sdks:
            err = subprocess.run([C.PY, "-X", "importtime", "-c", "import magnus"], env=envs[k],
                                 capture_output=True, text=True, check=True).stderr
            us = [int(ln.split("|")[1]) for ln in err.splitlines() if ln.endswith("| magnus")]
            if i and us:
                cumul[k].append(us[-1] / 1000)
    base = statistics.median(wall["pass"])
    res = []
    for k in reversed(sdks):  # current first
        res.append(Result(name=f"`import magnus` added, wall clock ({k})", unit="ms", n=runs,
                          median=statistics.median(wall[k]) - base, load=C.med(loads)))
        res.append(Result(name=f"`import magnus`, -X importtime cumulative ({k})", unit="ms",
                          n=len(cumul[k]), median=C.med(cumul[k]), load=C.med(loads)))
    if "baseline" in sdks:
        for r, b in zip(res[:2], res[2:], strict=True):
            r.ratio, r.peer = r.median / b.median, "baseline"
    probe = ("import sys; a = set(sys.modules); import magnus; "
             "print(' '.join(sorted(set(sys.modules) - a)))")
    mods = subprocess.run([C.PY, "-c", probe], env=env, capture_output=True, text=True,
                          check=True).stdout.split()
    return res, mods
