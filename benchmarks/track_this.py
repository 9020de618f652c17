"""Per-call latency of `track_this(loss=x, step=i)`, daemon up and daemon down, and the cost of
`import magnus` (design §11: median <= 1 us, p99 <= 5 us; import <= 10 ms); with --baseline,
the working tree's SDK against a baseline revision's in one run.

    .venv/bin/python benchmarks/track_this.py [--calls 1000000] [--import-runs 30]
        [--baseline REV] [--rounds N] [--cases up,down,floor,import] [--quick] [--keep]

Each case runs in a fresh client process (benchmarks/_track_client.py) that times every call
alone with time.perf_counter_ns, after one warm-up call that starts the SDK's flusher. The
timer's own cost (two back-to-back perf_counter_ns calls) is measured the same way in the same
process; the call times include it. Then nothing may be lost:

- up: a private `magnusd serve` (one for all rounds); after the client's flush() the run log
  (`magnusd show RUN_ID --json`) must hold `loss` (step 0) and `loss_1` .. `loss_N`.
- down: MAGNUS_SOCKET points at a path nobody listens on and MAGNUS_SPOOL_DIR at a temp dir;
  after the client exits a daemon is started on that spool dir and the run log must hold all
  N + 1 values.
- import: median wall time of `python -c 'import magnus'` minus that of `python -c pass`, and
  median of `python -X importtime`'s cumulative time of `magnus`, runs interleaved.

--baseline REV: the SDK of REV (`git archive`, see _baseline.py) runs the up case and the import
next to the working tree's, interleaved in --rounds rounds (the order alternates from round to
round) against one daemon from the working tree; figures are medians over the rounds and
ratios are current / baseline.

Results: benchmarks/out/track_this.json, rendered to track_this.md (render.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import msgspec

import _baseline as B
import _common as C
from _baseline import extract_sdk, import_cost
from _results import Result, Stats, Table, Text, cols, finish, new_report

CLIENT = str(C.HERE / "_track_client.py")
PEERS = ("wandb", "mlflow", "tensorboardX", "datadog", "statsd", "opentelemetry")
LABELS = {"up": "`track_this`, daemon up", "down": "`track_this`, daemon down (spool)",
          "floor": "floor: `list.append((i, time(), {'loss': x}))`"}


class Case(msgspec.Struct, kw_only=True):
    """One client process: its per-call times and what reached the run log."""

    case: str
    sdk: str = "current"
    round: int = 1
    load: float
    calls: Stats
    timer: Stats
    loop_s: float = float("nan")
    flush_ok: bool = True
    dropped: int | None = None
    found: int = 0
    expected: int = 0
    missing: list[str] = []
    bad_values: list[str] = []
    note: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        if self.case == "floor":
            return True
        return (self.found == self.expected and not self.bad_values and self.flush_ok
                and not self.dropped)


def client(mode: str, n: int, env: dict[str, str], case: str, sdk: str, rnd: int,
           sdk_dir: Path | None) -> Case:
    env, where = B.sdk_env(env, sdk_dir)
    load = os.getloadavg()[0]
    print(f"round {rnd}: {case} / {sdk}: {n:,} calls ...", file=sys.stderr)
    r = C.client_json([C.PY, CLIENT, mode, str(n), str(where)], env, timeout=900)
    return Case(case=case, sdk=sdk, round=rnd, load=load, calls=Stats.of(r["calls"]),
                timer=Stats.of(r["timer"]), loop_s=r.get("loop_s", float("nan")),
                flush_ok=r.get("flush_ok", True), dropped=r.get("dropped"), stderr=r["stderr"])


def verify(c: Case, d: C.Daemon, run_id: str, n: int) -> Case:
    """The run log holds loss, loss_1 .. loss_n with the values the client sent."""
    run = d.run_log(run_id)
    c.found, c.missing = C.metric_keys_ok(run, "main", "loss", range(n + 1))
    c.expected = n + 1
    m = run["steps"]["main"]["user_defined_metrics"] if c.found else {}
    c.bad_values = [k for k, v in (("loss", 0.0), ("loss_1", 1e-6), (f"loss_{n}", n * 1e-6))
                    if k in m and m[k] != v]
    return c


def case_up(d: C.Daemon, n: int, sdk: str, rnd: int, sdk_dir: Path | None) -> Case:
    before = d.status()["events_total"]
    run_id = f"bench-up-{sdk}-{rnd}-{os.urandom(3).hex()}"
    env = d.client_env(MAGNUS_SPOOL_DIR=str(d.root / "cspool"), MAGNUS_RUN_ID=run_id)
    c = client("magnus", n, env, "up", sdk, rnd, sdk_dir)
    d.wait_applied(before + n + 1)
    return verify(c, d, run_id, n)


def case_down(n: int, keep: bool) -> tuple[Case, dict[str, object]]:
    root = C.short_tmpdir("mbd")
    spool = root / "spool"
    (root / "s").mkdir(mode=0o700)
    run_id = f"bench-down-{os.urandom(3).hex()}"
    d = C.Daemon(root, spool_dir=str(spool))
    env = d.client_env(MAGNUS_SOCKET=str(root / "s" / "none.sock"), MAGNUS_RUN_ID=run_id)
    try:
        c = client("magnus", n, env, "down", "current", 1, None)
        files = sorted(spool.glob("*.spool"))
        size = sum(f.stat().st_size for f in files)
        t0 = time.monotonic()  # now a daemon on that spool dir: it ingests the files at start
        d.start()
        C.wait_for(lambda: not list(spool.glob("*.spool")), 120, 0.02, "spool files ingested")
        t_applied, _ = d.wait_applied(n + 1)
        bad = len(list((spool / "bad").glob("*"))) if (spool / "bad").is_dir() else 0
        c.note = (f"{len(files)} spool file(s), {size:,} bytes; a daemon started afterwards "
                  f"ingested them in {t_applied - t0:.2f} s; {bad} bad spool file(s)")
        verify(c, d, run_id, n)
        if bad:
            c.bad_values.append(f"{bad} bad spool files")
    finally:
        fin = d.finish(root, keep)
    return c, fin


def summarize(cases: list[Case]) -> list[Result]:
    """Per (case, SDK): medians over the rounds of the per-round median, p99 and p99.9, µs."""
    groups: dict[tuple[str, str], list[Case]] = {}
    for c in cases:
        groups.setdefault((c.case, c.sdk), []).append(c)
    out = []
    for (case, sdk), cs in groups.items():
        out.append(Result(name=LABELS[case] + (f" [{sdk}]" if sdk != "current" else ""),
                          unit="µs", n=sum(c.calls.n for c in cs),
                          median=C.med([c.calls.p50 / 1000 for c in cs]),
                          p99=C.med([c.calls.p99 / 1000 for c in cs]),
                          p999=C.med([c.calls.p999 / 1000 for c in cs]),
                          load=C.med([c.load for c in cs]), ok=all(c.ok for c in cs)))
    base = {r.name.removesuffix(" [baseline]"): r for r in out if r.name.endswith("[baseline]")}
    for r in out:
        if r.name in base:
            r.ratio, r.peer = r.median / base[r.name].median, "baseline"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--import-runs", type=int, default=30)
    ap.add_argument("--baseline", metavar="REV", help="also measure REV's sdk/magnus")
    ap.add_argument("--rounds", type=int, default=None, help="default 1, with --baseline 3")
    ap.add_argument("--cases", default="up,down,floor,import",
                    help="comma-separated subset of up,down,floor,import")
    ap.add_argument("--quick", action="store_true", help="20,000 calls, 5 import runs")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (daemon logs)")
    args = ap.parse_args()
    C.check_python()
    if args.quick:
        args.calls, args.import_runs = 20_000, 5
    cases = set(args.cases.split(","))
    n = args.calls
    rounds = args.rounds or (3 if args.baseline else 1)
    root = C.short_tmpdir("mbu")
    sdks: dict[str, Path | None] = {"current": None}
    rep = new_report("track_this", "track_this latency")
    if args.baseline:
        commit = extract_sdk(args.baseline, root / "base")
        sdks = {"baseline": root / "base" / "sdk", "current": None}
        tree = B.tree_state("sdk", "daemon")
        rep.intro = (f"baseline = `git archive {commit[:12]} sdk/magnus` ({args.baseline}, "
                     f"PYTHONPATH); current = the working tree ({tree}); "
                     f"{rounds} interleaved rounds, one daemon from the working tree.\n\n")
    rep.intro += ("Each call timed alone with `time.perf_counter_ns` in a fresh process; times "
                  "include the timer's own cost ('timer' column: its median). µs; the "
                  "headline figures are medians over the rounds.")
    results: list[Case] = []
    fins: list[dict[str, object]] = []
    d = C.Daemon(root)
    try:
        if "up" in cases:
            d.start()
            for rnd in range(1, rounds + 1):
                order = list(sdks.items()) if rnd % 2 else list(sdks.items())[::-1]
                results += [case_up(d, n, sdk, rnd, p) for sdk, p in order]
    finally:
        fins.append(d.finish(root, args.keep))
    if "down" in cases:
        c, fin = case_down(n, args.keep)
        results.append(c)
        fins.append(fin)
    if "floor" in cases:
        results.append(client("floor", n, C.clean_env(), "floor", "current", 1, None))
    rep.results = summarize(results)
    for r in rep.results:
        b = next((x for x in rep.results if x.name == r.name + " [baseline]"), None)
        if b is not None and r.p99 and r.p999 and b.p99 and b.p999:
            rep.blocks.append(Text(f"{r.name}, current / baseline: median {r.median / b.median:.3f}"
                                   f", p99 {r.p99 / b.p99:.3f}, p99.9 {r.p999 / b.p999:.3f}."))
    if "import" in cases:
        print(f"import magnus: {args.import_runs} runs ...", file=sys.stderr)
        imp, mods = import_cost(args.import_runs, sdks)
        rep.results += imp
        rep.notes.append(f"modules `import magnus` adds ({len(mods)}): " + ", ".join(mods))
    us = ".3f"
    rep.blocks.append(Table(title="every client process", columns=cols(
        "case", "SDK", "round", "calls", ("median", us), ("p90", us), ("p99", us),
        ("p99.9", us), ("p99.99", us), ("max", us), ("mean", us), ("timer", us),
        ("load 1 min", ".2f")), rows=[
        [LABELS[c.case], c.sdk, c.round, c.calls.n, c.calls.p50 / 1e3, c.calls.p90 / 1e3,
         c.calls.p99 / 1e3, c.calls.p999 / 1e3, c.calls.p9999 / 1e3, c.calls.max / 1e3,
         c.calls.mean / 1e3, c.timer.p50 / 1e3, c.load] for c in results]))
    checked = [c for c in results if c.case != "floor"]
    rep.blocks.append(Table(
        title="nothing lost?", intro="Run log via `magnusd show RUN_ID --json`: `loss`, "
        "`loss_1` .. `loss_N`, spot-checked values.", columns=cols(
            "case", "SDK", "round", "in run log", "expected", "flush() True", "SDK dropped",
            ("loop s", ".2f"), "notes", "check"), rows=[
            [c.case, c.sdk, c.round, c.found, c.expected, c.flush_ok, c.dropped, c.loop_s,
             "; ".join(x for x in (c.note, c.stderr[:300], " ".join(c.missing + c.bad_values))
                       if x), "OK" if c.ok else "FAIL"] for c in checked]))
    rep.add("Targets (design §11): median ≤ 1 µs, p99 ≤ 5 µs a call; `import magnus` ≤ 10 ms. "
            + "; ".join(f"{r.name}: {'met' if r.median <= 1 and (r.p99 or 0) <= 5 else 'NOT met'}"
                        for r in rep.results if r.unit == "µs" and "floor" not in r.name))
    peers = [p for p in PEERS if importlib.util.find_spec(p) is not None]
    rep.blocks.append(Text("Peer libraries importable here: " + (", ".join(peers) if peers else
                           "none (see /work/shared/peers.md for their numbers on this machine "
                           "kind)")))
    for fin in fins:
        rep.notes += msgspec.convert(fin, C.Ended).problems("a")
    rep.ok = all(c.ok for c in results)
    rep.data = results
    return finish(rep)


if __name__ == "__main__":
    sys.exit(main())
