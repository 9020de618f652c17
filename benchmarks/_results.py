"""What a benchmark returns: typed results (msgspec Structs), saved as JSON in
benchmarks/out/<name>.json; benchmarks/render.py turns them into Markdown, the only place that
does.

A Report holds headline `Result`s (a figure with its median, tails and ratio to a peer or
baseline, and the machine load it was measured under) and blocks in reading order: `Table`s of
typed cells (numbers stay numbers; each column says how to print them) and `Text` paragraphs.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

OUT_DIR = Path(__file__).resolve().parent / "out"

Cell = str | bool | int | float | None


class Machine(msgspec.Struct, frozen=True):
    python: str
    cpus: int
    arch: str
    load: tuple[float, float, float]  # when saved (the end of the run)
    at: str
    load_start: tuple[float, float, float] | None = None  # as the script started

    @classmethod
    def now(cls) -> Machine:
        return cls(python=f"{platform.python_implementation()} {platform.python_version()}",
                   cpus=os.cpu_count() or 0, arch=platform.machine(), load=loadavg(),
                   at=time.strftime("%Y-%m-%d %H:%M:%S %Z"), load_start=LOAD_AT_START)

    def line(self) -> str:
        start = " ".join(f"{x:.2f}" for x in self.load_start or ())
        return (f"{self.python}, {self.cpus} CPU(s), {self.arch}, load average "
                + (f"{start} at the start, " if start else "")
                + f"{self.load[0]:.2f} {self.load[1]:.2f} {self.load[2]:.2f}"
                + (" at the end" if start else "")
                + f" (other processes on the machine skew the tails), {self.at}")


def loadavg() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


STARTED, LOAD_AT_START = time.monotonic(), loadavg()  # the script's start: it imports this first


class Result(msgspec.Struct, kw_only=True):
    """One headline figure: `median` (and tails) of `n` samples in `unit`."""

    name: str
    unit: str
    median: float
    p99: float | None = None
    p999: float | None = None
    n: int = 0
    ratio: float | None = None  # median / the peer's (or the baseline's) median
    peer: str = ""
    load: float | None = None  # 1-minute load average as the case started
    ok: bool = True


class Column(msgspec.Struct, frozen=True):
    name: str
    fmt: str = ""  # format spec for numbers (",.0f", ".3f", ...); "" = str()
    bold: bool = False


class Table(msgspec.Struct, tag="table", kw_only=True):
    columns: list[Column]
    rows: list[list[Cell]]
    title: str = ""  # a "## title" heading before it
    intro: str = ""


class Text(msgspec.Struct, tag="text"):
    text: str  # a paragraph, or with `code` preformatted text
    title: str = ""  # a "## title" heading before it
    code: bool = False


Block = Table | Text


class Report(msgspec.Struct, kw_only=True):
    name: str  # the file stem in benchmarks/out/
    title: str
    machine: Machine
    argv: list[str]
    intro: str = ""
    results: list[Result] = []
    blocks: list[Block] = []
    notes: list[str] = []
    ok: bool = True
    seconds: float = 0.0
    data: Any = None  # the cases' raw measurements, for whoever wants more than the tables

    def add(self, block: str | Table) -> None:
        """Append a block: a Table, or a paragraph of Markdown text."""
        self.blocks.append(Text(block) if isinstance(block, str) else block)


def cols(*spec: str | tuple[str, str] | Column) -> list[Column]:
    """Columns from names, (name, fmt) pairs or Columns; a fmt starting with "*" is bold."""
    out = []
    for s in spec:
        if isinstance(s, Column):
            out.append(s)
        elif isinstance(s, str):
            out.append(Column(s))
        else:
            out.append(Column(s[0], s[1].lstrip("*"), s[1].startswith("*")))
    return out


def tbl(header: Sequence[str | tuple[str, str] | Column], rows: Sequence[Sequence[Cell]],
        title: str = "", intro: str = "") -> Table:
    return Table(columns=cols(*header), rows=[list(r) for r in rows], title=title, intro=intro)


def new_report(name: str, title: str, intro: str = "") -> Report:
    return Report(name=name, title=title, machine=Machine.now(), argv=sys.argv[1:], intro=intro)


def save(report: Report) -> Path:
    """Write out/<name>.json, render it to out/<name>.md and print the Markdown. A --quick run
    (a smoke test, not figures) goes to out/quick/ instead, leaving full-size results alone."""
    from render import render

    report.machine = msgspec.structs.replace(report.machine, load=loadavg())
    out = OUT_DIR / "quick" if "--quick" in report.argv else OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{report.name}.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    text = render(report)
    path.with_suffix(".md").write_text(text)
    print(text)
    print(f"(written to {path} and {path.with_suffix('.md')})", file=sys.stderr)
    return path


def finish(report: Report) -> int:
    """Save the report (its time: since the script started, unless set) and the exit status:
    0 when every check passed."""
    report.seconds = report.seconds or time.monotonic() - STARTED
    save(report)
    return 0 if report.ok else 1


def load(path: Path) -> Report:
    return msgspec.json.decode(path.read_bytes(), type=Report)



class Stats(msgspec.Struct, frozen=True):
    """Nearest-rank percentiles of per-call times in ns (what the clients' `summary` prints)."""

    n: int
    p50: float
    p90: float
    p99: float
    p999: float = msgspec.field(name="p99.9")
    p9999: float = msgspec.field(name="p99.99")
    max: float
    mean: float

    @classmethod
    def of(cls, d: object) -> Stats:
        return msgspec.convert(d, cls)

    def q(self, name: str) -> float:
        """A field by its JSON name: "p50", "p99.9", "max", ..."""
        return float(getattr(self, {"p99.9": "p999", "p99.99": "p9999"}.get(name, name)))
