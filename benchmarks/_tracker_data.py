"""The real trackers' data read back for benchmarks/trackers.py and rss.py: MLflow's metric
history, TensorBoard's event files, W&B's offline records, each against steps 1..N with value
1/step.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec


class PointsCheck(msgspec.Struct, kw_only=True):
    """A tracker's stored points read back against steps 1..N with value 1/step."""

    ok: bool
    points: int = 0
    missing: int = 0
    duplicates: int = 0
    unexpected: int = 0
    bad_values: int = 0
    error: str = ""



def check_points(points: list[tuple[int, float]], n: int, rel: float = 1e-9) -> dict[str, Any]:
    """(step, value) pairs against steps 1..n with value 1/step: counts of what is off."""
    seen = Counter(s for s, _ in points)
    missing = sum(1 for i in range(1, n + 1) if i not in seen)
    dups = sum(c - 1 for s, c in seen.items() if 1 <= s <= n and c > 1)
    unexpected = sum(c for s, c in seen.items() if not 1 <= s <= n)
    bad = sum(1 for s, v in points if 1 <= s <= n and abs(v - 1.0 / s) > rel / s)
    ok = missing == 0 and dups == 0 and unexpected == 0 and bad == 0
    return {"points": len(points), "missing": missing, "duplicates": dups,
            "unexpected": unexpected, "bad_values": bad, "ok": ok}


def mlflow_points(db: Path, *, mlflow_run_id: str | None = None,
                  magnus_run_id: str | None = None) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    if mlflow_run_id is None:
        exps = [e.experiment_id for e in client.search_experiments()]
        hits = client.search_runs(exps, filter_string=f"tags.`magnus.run_id` = '{magnus_run_id}'")
        if len(hits) != 1:
            raise RuntimeError(f"{len(hits)} MLflow runs tagged magnus.run_id={magnus_run_id}")
        mlflow_run_id = hits[0].info.run_id
    return [(m.step, m.value) for m in client.get_metric_history(mlflow_run_id, "loss")]


def tb_points(run_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if "loss" not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in acc.Scalars("loss")]


def _wandb_records(path: Path) -> Iterator[bytes]:
    from magnusd.trackers.wandb import offline_records

    return offline_records(path)


def wandb_rows(base: Path, wandb_id: str) -> list[dict[str, Any]]:
    """History rows of every offline directory of W&B run `wandb_id`."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows: list[dict[str, Any]] = []
    for p in sorted(base.glob(f"wandb/offline-run-*-{wandb_id}/run-{wandb_id}.wandb")):
        for raw in _wandb_records(p):
            r = pb.Record()
            r.ParseFromString(raw)
            if r.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                             for i in r.history.item})
    return rows


def verify(kind: str, where: Path, n: int, **ids: Any) -> dict[str, Any]:
    try:
        if kind in ("mlflow", "mlflow_metric", "mlflow_batch"):
            return check_points(mlflow_points(where, **ids), n)
        if kind in ("tensorboard", "tbx"):
            return check_points(tb_points(where), n, rel=1e-6)  # float32
        rows = [r for r in wandb_rows(where, ids["wandb_id"]) if "loss" in r]
        step_key = ids.get("step_key")
        # The daemon logs each key's magnus step as `magnus/step/<key>`; a plain
        # `wandb.log` row i (0-based `_step`) holds call i + 1.
        pts = [(r[step_key] if step_key else r["_step"] + 1, r["loss"]) for r in rows]
        return check_points(pts, n)
    except Exception as e:  # reported, not fatal: the other cases still run
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:300], "points": 0}


def verify_run(kind: str, root: Path, n: int, run_id: str) -> dict[str, Any]:
    """What tracker `kind` stored for `run_id`, its data under `root` as
    `_trackers_cases.tracker_yaml` puts it."""
    if kind == "mlflow":
        return verify(kind, root / "mlflow.db", n, magnus_run_id=run_id)
    if kind == "tensorboard":
        from magnusd._runstore import run_dirname

        return verify(kind, root / "tb" / run_dirname(run_id), n)
    from magnusd.trackers.wandb import wandb_run_id

    return verify(kind, root / "wb", n, wandb_id=wandb_run_id(run_id),
                  step_key="magnus/step/loss")


def landed(chk: PointsCheck | None, none: str = "-") -> str:
    """A report cell: how a tracker's data landed (`none` when it was not checked)."""
    if not chk:
        return none
    if chk.error:
        return f"FAIL ({chk.error})"
    if chk.ok:
        return f"{chk.points:,} ✓"
    return (f"FAIL: {chk.points:,} points, missing {chk.missing}, dup "
            f"{chk.duplicates}, unexpected {chk.unexpected}, bad {chk.bad_values}")
