"""Per-call latency of `track_this(loss=x, step=i)`, daemon up and daemon down, and the cost of
`import magnus` (design §11: median <= 1 us, p99 <= 5 us; import <= 10 ms).

    .venv/bin/python benchmarks/track_this.py [--calls 1000000] [--import-runs 30] [--keep]

Each case runs in a fresh client process (benchmarks/_track_client.py) that times every call
alone with time.perf_counter_ns, after one warm-up call that starts the SDK's flusher. The
timer's own cost (two back-to-back perf_counter_ns calls) is measured the same way in the same
process; the call times below include it. Then nothing may be lost:

- daemon up: a private `magnusd serve`; after the client's flush() the run log
  (`magnusd show RUN_ID --json`) must hold `loss` (step 0) and `loss_1` .. `loss_N`.
- daemon down: MAGNUS_SOCKET points at a path nobody listens on and MAGNUS_SPOOL_DIR at a temp
  dir; after the client exits a daemon is started on that spool dir and the run log must hold
  all N + 1 values.

Results: a markdown table on stdout and in benchmarks/out/track_this.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as C

CLIENT = str(C.HERE / "_track_client.py")
PEERS = ("wandb", "mlflow", "tensorboardX", "datadog", "statsd", "opentelemetry")


def us(ns: float) -> str:
    return f"{ns / 1000:.3f}"


def run_client(mode: str, n: int, env: dict[str, str]) -> dict[str, Any]:
    r = subprocess.run([C.PY, CLIENT, mode, str(n)], env=env, capture_output=True, timeout=600)
    err = r.stderr.decode(errors="replace").strip()
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError(f"client {mode} exited {r.returncode}:\n{err}")
    res: dict[str, Any] = json.loads(r.stdout.decode().strip().splitlines()[-1])
    res["stderr"] = err
    return res


def verify_run(d: C.Daemon, run_id: str, n: int) -> dict[str, Any]:
    """Check the run log holds loss, loss_1 .. loss_n with the values the client sent."""
    t0 = time.monotonic()
    run = d.show(run_id)
    show_s = time.monotonic() - t0
    found, missing = C.metric_keys_ok(run, "main", "loss", range(n + 1))
    m = run["steps"]["main"]["user_defined_metrics"] if found else {}
    bad_values = [k for k, v in (("loss", 0.0), ("loss_1", 1e-6), (f"loss_{n}", n * 1e-6))
                  if k in m and m[k] != v]
    return {"found": found, "expected": n + 1, "missing": missing, "bad_values": bad_values,
            "show_s": show_s, "status": run.get("status")}


def case_up(n: int, keep: bool) -> dict[str, Any]:
    root = C.short_tmpdir("mbu")
    d = C.Daemon(root)
    try:
        d.start()
        client_spool = str(root / "cspool")
        run_id = f"bench-up-{os.urandom(3).hex()}"
        env = C.clean_env(MAGNUS_SOCKET=d.sock, MAGNUS_DATA_DIR=d.data, MAGNUS_CONFIG=d.config,
                          MAGNUS_SPOOL_DIR=client_spool, MAGNUS_RUN_ID=run_id)
        res = run_client("magnus", n, env)
        _, st = d.wait_applied(n + 1)
        res["events_total"] = st["events_total"]
        res["duplicates_skipped"] = st.get("duplicates_skipped")
        res["verify"] = verify_run(d, run_id, n)
        res["spool_files"] = len(list(Path(client_spool).glob("*"))) if os.path.isdir(
            client_spool) else 0
        res["daemon_rss_kb"] = d.rss_kb()
    finally:
        C.finish(d, root, keep, res)
    return res


def case_down(n: int, keep: bool) -> dict[str, Any]:
    root = C.short_tmpdir("mbd")
    spool = root / "spool"
    (root / "s").mkdir(mode=0o700)
    run_id = f"bench-down-{os.urandom(3).hex()}"
    d = C.Daemon(root, spool_dir=str(spool))
    env = C.clean_env(MAGNUS_SOCKET=str(root / "s" / "none.sock"), MAGNUS_DATA_DIR=d.data,
                      MAGNUS_CONFIG=d.config, MAGNUS_SPOOL_DIR=str(spool), MAGNUS_RUN_ID=run_id)
    try:
        res = run_client("magnus", n, env)
        files = sorted(spool.glob("*.spool"))
        res["spool_files_after_exit"] = len(files)
        res["spool_bytes"] = sum(f.stat().st_size for f in files)
        # Now a daemon on that spool dir: it ingests the files at start.
        t0 = time.monotonic()
        d.start()
        C.wait_for(lambda: not list(spool.glob("*.spool")), 120, 0.02, "spool files ingested")
        t_applied, st = d.wait_applied(n + 1)
        res["spool_ingest_s"] = t_applied - t0
        res["events_total"] = st["events_total"]
        res["duplicates_skipped"] = st.get("duplicates_skipped")
        res["bad_spool_files"] = len(list((spool / "bad").glob("*"))) if (
            spool / "bad").is_dir() else 0
        res["verify"] = verify_run(d, run_id, n)
        res["daemon_rss_kb"] = d.rss_kb()
    finally:
        C.finish(d, root, keep, res)
    return res


def import_cost(runs: int) -> dict[str, Any]:
    """Median wall time of `python -c pass` vs `python -c 'import magnus'`, runs interleaved,
    with bytecode writing allowed (one warm-up run of each first so the .pyc files exist)."""
    env = C.clean_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cmds = {"pass": [C.PY, "-c", "pass"], "import magnus": [C.PY, "-c", "import magnus"]}
    for cmd in cmds.values():
        subprocess.run(cmd, env=env, check=True)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs):
        for k, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True)
            times[k].append(time.perf_counter() - t0)
    probe = ("import sys; a = set(sys.modules); import magnus; "
             "print(' '.join(sorted(set(sys.modules) - a)))")
    added = subprocess.run([C.PY, "-c", probe], env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"runs": runs, "median_s": med, "added_s": med["import magnus"] - med["pass"],
            "min_s": {k: min(v) for k, v in times.items()}, "modules_added": added}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--import-runs", type=int, default=30)
    ap.add_argument("--cases", default="up,down,floor,import",
                    help="comma-separated subset of up,down,floor,import")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (daemon logs)")
    args = ap.parse_args()
    C.check_python()
    cases = set(args.cases.split(","))
    n = args.calls
    results: dict[str, Any] = {}
    t_start = time.monotonic()
    if "up" in cases:
        print(f"daemon up: {n:,} calls ...", file=sys.stderr)
        results["up"] = case_up(n, args.keep)
    if "down" in cases:
        print(f"daemon down: {n:,} calls ...", file=sys.stderr)
        results["down"] = case_down(n, args.keep)
    if "floor" in cases:
        print(f"floor: {n:,} list.append calls ...", file=sys.stderr)
        results["floor"] = run_client("floor", n, C.clean_env())
    if "import" in cases:
        print(f"import magnus: {args.import_runs} runs ...", file=sys.stderr)
        results["import"] = import_cost(args.import_runs)
    peers = [p for p in PEERS if importlib.util.find_spec(p) is not None]

    # -- report ---------------------------------------------------------------------------
    rows = []
    labels = {"up": "`track_this`, daemon up", "down": "`track_this`, daemon down (spool)",
              "floor": "floor: `list.append((i, time(), {'loss': x}))`"}
    for key in ("up", "down", "floor"):
        if key not in results:
            continue
        r = results[key]
        c, t = r["calls"], r["timer"]
        rows.append([labels[key], f"{c['n']:,}", us(c["p50"]), us(c["p90"]), us(c["p99"]),
                     us(c["p99.9"]), us(c["p99.99"]), us(c["max"]), us(c["mean"])])
        rows.append([f"  timer alone ({key} process)", f"{t['n']:,}", us(t["p50"]), us(t["p90"]),
                     us(t["p99"]), us(t["p99.9"]), us(t["p99.99"]), us(t["max"]),
                     us(t["mean"])])
    out = [f"# track_this latency\n\n{C.machine_line()}; `{' '.join(sys.argv[1:]) or '(defaults)'}`"
           "\n\nEach call timed alone with `time.perf_counter_ns` in a fresh process; "
           "times include the timer's own cost (the 'timer alone' rows). µs.\n"]
    if rows:
        out.append(C.table(["case", "calls", "median", "p90", "p99", "p99.9", "p99.99", "max",
                            "mean"], rows))
    checks = []
    for key in ("up", "down"):
        if key not in results:
            continue
        r = results[key]
        v = r["verify"]
        lost = v["expected"] - v["found"]
        ok = (lost == 0 and not v["bad_values"] and r["flush_ok"]
              and not r.get("dropped") and not r.get("bad_spool_files"))
        extra = (f"{r['spool_files_after_exit']} spool file(s), {r['spool_bytes']:,} bytes; "
                 f"daemon ingested them in {r['spool_ingest_s']:.2f} s"
                 if key == "down" else f"{r['spool_files']} spool file(s)")
        checks.append([key, f"{v['found']:,} / {v['expected']:,}", lost,
                       "yes" if r["flush_ok"] else "NO", r.get("dropped", "?"),
                       f"{r['events_total']:,}", f"{r['loop_s']:.2f}", f"{r['flush_s']:.2f}",
                       extra, "OK" if ok else "FAIL"])
        c = r["calls"]
        checks[-1].append(("yes" if c["p50"] <= 1000 else "no") + " / "
                          + ("yes" if c["p99"] <= 5000 else "no"))
    if checks:
        out.append("\nNothing lost? (run log via `magnusd show RUN_ID --json`: `loss`, "
                   "`loss_1` .. `loss_N`)\n")
        out.append(C.table(["case", "in run log", "lost", "flush() True", "SDK dropped",
                            "daemon events_total", "loop s", "flush s", "notes", "check",
                            "median ≤ 1 µs / p99 ≤ 5 µs"], checks))
    if "import" in results:
        im = results["import"]
        med = im["median_s"]
        out.append(f"\n`import magnus` (median of {im['runs']} interleaved runs, "
                   "PYTHONDONTWRITEBYTECODE unset, .pyc warm)\n")
        out.append(C.table(["command", "median ms", "min ms"],
                           [[f"`python -c '{k}'`", f"{v * 1000:.1f}",
                             f"{im['min_s'][k] * 1000:.1f}"] for k, v in med.items()]
                           + [["added by `import magnus` (target ≤ 10 ms)",
                               f"**{im['added_s'] * 1000:.1f}**",
                               f"{(im['min_s']['import magnus'] - im['min_s']['pass']) * 1000:.1f}"
                               ]]))
        out.append(f"\nModules `import magnus` adds ({len(im['modules_added'])}): "
                   + ", ".join(im["modules_added"]))
    out.append("\nPeer libraries importable here: " + (", ".join(peers) if peers else
               "none (see /work/shared/peers.md for their numbers on this machine kind)"))
    notes = []
    for key in ("up", "down"):
        r = results.get(key)
        if not r:
            continue
        if r["stderr"]:
            notes.append(f"{key}: client stderr: {r['stderr'][:500]}")
        if r["daemon_log_problems"]:
            notes.append(f"{key}: daemon log: " + " / ".join(r["daemon_log_problems"][:5]))
        if r["daemon_exit"] not in (0, None):
            notes.append(f"{key}: daemon exited {r['daemon_exit']} on SIGTERM")
        if r["verify"]["missing"]:
            notes.append(f"{key}: missing e.g. {r['verify']['missing']}")
        if r["verify"]["bad_values"]:
            notes.append(f"{key}: wrong values for {r['verify']['bad_values']}")
        notes.append(f"{key}: daemon RSS {r['daemon_rss_kb'][0] / 1024:.0f} MB "
                     f"(peak {r['daemon_rss_kb'][1] / 1024:.0f} MB); `show` took "
                     f"{r['verify']['show_s']:.2f} s; duplicates skipped "
                     f"{r.get('duplicates_skipped')}; SIGTERM→daemon exit {r['stop_s']:.1f} s")
    if notes:
        out.append("\nNotes:\n" + "\n".join(f"- {x}" for x in notes))
    out.append(f"\nTotal benchmark time {time.monotonic() - t_start:.0f} s.")
    text = "\n".join(out) + "\n"
    print(text)
    path = C.write_report("track_this", text)
    print(f"(written to {path})", file=sys.stderr)
    failed = any(row[-2] != "OK" for row in checks)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
