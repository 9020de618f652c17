"""A baseline revision's SDK next to the working tree's, for one-run comparisons
(track_this.py --baseline, track_values.py): `git archive REV sdk/magnus` extracted to a temp
dir (read-only git use) and imported through PYTHONPATH, ahead of the editable install.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import _common as C
from _common import REPO
from _results import Result


def git(*args: str) -> str:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never refresh the index
    return subprocess.run(["git", "-C", str(REPO), *args], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def extract_sdk(rev: str, dest: Path) -> str:
    """`git archive REV sdk/magnus | tar -x -C dest`; returns the full commit id. The SDK is
    then importable with PYTHONPATH=dest/sdk."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", commit, "sdk/magnus"],
                               stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=False)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0 or tar.returncode != 0:
        raise RuntimeError(f"could not extract sdk/magnus at {rev}")
    if not (dest / "sdk" / "magnus" / "__init__.py").is_file():
        raise RuntimeError(f"no sdk/magnus/__init__.py at {rev}")
    return commit


def worktree_state() -> str:
    """HEAD and whether sdk/ or daemon/ differ from it (the working tree is what runs)."""
    head = git("rev-parse", "HEAD")
    dirty = sorted(set(git("diff", "--name-only", "HEAD", "--", "sdk", "daemon").split()
                       + git("ls-files", "--others", "--exclude-standard", "--", "sdk",
                             "daemon").split()))
    return f"HEAD {head[:12]}" + (f", **uncommitted changes in {', '.join(dirty)}**" if dirty
                                  else ", sdk/ and daemon/ unchanged from HEAD")


def import_cost(runs: int, sdks: dict[str, Path | None]) -> tuple[list[Result], list[str]]:
    """Median wall time of `python -c 'import magnus'` minus `python -c pass`, per SDK, all
    interleaved, bytecode writing allowed (a warm-up run of each first: the .pyc files exist)."""
    env = C.clean_env()
    for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH"):
        env.pop(k, None)
    cmds: dict[str, tuple[list[str], dict[str, str]]] = {"pass": ([C.PY, "-c", "pass"], env)}
    for sdk, path in sdks.items():
        cmds[sdk] = ([C.PY, "-c", "import magnus"],
                     env if path is None else dict(env, PYTHONPATH=str(path)))
    times: dict[str, list[float]] = {k: [] for k in cmds}
    loads = []
    for i in range(runs + 1):
        loads.append(os.getloadavg()[0])
        for k, (cmd, e) in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, env=e, check=True)
            if i:  # run 0 is the warm-up
                times[k].append((time.perf_counter() - t0) * 1000)
    base = statistics.median(times["pass"])
    added = {k: [t - base for t in v] for k, v in times.items() if k != "pass"}
    res = [Result(name=f"`import magnus` added ({k})", unit="ms", n=runs,
                  median=statistics.median(v), load=statistics.median(loads))
           for k, v in added.items()]
    if "baseline" in added:
        res[-1].ratio, res[-1].peer = res[-1].median / res[0].median, "baseline"
        res = [res[-1], res[0]]  # current first
    probe = ("import sys; a = set(sys.modules); import magnus; "
             "print(' '.join(sorted(set(sys.modules) - a)))")
    mods = subprocess.run([C.PY, "-c", probe], env=env, capture_output=True, text=True,
                          check=True).stdout.split()
    return res, mods
