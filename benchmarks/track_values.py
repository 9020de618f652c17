"""Per-call cost of `track_this(loss=v, step=i)` by value type, and the plain-float cost of the
current SDK against a baseline revision, measured in one run.

    .venv/bin/python benchmarks/track_values.py [--baseline a56ada8] [--current REV] [--rounds 3]
        [--calls 1000000] [--slow-calls 100000] [--torch-calls 20000] [--cases ...] [--keep]

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

Results: a markdown table on stdout and in benchmarks/out/track_values.md (with `--current REV`:
track_values-REV.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as C

CLIENT = str(C.HERE / "_values_client.py")
REPO = C.HERE.parent
LABELS = {"float": "plain `float`", "f64": "`np.float64` scalar", "f32": "`np.float32` scalar",
          "i64": "`np.int64` scalar", "arr16": "numpy array, 16 × float32",
          "torch": "0-d torch tensor (float32)"}
SLOW = ("f64", "f32", "i64", "arr16", "torch")


def us(ns: float) -> str:
    return f"{ns / 1000:.3f}"


def git(*args: str) -> str:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never refresh the index
    return subprocess.run(["git", "-C", str(REPO), *args], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def extract_sdk(rev: str, dest: Path) -> str:
    """`git archive REV sdk/magnus | tar -x -C dest`; returns the full commit id."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", commit, "sdk/magnus"],
                               stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0 or tar.returncode != 0:
        raise RuntimeError(f"could not extract sdk/magnus at {rev}")
    if not (dest / "sdk" / "magnus" / "__init__.py").is_file():
        raise RuntimeError(f"no sdk/magnus/__init__.py at {rev}")
    return commit


def expected(kind: str, i: int) -> Any:
    """The value step i must have in the run log (what _values_client.py sent, as plain JSON)."""
    if kind in ("float", "f64"):
        return i * 1e-6
    if kind in ("f32", "torch"):
        return i * 0.5
    if kind == "i64":
        return i
    return [i + 0.25 * k for k in range(16)]  # arr16


def plain_ok(kind: str, v: Any, want: Any) -> bool:
    if kind == "i64":
        return type(v) is int and v == want
    if kind == "arr16":
        return type(v) is list and all(type(x) is float for x in v) and v == want
    return type(v) is float and v == want


def verify_run(d: C.Daemon, run_id: str, kind: str, n: int) -> dict[str, Any]:
    t0 = time.monotonic()
    run = d.show(run_id)
    show_s = time.monotonic() - t0
    m = run.get("steps", {}).get("main", {}).get("user_defined_metrics", {})
    found = 0
    missing: list[str] = []
    bad: list[str] = []
    for i in range(n + 1):
        name = "loss" if i == 0 else f"loss_{i}"
        if name not in m:
            if len(missing) < 5:
                missing.append(name)
            continue
        found += 1
        if not plain_ok(kind, m[name], expected(kind, i)) and len(bad) < 5:
            bad.append(f"{name}={m[name]!r}")
    sample = {k: m[k] for k in ("loss_1", f"loss_{n}") if k in m}
    return {"found": found, "expected": n + 1, "missing": missing, "bad_values": bad,
            "sample": json.dumps(sample, separators=(",", ":")), "show_s": show_s,
            "status": run.get("status"),
            "attempts": len(run.get("steps", {}).get("main", {}).get("attempts", []))}


