"""The one Markdown renderer of the benchmarks: benchmarks/out/<name>.json (a `_results.Report`)
to Markdown.

    .venv/bin/python benchmarks/render.py [out/NAME.json ...]       # (re)write out/NAME.md
    .venv/bin/python benchmarks/render.py --readme out/NAME.json    # and the README block

Every benchmark calls `render` itself when it saves its results; run this to re-render saved
JSON. With --readme, the headline results of each report replace the block between
`<!-- results NAME -->` and `<!-- /results -->` in benchmarks/README.md, when the README has
one (the figures the README quotes elsewhere in prose are not touched).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from _results import OUT_DIR, Cell, Column, Report, Result, Table, Text, load

README = Path(__file__).resolve().parent / "README.md"


def cell(v: Cell, col: Column) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and math.isnan(v):
        s = "-"
    elif isinstance(v, bool):
        s = "yes" if v else "NO"
    elif isinstance(v, int | float) and col.fmt == "~":  # 3 significant digits, or a count
        s = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    elif isinstance(v, int | float) and col.fmt:
        s = format(v, col.fmt)
    elif isinstance(v, int):
        s = f"{v:,}"
    else:
        s = str(v)
    return f"**{s}**" if col.bold and s not in ("", "-") else s


def table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]]) -> str:
    lines = ["| " + " | ".join(c.name for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(v, c) for v, c in zip(r, columns, strict=True)) + " |"
              for r in rows]
    return "\n".join(lines)


RESULT_COLS = [Column("case"), Column("n"), Column("unit"), Column("median", "~", True),
               Column("p99", "~"), Column("p99.9", "~"), Column("ratio", ".3f"),
               Column("vs."), Column("load 1 min", ".2f"), Column("check")]


def results_table(results: Sequence[Result]) -> str:
    return table(RESULT_COLS, [[r.name, r.n or None, r.unit, r.median, r.p99, r.p999, r.ratio,
                                r.peer, r.load, "OK" if r.ok else "FAIL"] for r in results])


def render(rep: Report) -> str:
    out = [f"# {rep.title}\n", f"{rep.machine.line()}; `{' '.join(rep.argv) or '(defaults)'}`\n"]
    if rep.intro:
        out.append(rep.intro.strip() + "\n")
    if rep.results:
        out.append(results_table(rep.results) + "\n")
    for b in rep.blocks:
        if isinstance(b, Table):
            if not b.rows:  # a case that did not run
                continue
            if b.title:
                out.append(f"## {b.title}\n")
            if b.intro:
                out.append(b.intro.strip() + "\n")
            out.append(table(b.columns, b.rows) + "\n")
        elif isinstance(b, Text):
            if b.title:
                out.append(f"## {b.title}\n")
            out.append(f"```\n{b.text.rstrip()}\n```\n" if b.code else b.text.strip() + "\n")
    if rep.notes:
        out.append("Notes:\n\n" + "\n".join(f"- {n}" for n in rep.notes) + "\n")
    out.append(f"{'All checks passed' if rep.ok else '**A check FAILED**'}; total benchmark "
               f"time {rep.seconds:.0f} s.")
    return "\n".join(out) + "\n"


def update_readme(rep: Report, readme: Path = README) -> bool:
    """Replace the README's `<!-- results NAME -->` block with the report's results."""
    text = readme.read_text()
    pat = re.compile(rf"(<!-- results {re.escape(rep.name)} -->\n).*?(<!-- /results -->)",
                     re.DOTALL)
    if not pat.search(text):
        return False
    body = f"{rep.machine.line()}\n\n{results_table(rep.results)}\n"
    readme.write_text(pat.sub(lambda m: m.group(1) + body + m.group(2), text))
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="default: every out/*.json")
    ap.add_argument("--readme", action="store_true", help="update benchmarks/README.md blocks")
    args = ap.parse_args()
    for path in args.files or sorted(OUT_DIR.glob("*.json")):
        rep = load(path)
        md = path.with_suffix(".md")
        md.write_text(render(rep))
        print(f"{path} -> {md}", file=sys.stderr)
        if args.readme:
            done = update_readme(rep)
            print(f"  README block {rep.name}: {'updated' if done else 'none'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
