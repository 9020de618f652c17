"""What the `wandb` tracker writes: W&B run ids, keys, values and history rows.

Pure naming and grouping rules (the `wandb` module's docstring documents them for users); no
import of `wandb` here. `log_rows` is the only function that touches a W&B run, and only through
`define_metric` and `log`, so the rules read in one place:

- a run id is the magnus run id when W&B accepts it, else a deterministic `[A-Za-z0-9_-]{1,64}`;
- each key `k` is plotted against its own hidden step metric `magnus/step/k`, never W&B's
  `_step` (which drops rows logged with a lower step); keys holding `*` get no `define_metric`;
- consecutive events go into one row per (key set, step), in delivery order.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from .._tracker import Event

STEP_PREFIX = "magnus/step/"
STATUS_PREFIX = "magnus/status/"
_ID_BAD = re.compile(r"[^A-Za-z0-9_-]")
_RESERVED = ("_step", "_runtime", "_timestamp")


def wandb_run_id(run_id: str) -> str:
    """The W&B run id of a magnus run: deterministic, `[A-Za-z0-9_-]{1,64}`."""
    s = _ID_BAD.sub("-", run_id)
    if s == run_id and 0 < len(s) <= 64:
        return s
    h = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f"{s[:55]}-{h}" if s else h


def wandb_key(key: str) -> str:
    if key in _RESERVED or key.startswith("_wandb"):
        return "magnus/" + key
    return key


def flatten(key: str, value: Any, out: list[tuple[str, Any]]) -> None:
    """(key, value) pairs W&B can log: dicts become dotted keys; lists, JSON strings."""
    t = type(value)
    if t is dict:
        if not value:
            out.append((key, "{}"))
        for k, v in value.items():
            flatten(f"{key}.{k}", v, out)
    elif value is None or t in (int, float, bool, str):
        out.append((key, value))
    else:
        out.append((key, json.dumps(value, default=repr)))


def log_rows(wrun: Any, defined: set[str], events: list[Event]) -> None:
    """Log the events of one run into `wrun`, defining each key's step metric on first use
    (`defined`: the metrics already defined in that run, updated in place)."""
    row: dict[str, Any] = {}
    row_step = 0
    for e in events:
        key = wandb_key(e.name)
        step_key = STEP_PREFIX + key
        pairs: list[tuple[str, Any]] = []
        flatten(key, e.value, pairs)
        if row and (e.step != row_step or step_key in row
                    or any(k in row for k, _ in pairs)):
            wrun.log(row)
            row = {}
        if not row:
            row_step = e.step
            row["_timestamp"] = e.timestamp
        glob_step = "*" in step_key
        if not glob_step and step_key not in defined:
            wrun.define_metric(step_key, hidden=True)
            defined.add(step_key)
        for k, v in pairs:
            if k not in defined and not glob_step and k and "*" not in k:
                wrun.define_metric(k, step_metric=step_key)
                defined.add(k)
            row[k] = v
        row[step_key] = e.step
    if row:
        wrun.log(row)
