"""Looking at runs from a terminal (design §12): `ui`, `tail`, `compare`, `show --plot`.

`tail` follows the journal itself, read-only, from its end (with or without a daemon running);
`compare` and `show --plot` read the series files; `ui` prints the viewer's link with its token.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from datetime import datetime
from typing import Any, TextIO

import msgspec

from magnus import _protocol as proto

from . import _records as records
from . import _series, _views
from ._errors import MagnusdError
from ._journal import Reader, list_segments
from ._settings import Settings

TAIL_POLL_S = 0.2
_decoder = msgspec.msgpack.Decoder(proto.Batch | proto.StepMark)


def ui_url(settings: Settings, status: dict[str, Any]) -> str:
    ui = status.get("ui") or {}
    if not ui.get("url"):
        raise MagnusdError(f"the daemon serves no viewer: {ui.get('error') or 'no url'}")
    try:
        with open(settings.token_path, encoding="ascii") as f:
            token = f.read().strip()
    except OSError as e:
        raise MagnusdError(f"cannot read the viewer's token {settings.token_path}: "
                           f"{e.strerror}") from None
    return f"{ui['url']}?token={token}"


def journal_end(journal_dir: str) -> int:
    """The last seq in the journal (0 when empty)."""
    segs = list_segments(journal_dir)
    if not segs:
        return 0
    last = segs[-1] - 1
    path = os.path.join(journal_dir, f"{segs[-1]:020d}.seg")
    for _, seq, _, _ in records.scan(records.read_file(path)):
        last = seq
    return last


def tail(settings: Settings, run: str | None, tag: str | None, key: str | None,
         out: TextIO = sys.stdout, limit: float | None = None) -> int:
    """Print journaled points and step marks as they come, until interrupted."""
    journal_dir = settings.journal_dir
    start = journal_end(journal_dir) + 1
    reader = Reader(journal_dir, start)
    print(f"following {journal_dir} from seq {start} (Ctrl-C ends)", file=sys.stderr, flush=True)
    deadline = None if limit is None else time.monotonic() + limit
    try:
        while deadline is None or time.monotonic() < deadline:
            batch = reader.read()
            if not batch:
                time.sleep(TAIL_POLL_S)
                continue
            for _, _, payload in batch:
                for line in _lines(_decoder.decode(payload), run, tag, key):
                    out.write(line + "\n")
            out.flush()
    except KeyboardInterrupt:
        pass
    return 0


def _lines(msg: Any, run: str | None, tag: str | None, key: str | None) -> list[str]:
    if (run and msg.run_id != run) or (tag and msg.tag != tag):
        return []
    if isinstance(msg, proto.StepMark):
        if key:
            return []
        what = "started" if msg.kind == "start" else f"ended {msg.status or 'SUCCESS'}"
        why = f" ({msg.end_reason})" if msg.end_reason else ""
        return [f"{_clock(msg.ts)} {msg.run_id} {msg.step_name} {what}{why}"]
    if not proto.for_trackers(msg):
        return []
    rank = f" rank {msg.rank}" if msg.rank else ""
    out = []
    for step, ts, metrics in msg.rows():
        for k, v in metrics.items():
            if key is None or k == key:
                at = f"@{step}" if step else ""
                out.append(f"{_clock(ts)} {msg.run_id} {msg.step_name}{rank} {k}{at} = "
                           f"{msgspec.json.encode(v, enc_hook=repr).decode()}")
    return out


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def compare_table(data_dir: str, run_ids: list[str]) -> str:
    try:
        rows = _views.compare(data_dir, run_ids)
    except LookupError as e:
        raise MagnusdError(f"no run {e.args[0]!r} in {data_dir} (see `magnusd runs`)") from None
    head = ["metric", *[f"{r}  last / min / max" for r in run_ids]]
    body = []
    for row in rows:
        name = row["key"] if row["step_name"] == "main" else f"{row['step_name']}/{row['key']}"
        cells = [name]
        for r in run_ids:
            c = row["runs"].get(r)
            cells.append("-" if c is None else
                         f"{_num(c['last'])} / {_num(c['min'])} / {_num(c['max'])}")
        body.append(cells)
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip()
             for x in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.6g}"


def plot(data_dir: str, run_id: str, key: str, step_name: str | None,
         width: int | None = None, height: int | None = None) -> str:
    """A terminal chart of one series (plotext), the whole series downsampled to fit."""
    import plotext as plt

    runs_dir = os.path.join(data_dir, "runs")
    names = [s["step_name"] for s in _series.listing(runs_dir, run_id) if s["key"] == key]
    if step_name is None and len(names) > 1:
        raise MagnusdError(f"{key!r} is tracked in steps {', '.join(names)}: "
                           "choose one with --step-name")
    step = step_name or (names[0] if names else "main")
    got = _views.series_view(data_dir, run_id, step, key, 400)
    if got is None:
        raise MagnusdError(f"run {run_id!r} has no series {key!r} in step {step!r}")
    plt.clear_figure()
    plt.plotsize(width or 100, height or 25)
    plt.theme("clear")
    xs = got["steps"]
    ys = [math.nan if v is None else v for v in got["values"]]
    plt.plot(xs, ys, marker="braille")
    plt.title(f"{run_id} {step}/{key}  ({got['points']} points"
              + (", downsampled" if got["downsampled"] else "") + ")")
    plt.xlabel("step")
    chart = str(plt.build())
    return chart if sys.stdout.isatty() else _ANSI.sub("", chart)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
