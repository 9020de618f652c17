"""Where `track_this`'s p99.9 goes: the garbage collections its calls pay for, per SDK.

    .venv/bin/python benchmarks/track_gc.py [--baseline REV] [--calls 1000000] [--quick]

A fresh client process per SDK (the working tree's, and REV's with --baseline: `git archive`,
see _baseline.py) calls `track_this(loss=x, step=i)` N times with no daemon listening (the
flusher spools), times every call with perf_counter_ns and records every collection with
`gc.callbacks`: how many of each generation ran during the loop and how long they took. A
collection runs inside whichever call allocated the object that crossed the threshold, so a
generation's median duration is what the calls that pay for it see.

Then how long the flusher holds the GIL per slice: the working tree's encoder
(`magnus._encode.Encoder.encode`, in-process) on 2,048 and 8,192 single-key calls, median of 200.

Results: benchmarks/out/track_gc.json, rendered to track_gc.md (render.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

import _common as C
from _baseline import extract_sdk
from _results import Result, Table, cols, new_report, save

CLIENT = r"""
import gc, json, math, sys, time
from array import array
n = int(sys.argv[1])
from magnus import track_this
track_this(loss=0.0, step=0)
time.sleep(0.3)  # the flusher's imports, off the clock
pc = time.perf_counter_ns
out = array("q", bytes(8 * n))
events = []
gc.callbacks.append(lambda phase, info: events.append((phase, info["generation"], pc())))
for i in range(1, n + 1):
    x = i * 1e-6
    t0 = pc()
    track_this(loss=x, step=i)
    out[i - 1] = pc() - t0
gc.callbacks.clear()
s = sorted(out)
q = lambda p: s[min(n - 1, math.ceil(p * n / 100) - 1)]
durations = {0: [], 1: [], 2: []}
started = None
for phase, gen, t in events:
    if phase == "start":
        started = t
    elif started is not None:
        durations[gen].append(t - started)
        started = None
print(json.dumps({"p50": q(50), "p99": q(99), "p999": q(99.9), "p9999": q(99.99),
                  "gc": {str(g): sorted(d) for g, d in durations.items()}}))
"""


class GcCase(msgspec.Struct):
    sdk: str
    calls: int
    p50_ns: float
    p99_ns: float
    p999_ns: float
    p9999_ns: float
    collections: dict[str, int]  # generation -> count during the loop
    median_ns: dict[str, float]  # generation -> median duration
    max_ns: dict[str, float]


def run(sdk: str, pythonpath: str | None, calls: int, spool: Path) -> GcCase:
    env = C.clean_env(MAGNUS_SOCKET=str(spool / "nobody.sock"), MAGNUS_SPOOL_DIR=str(spool),
                      MAGNUS_RUN_ID=f"gc-{sdk}")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    r = subprocess.run([C.PY, "-c", CLIENT, str(calls)], env=env, capture_output=True,
                       text=True, timeout=600, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{sdk} client exited {r.returncode}: {r.stderr[-2000:]}")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    gcs: dict[str, list[int]] = got["gc"]
    return GcCase(sdk, calls, got["p50"], got["p99"], got["p999"], got["p9999"],
                  {g: len(d) for g, d in gcs.items()},
                  {g: float(d[len(d) // 2]) if d else 0.0 for g, d in gcs.items()},
                  {g: float(d[-1]) if d else 0.0 for g, d in gcs.items()})


def encode_hold_us(calls: int, repeats: int = 200) -> float:
    """Median µs for the working tree's encoder to turn `calls` single-key calls into frames."""
    import os

    os.environ.setdefault("MAGNUS_RUN_ID", "gc-encode")
    from magnus._encode import Encoder, Proc
    from magnus._steps import Steps

    steps = Steps()
    ctx = steps.current()
    steps.implicit[(ctx.run_id, ctx.step_name)] = "given"  # no start mark: records only
    encoder = Encoder(steps, Proc(os.environ, os.getpid()), "bench", print)
    entries = [x for i in range(calls) for x in (i, 1.7e9 + i, {"loss": i * 1e-6})]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        encoder.encode(entries, 0)
        times.append(time.perf_counter_ns() - t0)
    return sorted(times)[repeats // 2] / 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", help="also measure REV's sdk/magnus")
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="50,000 calls")
    args = ap.parse_args()
    calls = 50_000 if args.quick else args.calls
    t0 = time.monotonic()
    rep = new_report("track_gc", "track_this and the garbage collector")
    cases: list[GcCase] = []
    with tempfile.TemporaryDirectory(prefix="mgc") as tmp:
        root = Path(tmp)
        sdks: list[tuple[str, str | None]] = [("current", None)]
        if args.baseline:
            commit = extract_sdk(args.baseline, root / "base")
            sdks.insert(0, (f"baseline {commit[:7]}", str(root / "base" / "sdk")))
        for i, (name, path) in enumerate(sdks):
            cases.append(run(name, path, calls, root / f"spool{i}"))
    for c in cases:
        rep.results.append(Result(name=f"`track_this`, no daemon [{c.sdk}]", unit="µs",
                                  median=c.p50_ns / 1e3, p99=c.p99_ns / 1e3,
                                  p999=c.p999_ns / 1e3, n=c.calls))
    rep.blocks.append(Table(
        title="collections during the loop",
        intro="Per generation: how many ran, and how long one took (µs).",
        columns=cols("SDK", "calls", ("p99.9 µs", ".2f"), ("p99.99 µs", ".1f"), "gen 0 count",
                     ("gen 0 median", ".1f"), "gen 1 count", ("gen 1 median", ".1f"),
                     "gen 2 count", ("gen 2 median", ".1f"), ("gen 2 max", ".1f")),
        rows=[[c.sdk, c.calls, c.p999_ns / 1e3, c.p9999_ns / 1e3,
               c.collections["0"], c.median_ns["0"] / 1e3, c.collections["1"],
               c.median_ns["1"] / 1e3, c.collections["2"], c.median_ns["2"] / 1e3,
               c.max_ns["2"] / 1e3] for c in cases]))
    holds = [(n, encode_hold_us(n)) for n in (2048, 8192)]
    rep.blocks.append(Table(
        title="the flusher's GIL hold per slice",
        intro="The working tree's encoder on n single-key calls (columnar form), median of 200.",
        columns=cols("calls", ("µs", ".1f"), ("ns a call", ".0f")),
        rows=[[n, us, us * 1e3 / n] for n, us in holds]))
    rep.data = {"cases": cases, "encode_hold_us": dict(holds)}
    rep.seconds = time.monotonic() - t0
    save(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
