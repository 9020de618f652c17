"""One run per distributed job (design §14): every rank writes the same run, rank 0's metrics are
the step's, the others' go to `rank_metrics` and reach trackers as `rank<r>/<key>`.

Run with real `torch.distributed` (torchrun, gloo backend, CPU) and with processes that set the
variables SLURM sets."""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import PY, Daemon, wait_for

TRAIN = """
import os
from magnus import step, track_this, flush
{setup}
with step("train"):
    for i in range(1, 51):
        track_this(step=i, loss={loss})
    track_this(world={world})
{teardown}
assert flush(30)
"""


def file_cfg(path: Path) -> str:
    return f"experiment_tracker:\n  type: file\n  config: {{path: '{path}'}}\n"


def check_job(d: Daemon, run_id: str, out: Path, ranks: int) -> dict[str, Any]:
    log = wait_for(lambda: (r := d.show(run_id)) and r["status"] == "SUCCESS" and r,
                   timeout=60, what=f"run {run_id} SUCCESS")
    assert [r["run_id"] for r in json.loads(d.cli("runs", "--json").stdout)] == [run_id]
    step = log["steps"]["train"]
    attempts = step["attempts"]
    assert sorted(a["rank"] for a in attempts) == list(range(ranks))
    assert len({a["pid"] for a in attempts}) == ranks
    assert all(a["status"] == "SUCCESS" and a["end_reason"] is None for a in attempts)
    want0 = {f"loss_{i}": float(i) for i in range(1, 51)} | {"world": ranks}
    assert step["user_defined_metrics"] == want0
    assert step["rank_metrics"] == {
        str(r): {f"loss_{i}": float(r * 100 + i) for i in range(1, 51)} | {"world": ranks}
        for r in range(1, ranks)}
    wait_for(lambda: d.status()["trackers"][0]["caught_up"], what="file tracker caught up")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    by_key: dict[str, list[float]] = {}
    for e in lines:
        by_key.setdefault(e["key"], []).append(e["value"])
    assert by_key["loss"] == [float(i) for i in range(1, 51)]
    for r in range(1, ranks):
        assert by_key[f"rank{r}/loss"] == [float(r * 100 + i) for i in range(1, 51)]
        assert {e["rank"] for e in lines if e["key"] == f"rank{r}/loss"} == {r}
    return log  # type: ignore[no-any-return]


def test_slurm_tasks_write_one_run_with_per_rank_metrics(make_daemon: Callable[..., Daemon],
                                                         root: Path) -> None:
    out = root / "m.jsonl"
    d = make_daemon(file_cfg(out)).start()
    wait_for(lambda: d.status()["trackers"], what="tracker loaded")
    code = textwrap.dedent(TRAIN.format(
        setup="r = int(os.environ['SLURM_PROCID'])", loss="float(r * 100 + i)", world=3,
        teardown=""))
    procs = [subprocess.Popen([PY, "-c", code], cwd=root, stderr=subprocess.PIPE, text=True,
                              env=d.env | {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "7",
                                           "SLURM_PROCID": str(r)})
             for r in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    check_job(d, "4242_7", out, 3)


def test_torchrun_ranks_write_one_run_with_per_rank_metrics(make_daemon: Callable[..., Daemon],
                                                            root: Path) -> None:
    pytest.importorskip("torch")
    out = root / "m.jsonl"
    d = make_daemon(file_cfg(out)).start()
    wait_for(lambda: d.status()["trackers"], what="tracker loaded")
    script = root / "train.py"
    script.write_text(textwrap.dedent(TRAIN.format(
        setup=("import torch, torch.distributed as dist\n"
               "dist.init_process_group('gloo')\n"
               "r = dist.get_rank()\n"
               "if r == 0:\n"
               "    print('RUN', os.environ['TORCHELASTIC_RUN_ID'], flush=True)"),
        loss="torch.tensor(float(r * 100 + i))",  # a 0-d tensor: recorded as its number
        world="torch.tensor(dist.get_world_size())",
        teardown="dist.barrier()\ndist.destroy_process_group()")))
    r = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "4", str(script)],
                       env=d.env | {"OMP_NUM_THREADS": "1"}, cwd=root, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (run_id,) = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("RUN ")]
    check_job(d, run_id, out, 4)
