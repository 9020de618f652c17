"""Who is tracking: run id, rank, host and process identity, as pure functions of the environment.

Run id (design §14), first that is set: `MAGNUS_RUN_ID`; `TORCHELASTIC_RUN_ID` (torchrun; not
"none"); `SLURM_JOB_ID` (with `_<SLURM_ARRAY_TASK_ID>` in an array job). So every rank of one
distributed job, on any host, writes one run. Rank: `RANK`, `SLURM_PROCID`,
`OMPI_COMM_WORLD_RANK`, `PMI_RANK`; None when none is set. Host: `MAGNUS_HOST`, else the
hostname (so tests can play several hosts on one machine).
"""

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds: never on `import magnus`
    from collections.abc import Mapping
    from typing import Any

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
TRACK_PREFIX = "MAGNUS_TRACK_"


def run_id_from(environ: "Mapping[str, str]") -> str | None:
    """The run id the environment names, or None (the SDK then makes one)."""
    if run_id := environ.get("MAGNUS_RUN_ID"):
        return run_id
    elastic = environ.get("TORCHELASTIC_RUN_ID")
    if elastic and elastic.lower() != "none":
        return elastic
    if job := environ.get("SLURM_JOB_ID"):
        task = environ.get("SLURM_ARRAY_TASK_ID")
        return f"{job}_{task}" if task else job
    return None


def rank_from(environ: "Mapping[str, str]") -> int | None:
    for name in RANK_VARIABLES:
        raw = environ.get(name)
        if raw is not None and raw.strip().isdigit():
            return int(raw)
    return None


def host_from(environ: "Mapping[str, str]") -> str:
    return environ.get("MAGNUS_HOST") or os.uname().nodename


def process_start_ticks(pid: int | str = "self") -> int:
    """The process's start time in clock ticks since boot (tells a reused pid apart); 0 unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def pid_namespace() -> int:
    """The inode of this process's pid namespace: pids compare only within one; 0 unknown."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def new_run_id() -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S-") + os.urandom(3).hex()


def env_metrics(environ: "Mapping[str, str]") -> "dict[str, Any]":
    """`MAGNUS_TRACK_<key>` variables, values parsed as JSON with the raw string as fallback."""
    out: dict[str, Any] = {}
    names = [n for n in list(environ) if n.startswith(TRACK_PREFIX) and len(n) > len(TRACK_PREFIX)]
    if not names:
        return out
    import json

    for name in names:
        raw = environ.get(name, "")
        try:
            out[name[len(TRACK_PREFIX):]] = json.loads(raw)
        except ValueError:
            out[name[len(TRACK_PREFIX):]] = raw
    return out