def run_case(d: C.Daemon, cspool: str, kind: str, sdk: str, n: int, rnd: int,
             sdk_dirs: dict[str, Path | None]) -> dict[str, Any]:
    run_id = f"bench-{kind}-{sdk}-{rnd}-{os.urandom(3).hex()}"
    env = C.clean_env(MAGNUS_SOCKET=d.sock, MAGNUS_DATA_DIR=d.data, MAGNUS_CONFIG=d.config,
                      MAGNUS_SPOOL_DIR=cspool, MAGNUS_RUN_ID=run_id)
    env.pop("PYTHONPATH", None)
    extracted = sdk_dirs[sdk]
    if extracted is not None:  # a `git archive` copy, imported ahead of the editable install
        env["PYTHONPATH"] = str(extracted)
        where = extracted / "magnus"
    else:
        where = REPO / "sdk" / "magnus"
    before = d.status()["events_total"]
    load = os.getloadavg()[0]
    print(f"round {rnd}: {kind} / {sdk}: {n:,} calls ...", file=sys.stderr)
    r = subprocess.run([C.PY, CLIENT, kind, str(n), str(where)], env=env, capture_output=True,
                       timeout=900)
    err = r.stderr.decode(errors="replace").strip()
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError(f"client {kind}/{sdk} exited {r.returncode}:\n{err}")
    res: dict[str, Any] = json.loads(r.stdout.decode().strip().splitlines()[-1])
    res.update(sdk=sdk, round=rnd, n=n, load=load,
               stderr=[ln for ln in err.splitlines() if not ln.startswith("magnus imported")])
    _, st = d.wait_applied(before + n + 1)
    res["events"] = st["events_total"] - before
    res["verify"] = verify_run(d, run_id, kind, n)
    res["spool_files"] = len(list(Path(cspool).glob("*"))) if os.path.isdir(cspool) else 0
    v = res["verify"]
    res["ok"] = (v["found"] == v["expected"] and not v["bad_values"] and res["flush_ok"]
                 and not res.get("dropped") and res["spool_files"] == 0
                 and v["status"] == "SUCCESS")
    c = res["calls"]
    print(f"  median {us(c['p50'])} µs, p99 {us(c['p99'])} µs, p99.9 {us(c['p99.9'])} µs; "
          f"run log {v['found']:,}/{v['expected']:,} {'OK' if res['ok'] else 'FAIL'}",
          file=sys.stderr)
    return res


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(results: list[dict[str, Any]], args: argparse.Namespace, commit: str,
           current: str, head: str, dirty: list[str], load0: str, t_total: float,
           daemon: dict[str, Any]) -> str:
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault((r["kind"], r["sdk"]), []).append(r)
    out = [f"# track_this cost by value type, and the current SDK against {args.baseline}\n",
           f"{C.machine_line()}; load average at start {load0}; "
           f"`{' '.join(sys.argv[1:]) or '(defaults)'}`\n",
           f"baseline = `git archive {commit[:12]} sdk/magnus` (PYTHONPATH); current = "
           + (f"`git archive {current[:12]} sdk/magnus` (`--current {args.current}`, "
              "PYTHONPATH)" if current else "the working tree's sdk/magnus")
           + f"; one `magnusd serve` from the working tree (HEAD {head[:12]}"
           + (f", **uncommitted changes in {', '.join(dirty)}**" if dirty else
              ", sdk/ and daemon/ unchanged from HEAD")
           + ") for every case.\n",
           "Each call timed alone with `time.perf_counter_ns` in a fresh process, after a "
           "warm-up call; times include the timer's own cost (its median in the 'timer' "
           "column). µs; 'all' = median of the per-round values (max: the largest); 'load "
           "1 min' = /proc/loadavg as the case started.\n"]

    rows = []
    order = [("float", "baseline"), ("float", "current")] + [(k, "current") for k in SLOW]
    ref = by.get(("float", "current"))
    ref_med = med([r["calls"]["p50"] for r in ref]) if ref else float("nan")
    for key in order:
        rs = by.get(key)
        if not rs:
            continue
        kind, sdk = key
        for r in rs:
            c = r["calls"]
            rows.append([f"{LABELS[kind]}, {sdk}", r["round"], f"{c['n']:,}", us(c["p50"]),
                         us(c["p99"]), us(c["p99.9"]), us(c["max"]), us(c["mean"]),
                         us(r["timer"]["p50"]), f"{r['load']:.2f}", ""])
        m50 = med([r["calls"]["p50"] for r in rs])
        rows.append([f"**{LABELS[kind]}, {sdk}**", "all", f"{sum(r['calls']['n'] for r in rs):,}",
                     f"**{us(m50)}**", f"**{us(med([r['calls']['p99'] for r in rs]))}**",
                     f"**{us(med([r['calls']['p99.9'] for r in rs]))}**",
                     us(max(r["calls"]["max"] for r in rs)),
                     us(med([r["calls"]["mean"] for r in rs])),
                     us(med([r["timer"]["p50"] for r in rs])), "",
                     f"{m50 / ref_med:.2f}×" if ref else ""])
    out.append(C.table(["case", "round", "calls", "median", "p99", "p99.9", "max", "mean",
                        "timer", "load 1 min", "median vs. plain float, current"], rows))

    base, cur = by.get(("float", "baseline"), []), by.get(("float", "current"), [])
    overall = float("nan")
    if base and cur:
        out.append("\nPlain float, current / baseline (each round: baseline then current, "
                   "same daemon):\n")
        ratio_rows = []

        def pair(b: dict[str, Any], c: dict[str, Any], key: str) -> list[str]:
            vb, vc = b["calls"][key], c["calls"][key]
            return [f"{us(vb)} / {us(vc)}", f"{vc / vb:.3f}"]

        def cpu(r: dict[str, Any], key: str) -> str:
            return "?" if r.get(key) is None else f"{r[key]:.2f}"

        for b, c in zip(base, cur, strict=True):
            ratio_rows.append([b["round"], *pair(b, c, "p50"), *pair(b, c, "p99"),
                               *pair(b, c, "p99.9"), *pair(b, c, "mean"),
                               f"{cpu(b, 'main_cpu_s')} / {cpu(c, 'main_cpu_s')}",
                               f"{cpu(b, 'flusher_cpu_s')} / {cpu(c, 'flusher_cpu_s')}",
                               f"{b['loop_s']:.2f} / {c['loop_s']:.2f}"])

        def medpair(key: str) -> list[str]:
            vb = med([r["calls"][key] for r in base])
            vc = med([r["calls"][key] for r in cur])
            return [f"{us(vb)} / {us(vc)}", f"{vc / vb:.3f}"]

        def medcpu(key: str) -> str:
            vals = [[r.get(key) for r in rs] for rs in (base, cur)]
            if any(v is None for vs in vals for v in vs):
                return "?"
            return " / ".join(f"{med(vs):.2f}" for vs in vals)

        mb = med([r["calls"]["p50"] for r in base])
        mc = med([r["calls"]["p50"] for r in cur])
        overall = mc / mb
        ratio_rows.append(["**all** (median of rounds)", f"{us(mb)} / {us(mc)}",
                           f"**{overall:.3f}**", *medpair("p99"), *medpair("p99.9"),
                           *medpair("mean"), medcpu("main_cpu_s"), medcpu("flusher_cpu_s"),
                           " / ".join(f"{med([r['loop_s'] for r in rs]):.2f}"
                                      for rs in (base, cur))])
        out.append(C.table(["round", "median (b / c)", "ratio", "p99 (b / c)", "ratio",
                            "p99.9 (b / c)", "ratio", "mean (b / c)", "ratio",
                            "main thread CPU s (b / c)", "flusher CPU s (b / c)",
                            "loop wall s (b / c)"], ratio_rows))
        out.append("\n(b = baseline, c = current. CPU s: the main thread over the loop and "
                   "flush(), the SDK's flusher thread over its life; the mean and the wall time "
                   "also count waiting for a CPU, which the machine's other load decides.)")
        verdict = ("within 5 %" if overall <= 1.05 else "**more than 5 % slower**")
        pairs = zip(base, cur, strict=True)
        per_round = med([c["calls"]["p50"] / b["calls"]["p50"] for b, c in pairs])
        out.append(f"\nPlain-float median, current / baseline = {overall:.3f} (median of the "
                   f"per-round ratios {per_round:.3f}): {verdict}.")

    checks = []
    for r in results:
        v = r["verify"]
        checks.append([f"{r['kind']}/{r['sdk']}", r["round"],
                       f"{v['found']:,} / {v['expected']:,}", v["expected"] - v["found"],
                       len(v["bad_values"]), f"{r['events']:,}",
                       "yes" if r["flush_ok"] else "NO", r.get("dropped", "?"),
                       v["status"], f"{v['show_s']:.1f}",
                       f"`{v['sample']}`" if r["round"] == 1 else "",
                       "OK" if r["ok"] else "FAIL"])
    out.append("\nNothing lost? (run log via `magnusd show RUN_ID --json`: `loss`, `loss_1` .. "
               "`loss_N`, every value compared with what was sent and of the plain JSON type)\n")
    out.append(C.table(["case", "round", "in run log", "lost", "wrong value/type",
                        "daemon events", "flush() True", "SDK dropped", "run status", "show s",
                        "sample from the run log", "check"], checks))

    files = sorted({f"{r['sdk']}: `{r['magnus_file']}`" for r in results})
    out.append("\n`magnus` imported from (checked in each client): " + "; ".join(files))
    types = sorted({f"{r['kind']}: `{r['value_type']}`" for r in results})
    out.append("\nValue types sent: " + ", ".join(types))
    notes = []
    for r in results:
        if r["stderr"]:
            notes.append(f"{r['kind']}/{r['sdk']} round {r['round']}: client stderr: "
                         + " / ".join(r["stderr"])[:500])
        if r["verify"]["missing"]:
            notes.append(f"{r['kind']}/{r['sdk']} round {r['round']}: missing e.g. "
                         f"{r['verify']['missing']}")
        if r["verify"]["bad_values"]:
            notes.append(f"{r['kind']}/{r['sdk']} round {r['round']}: wrong e.g. "
                         f"{r['verify']['bad_values']}")
        if r.get("last_error"):
            notes.append(f"{r['kind']}/{r['sdk']} round {r['round']}: SDK last_error "
                         f"{r['last_error']!r}")
    if daemon["daemon_log_problems"]:
        notes.append("daemon log: " + " / ".join(daemon["daemon_log_problems"][:5]))
    if daemon["daemon_exit"] not in (0, None):
        notes.append(f"daemon exited {daemon['daemon_exit']} on SIGTERM")
    notes.append(f"daemon RSS {daemon['rss_kb'][0] / 1024:.0f} MB (peak "
                 f"{daemon['rss_kb'][1] / 1024:.0f} MB) at the end")
    out.append("\nNotes:\n" + "\n".join(f"- {x}" for x in notes))
    out.append(f"\nTotal benchmark time {t_total:.0f} s.")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (daemon log)")
    args = ap.parse_args()
    C.check_python()
    cases = [k for k in ("float",) + SLOW if k in set(args.cases.split(","))]
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    t_start = time.monotonic()

    head = git("rev-parse", "HEAD")
    dirty = sorted(set(git("diff", "--name-only", "HEAD", "--", "sdk", "daemon").split()
                       + git("ls-files", "--others", "--exclude-standard", "--", "sdk",
                             "daemon").split()))
    root = C.short_tmpdir("mbv")
    sdk_dirs: dict[str, Path | None] = {"baseline": root / "base" / "sdk", "current": None}
    (root / "base").mkdir()
    commit = extract_sdk(args.baseline, root / "base")
    print(f"baseline {args.baseline} = {commit[:12]} extracted to {sdk_dirs['baseline']}",
          file=sys.stderr)
    current = ""
    if args.current:
        (root / "cur").mkdir()
        current = extract_sdk(args.current, root / "cur")
        sdk_dirs["current"] = root / "cur" / "sdk"
        print(f"current {args.current} = {current[:12]} extracted to {sdk_dirs['current']}",
              file=sys.stderr)
    d = C.Daemon(root)
    results: list[dict[str, Any]] = []
    daemon: dict[str, Any] = {}
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
        daemon["rss_kb"] = d.rss_kb()
    finally:
        daemon.setdefault("rss_kb", (0, 0))
        C.finish(d, root, args.keep, daemon)
    text = report(results, args, commit, current, head, dirty, load0, time.monotonic() - t_start,
                  daemon)
    print(text)
    path = C.write_report("track_values" + (f"-{args.current}" if args.current else ""), text)
    print(f"(written to {path})", file=sys.stderr)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
