"""Per-call cost of `track_this(loss=v, step=i)` by value type, and the plain-float cost of the
current SDK against a baseline revision, measured in one run.

    .venv/bin/python benchmarks/track_values.py [--baseline a56ada8] [--current REV] [--rounds 3]
        [--calls 1000000] [--slow-calls 100000] [--torch-calls 20000] [--cases ...] [--quick]
        [--keep]

The baseline SDK is `git archive REV sdk/magnus` extracted to a temp dir (read-only git use) and
imported through PYTHONPATH=<tmp>/sdk; the current SDK is the working tree (the project's
editable install), or with `--current REV` that revision's sdk/magnus, extracted the same way.
Each client checks that `magnus` came from the expected directory. Both talk to one private
`magnusd serve` from the working tree (the wire protocol is compatible: new fields were only
appended, with defaults).

Cases, each in a fresh client process (benchmarks/_values_client.py), run in rounds so machine
load falls on all of them alike; a round is: float/baseline, float/current, then the current
SDK with np.float64, np.float32, np.int64 scalars, a numpy array of 16 float32 and a 0-d torch
tensor. Values are built before the timed loop; each call is timed alone with
time.perf_counter_ns after one warm-up call (step 0) that starts the SDK's flusher; the timer's
own cost is measured in the same process and included in the call times.

Nothing may be lost: after each client's flush() and exit, the run log (`magnusd show RUN_ID
--json`) must hold `loss` (step 0) and `loss_1` .. `loss_N`, each equal to the value sent, as a
plain JSON number (int for np.int64, float otherwise) or a list of 16 numbers for the array.

Results: benchmarks/out/track_values.json (with `--current REV`: track_values-REV.json),
rendered to .md (render.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

import _baseline as B
import _common as C
from _baseline import extract_sdk
from _results import Report, Result, Table, Text, cols, finish, new_report
from _values_cases import ValuesCase, run_case

LABELS = {"float": "plain `float`", "f64": "`np.float64` scalar", "f32": "`np.float32` scalar",
          "i64": "`np.int64` scalar", "arr16": "numpy array, 16 × float32",
          "torch": "0-d torch tensor (float32)"}
SLOW = ("f64", "f32", "i64", "arr16", "torch")
med = C.med


def report(rep: Report, results: list[ValuesCase], baseline: str) -> None:
    by: dict[tuple[str, str], list[ValuesCase]] = {}
    for r in results:
        by.setdefault((r.kind, r.sdk), []).append(r)
    ref = by.get(("float", "current"))
    ref_med = med([r.calls.q("p50") for r in ref]) if ref else float("nan")
    base = {q: med([r.calls.q(q) for r in by.get(("float", "baseline"), [])])
            for q in ("p50", "p99", "p99.9")}
    rows: list[list[Any]] = []
    for kind, sdk in [("float", "baseline"), ("float", "current")] + [(k, "current")
                                                                       for k in SLOW]:
        rs = by.get((kind, sdk))
        if not rs:
            continue
        rows += [[f"{LABELS[kind]}, {sdk}", r.round, r.calls.n,
                  *(r.calls.q(q) / 1e3 for q in ("p50", "p99", "p99.9", "max", "mean")),
                  r.timer.q("p50") / 1e3, r.load, None] for r in rs]
        m = {q: med([r.calls.q(q) for r in rs]) for q in ("p50", "p99", "p99.9", "mean")}
        rows.append([f"{LABELS[kind]}, {sdk}", "all", sum(r.calls.n for r in rs),
                     m["p50"] / 1e3, m["p99"] / 1e3, m["p99.9"] / 1e3,
                     max(r.calls.q("max") for r in rs) / 1e3, m["mean"] / 1e3,
                     med([r.timer.q("p50") for r in rs]) / 1e3, None, m["p50"] / ref_med])
        ratio = m["p50"] / base["p50"] if kind == "float" and sdk == "current" else None
        rep.results.append(Result(name=f"{LABELS[kind]}, {sdk}", unit="µs", median=m["p50"] / 1e3,
                                  p99=m["p99"] / 1e3, p999=m["p99.9"] / 1e3,
                                  n=sum(r.calls.n for r in rs), ratio=ratio,
                                  peer=f"baseline {baseline}" if ratio else "",
                                  load=med([r.load for r in rs]),
                                  ok=all(r.ok for r in rs)))
    us = ".3f"
    rep.blocks.append(Table(columns=cols(
        "case", "round", "calls", ("median", us), ("p99", us), ("p99.9", us), ("max", us),
        ("mean", us), ("timer", us), ("load 1 min", ".2f"),
        ("median vs. plain float, current", ".2f")), rows=rows))
    b, c = by.get(("float", "baseline"), []), by.get(("float", "current"), [])
    if b and c:
        rep.blocks.append(Table(
            title="plain float, current / baseline", intro="Each round: baseline then current, "
            "same daemon. CPU s: the main thread over the loop and flush(), the SDK's flusher "
            "thread over its life.", columns=cols(
                "round", ("median ratio", "*.3f"), ("p99 ratio", ".3f"), ("p99.9 ratio", ".3f"),
                ("mean ratio", ".3f"), "main thread CPU s (b / c)", "flusher CPU s (b / c)",
                "loop wall s (b / c)"), rows=[
                [x.round, *(y.calls.q(q) / x.calls.q(q)
                               for q in ("p50", "p99", "p99.9", "mean")),
                 *(f"{getattr(x, k) or float('nan'):.2f} / {getattr(y, k) or float('nan'):.2f}"
                   for k in ("main_cpu_s", "flusher_cpu_s", "loop_s"))]
                for x, y in zip(b, c, strict=True)]))
    rep.blocks.append(Table(
        title="nothing lost?", intro="Run log via `magnusd show RUN_ID --json`: `loss`, "
        "`loss_1` .. `loss_N`, every value compared with what was sent and of the plain JSON "
        "type.", columns=cols("case", "round", "in run log", "expected", "wrong value/type",
                              "daemon events", "flush() True", "SDK dropped", "run status",
                              ("show s", ".1f"), "sample from the run log", "check"), rows=[
            [f"{r.kind}/{r.sdk}", r.round, r.verify.found,
             r.verify.expected, len(r.verify.bad_values), r.events,
             r.flush_ok, r.dropped, r.verify.status, r.verify.show_s,
             f"`{r.verify.sample}`" if r.round == 1 else "",
             "OK" if r.ok else "FAIL"] for r in results]))
    rep.blocks.append(Text("`magnus` imported from (checked in each client): " + "; ".join(
        sorted({f"{r.sdk}: `{r.magnus_file}`" for r in results})) + "\n\nValue types "
        "sent: " + ", ".join(sorted({f"{r.kind}: `{r.value_type}`" for r in results}))))
    for r in results:
        at = f"{r.kind}/{r.sdk} round {r.round}"
        for what, v in (("client stderr", " / ".join(r.stderr)[:500]),
                        ("missing e.g.", r.verify.missing),
                        ("wrong e.g.", r.verify.bad_values),
                        ("SDK last_error", r.last_error)):
            if v:
                rep.notes.append(f"{at}: {what} {v}")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--baseline", default="a56ada8", metavar="REV",
                    help="git revision whose sdk/magnus is the baseline (default a56ada8)")
    ap.add_argument("--current", default=None, metavar="REV",
                    help="measure this revision's sdk/magnus as 'current' instead of the working "
                         "tree (e.g. 1521afc once HEAD has moved on)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=1_000_000, help="plain-float calls per case")
    ap.add_argument("--slow-calls", type=int, default=100_000,
                    help="calls per numpy case")
    ap.add_argument("--torch-calls", type=int, default=20_000)
    ap.add_argument("--cases", default="float,f64,f32,i64,arr16,torch",
                    help="comma-separated subset of float,f64,f32,i64,arr16,torch")
    ap.add_argument("--quick", action="store_true", help="1 round of 20,000 / 2,000 / 500 calls")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (daemon log)")
    args = ap.parse_args()
    C.check_python()
    if args.quick:
        args.rounds, args.calls, args.slow_calls, args.torch_calls = 1, 20_000, 2_000, 500
    cases = [k for k in ("float", *SLOW) if k in set(args.cases.split(","))]
    root = C.short_tmpdir("mbv")
    sdk_dirs: dict[str, Path | None] = {"baseline": root / "base" / "sdk", "current": None}
    commit = extract_sdk(args.baseline, root / "base")
    print(f"baseline {args.baseline} = {commit[:12]} extracted to {sdk_dirs['baseline']}",
          file=sys.stderr)
    current = ""
    if args.current:
        current = extract_sdk(args.current, root / "cur")
        sdk_dirs["current"] = root / "cur" / "sdk"
        print(f"current {args.current} = {current[:12]} extracted to {sdk_dirs['current']}",
              file=sys.stderr)
    d = C.Daemon(root)
    results: list[ValuesCase] = []
    rss = (0, 0)
    cspool = str(root / "cspool")
    try:
        d.start()
        for rnd in range(1, args.rounds + 1):
            for kind in cases:
                n = (args.calls if kind == "float" else
                     args.torch_calls if kind == "torch" else args.slow_calls)
                sdks = ("baseline", "current") if kind == "float" else ("current",)
                for sdk in sdks:
                    results.append(run_case(d, cspool, kind, sdk, n, rnd, sdk_dirs))
        rss = d.rss_kb()
    finally:
        fin = d.finish(root, args.keep)
    tree = B.tree_state("sdk", "daemon")
    rep = new_report("track_values" + (f"-{args.current}" if args.current else ""),
                     f"track_this cost by value type, and the current SDK against {args.baseline}",
                     f"baseline = `git archive {commit[:12]} sdk/magnus` (PYTHONPATH); current = "
                     + (f"`git archive {current[:12]} sdk/magnus` (`--current {args.current}`, "
                        "PYTHONPATH)" if current else "the working tree's sdk/magnus")
                     + f"; one `magnusd serve` from the working tree ({tree}) for "
                     "every case.\n\nEach call timed alone with `time.perf_counter_ns` in a fresh "
                     "process, after a warm-up call; times include the timer's own cost (its "
                     "median in the 'timer' column). µs; 'all' = median of the per-round values "
                     "(max: the largest); 'load 1 min' = /proc/loadavg as the case started.")
    report(rep, results, args.baseline)
    rep.notes += msgspec.convert(fin, C.Ended).problems("the")
    rep.notes.append(f"daemon RSS {rss[0] / 1024:.0f} MB (peak {rss[1] / 1024:.0f} MB) at the end")
    rep.ok = all(r.ok for r in results)
    rep.data = results
    return finish(rep)


if __name__ == "__main__":
    sys.exit(main())
