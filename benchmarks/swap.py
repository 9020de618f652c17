"""Tracker hot swap and `file` tracker fan-out (design §8-§9; §11: config saved → new tracker
receiving ≤ 2 s).

    .venv/bin/python benchmarks/swap.py [--rate 20000] [--swaps 10] [--clients 2] [--events 500000] [--rounds 3] [--cases swap,fanout] [--keep]

**Swap latency.** A private `magnusd serve` with one `file` tracker `main`; one client process
(benchmarks/_steady_client.py) emits `track_this(loss=..., step=i)` at a steady --rate. The
config file is rewritten the way editors save (write a temp file beside it, `os.replace` it into
place), --swaps times for each kind of change:

- `path`: tracker `main` keeps its name, its `config.path` changes to a new file (the new
  instance continues from the old one's cursor);
- `new name`: tracker `main` unchanged, a tracker `extra_k` added (and `extra_{k-1}` removed;
  the new name starts at the journal head).

Measured from the `os.replace` (time.monotonic / time.time taken right after it) to the first
complete line in the new tracker's file (polled every 1 ms), plus `config.loaded_at` from
`status` and the `timestamp` field of that first line (when the client tracked it), both against
the replace's wall time. Afterwards the client stops and flushes; the files of all `main`
instances together must hold every event exactly once.

**Fan-out.** A fresh daemon with one `file` tracker; --clients processes
(benchmarks/_ingest_client.py, one run id each) send --events events each as fast as they can.
From the first event to: the last client's flush() returned (ingest), `status` shows the run
log caught up, and `status` shows the tracker's pending == 0 with every event delivered
(fan-out; polled every 10 ms). The file must hold each (run_id, step) exactly once. Then, on the
same (now idle) daemon, a second `file` tracker with `backfill: true` is added: the time from
its `config.loaded_at` until it has delivered the retained journal is the tracker's rate with no
ingest competing. The same ingest without any tracker is the baseline, in a fresh daemon right after; --rounds such pairs
(with, without) alternate and the report gives each round's ratio and their median.

Each tracker runs in its own worker process (`python -m magnusd._worker`, its pid in `status`):
"daemon CPU" is the daemon process alone, the worker's CPU (from /proc/<pid>/stat, the pid
from `status` at release and at catch-up; NaN if it changed) and peak RSS are listed beside it.

Results: markdown tables on stdout and in benchmarks/out/swap.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _common as C
from ingest import cpu_seconds

STEADY = str(C.HERE / "_steady_client.py")
INGEST = str(C.HERE / "_ingest_client.py")
TARGET_S = 2.0
MEDIAN_TARGET_S = 0.2  # replace → first line, median (worker-process design)
INGEST_TARGET = 0.80  # ingest with the `file` tracker / without


# -- helpers ------------------------------------------------------------------------------


def config_text(trackers: list[dict[str, Any]]) -> str:
    lines = ["experiment_tracker:"]
    for t in trackers:
        lines.append("  - type: file")
        lines.append(f"    name: {t['name']}")
        if t.get("backfill"):
            lines.append("    backfill: true")
        lines.append(f"    config: {{path: {json.dumps(str(t['path']))}}}")
    return "\n".join(lines) + "\n"


def save_config(path: str, trackers: list[dict[str, Any]]) -> tuple[float, float]:
    """Write like an editor: temp file beside it, then os.replace; (monotonic, wall) right
    after the replace."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config_text(trackers))
    os.replace(tmp, path)
    return time.monotonic(), time.time()


def first_line(path: Path, timeout: float, every: float = 0.001) -> tuple[float, bytes]:
    """Poll `path` until it holds a complete first line; (time.monotonic() then, the line)."""
    end = time.monotonic() + timeout
    fd = -1
    try:
        while True:
            if fd < 0:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    pass
            if fd >= 0:
                data = os.pread(fd, 65536, 0)
                nl = data.find(b"\n")
                if nl >= 0:
                    return time.monotonic(), data[:nl]
            if time.monotonic() > end:
                raise TimeoutError(f"no line in {path} within {timeout} s")
            time.sleep(every)
    finally:
        if fd >= 0:
            os.close(fd)


def tracker(st: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in st["trackers"] if t["name"] == name), None)


def read_lines(paths: list[Path]) -> tuple[int, Counter[tuple[str, int]], set[str]]:
    """(lines, Counter of (run_id, step), keys seen) over the files."""
    import msgspec

    class Line(msgspec.Struct):
        run_id: str
        key: str
        step: int

    dec = msgspec.json.Decoder(Line)
    n = 0
    seen: Counter[tuple[str, int]] = Counter()
    keys: set[str] = set()
    for p in paths:
        if not p.exists():
            continue
        with open(p, "rb") as f:
            for raw in f:
                ln = dec.decode(raw)
                n += 1
                seen[(ln.run_id, ln.step)] += 1
                keys.add(ln.key)
    return n, seen, keys


def exactly_once(seen: Counter[tuple[str, int]], expected: dict[str, int]) -> dict[str, Any]:
    """Against run_id -> N (steps 0..N-1): missing, duplicated, unexpected."""
    missing = sum(1 for rid, n in expected.items() for i in range(n) if (rid, i) not in seen)
    dups = sum(c - 1 for c in seen.values() if c > 1)
    unexpected = sum(c for (rid, i), c in seen.items()
                     if rid not in expected or not 0 <= i < expected[rid])
    return {"missing": missing, "duplicates": dups, "unexpected": unexpected}


def collect(procs: list[subprocess.Popen[str]], res: dict[str, Any]) -> list[dict[str, Any]]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        if p.returncode != 0 or not out.strip():
            raise RuntimeError(f"client exited {p.returncode}: {err}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
        if err.strip():
            res.setdefault("client_stderr", []).append(err.strip()[:300])
    return outs


def kill_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()  # our own child, by pid
            p.wait()


def wait_delivered(d: C.Daemon, names: list[str], min_events: int, timeout: float,
                   every: float = 0.01) -> tuple[float, dict[str, Any]]:
    """Until events_total >= min_events and each named tracker has pending == 0."""
    def ok() -> dict[str, Any] | None:
        st = d.status()
        if st["events_total"] < min_events:
            return None
        for n in names:
            t = tracker(st, n)
            if t is None or t["pending"] or t["state"] != "running":
                return None
        return st

    st = C.wait_for(ok, timeout, every, f"trackers {names} caught up")
    return time.monotonic(), st


# -- swap latency -------------------------------------------------------------------------


def case_swap(rate: float, swaps: int, keep: bool) -> dict[str, Any]:
    root = C.short_tmpdir("mbs")
    outd = root / "out"
    d = C.Daemon(root, spool_dir=str(root / "spool"))
    run_id = f"bench-swap-{os.urandom(3).hex()}"
    res: dict[str, Any] = {"rate": rate, "run_id": run_id, "swaps": []}
    procs: list[subprocess.Popen[str]] = []
    main_paths = [outd / "main_0.jsonl"]
    save_config(d.config, [{"name": "main", "path": main_paths[0]}])
    try:
        d.start()
        C.wait_for(lambda: (t := tracker(d.status(), "main")) and t["state"] == "running", 10,
                   0.02, "tracker main running")
        procs = C.start_clients(STEADY, str(rate), d, [run_id], str(root / "cspool"))
        C.send(procs, "go\n")
        first_line(main_paths[0], 10)  # flowing
        time.sleep(0.5)
        extra: dict[str, Any] | None = None
        plan = ["path"] * swaps + ["new name"] * swaps
        for k, kind in enumerate(plan, 1):
            if kind == "path":
                new = outd / f"main_{k}.jsonl"
                main_paths.append(new)
                trackers = [{"name": "main", "path": new}]
                name = "main"
            else:
                extra = {"name": f"extra_{k}", "path": outd / f"extra_{k}.jsonl"}
                trackers = [{"name": "main", "path": main_paths[-1]}, extra]
                new, name = extra["path"], extra["name"]
            before = d.status()["config"]["loaded_at"]
            t_rep, w_rep = save_config(d.config, trackers)
            t_seen, line = first_line(new, 15)
            ev = json.loads(line)
            st = C.wait_for(lambda: (s := d.status())["config"]["loaded_at"] != before and s,
                            5, 0.005, "config.loaded_at to change")
            t = tracker(st, name)
            res["swaps"].append({
                "kind": kind, "tracker": name,
                "first_line_s": t_seen - t_rep,
                "loaded_s": st["config"]["loaded_at"] - w_rep,
                "first_ts_s": ev["timestamp"] - w_rep,
                "config_error": st["config"]["error"],
                "state": t["state"] if t else None,
            })
            print(f"  swap {k:2d} ({kind}): first line after {t_seen - t_rep:.3f} s",
                  file=sys.stderr)
            time.sleep(0.3)  # let the previous change settle (and its debounce window pass)
        C.send(procs, "stop\n")
        outs = collect(procs, res)
        n = outs[0]["n"]
        res.update(events=n, flush_ok=outs[0]["flush_ok"], max_burst=outs[0]["max_burst"],
                   achieved_rate=n / (outs[0]["t_last"] - outs[0]["t_first"]))
        names = ["main"] + ([extra["name"]] if extra else [])
        _, st = wait_delivered(d, names, n, 60)
        res["trackers_end"] = st["trackers"]
        lines, seen, keys = read_lines(main_paths)
        res["main_check"] = {"lines": lines, "files": len(main_paths), "keys": sorted(keys),
                             **exactly_once(seen, {run_id: n})}
        res["daemon_rss_kb"] = d.rss_kb()
    finally:
        kill_all(procs)
        res["daemon_exit"] = d.stop()
        res["daemon_log_problems"] = d.log_problems()
        C.remove_tree(root, keep)
    return res


# -- fan-out throughput -------------------------------------------------------------------


def case_fanout(nclients: int, per: int, with_tracker: bool, keep: bool) -> dict[str, Any]:
    total = per * nclients
    root = C.short_tmpdir("mbf")
    outd = root / "out"
    d = C.Daemon(root, spool_dir=str(root / "spool"))
    tag = os.urandom(2).hex()
    run_ids = [f"bench-fan-{tag}-{k}" for k in range(nclients)]
    res: dict[str, Any] = {"clients": nclients, "events": total, "tracker": with_tracker}
    procs: list[subprocess.Popen[str]] = []
    fan_path = outd / "fan.jsonl"
    if with_tracker:
        save_config(d.config, [{"name": "main", "path": fan_path}])
    try:
        d.start()
        assert d.proc is not None
        if with_tracker:
            C.wait_for(lambda: (t := tracker(d.status(), "main")) and t["state"] == "running",
                       10, 0.02, "tracker main running")
        procs = C.start_clients(INGEST, str(per), d, run_ids, str(root / "cspool"))
        base = d.status()
        cpu0 = cpu_seconds(d.proc.pid)
        # Each tracker runs in its own worker process: its CPU is not the daemon's.
        wpid0 = d.workers(base)
        wcpu0 = {n: cpu_seconds(pid) for n, pid in wpid0.items()}
        C.send(procs, "go\n")
        t_runlog = t_fan = None
        max_pending = 0
        end = time.monotonic() + 300
        while time.monotonic() < end:
            st = d.status()
            now = time.monotonic()
            got = st["events_total"] - base["events_total"] >= total
            if t_runlog is None and got and st["runlog"]["applied_seq"] == st["journal"][
                    "last_seq"]:
                t_runlog = now
            if with_tracker:
                t = tracker(st, "main")
                assert t is not None
                max_pending = max(max_pending, t["pending"])
                if t_fan is None and got and t["pending"] == 0 and t["delivered"] >= total:
                    t_fan = now
            if t_runlog is not None and (t_fan is not None or not with_tracker):
                break
            time.sleep(0.01)
        else:
            raise TimeoutError(f"not caught up within 300 s: {st}")
        cpu1 = cpu_seconds(d.proc.pid)
        wpid1 = d.workers(st)
        # A worker restarted meanwhile (new pid): its predecessor's CPU is lost, so NaN.
        res["worker_cpu_s"] = sum(cpu_seconds(pid) - wcpu0[n] if wpid0.get(n) == pid
                                  else float("nan") for n, pid in wpid1.items())
        res["worker_rss_kb"] = {n: C.mem_kb(pid) for n, pid in wpid1.items()}
        outs = collect(procs, res)
        t_first = min(o["t_first"] for o in outs)
        t_flushed = max(o["t_flushed"] for o in outs)
        res.update(
            ingest_s=t_flushed - t_first, runlog_s=t_runlog - t_first,
            client_loop_s=max(o["t_loop"] - o["t_first"] for o in outs),
            flush_ok=all(o["flush_ok"] for o in outs),
            events_total=st["events_total"] - base["events_total"],
            duplicates_skipped=st.get("duplicates_skipped"),
            daemon_cpu_s=cpu1 - cpu0, max_pending=max_pending,
        )
        if with_tracker:
            assert t_fan is not None
            t = tracker(st, "main")
            assert t is not None
            res.update(fan_s=t_fan - t_first, fan_lag_s=t_fan - t_flushed,
                       delivered=t["delivered"], tracker_errors=t["errors"],
                       tracker_last_error=t["last_error"], restarts=t["restarts"])
            lines, seen, _ = read_lines([fan_path])
            res["check"] = {"lines": lines, **exactly_once(seen, dict.fromkeys(run_ids, per))}
            # The same tracker type alone: a backfill replay of the retained journal, idle daemon.
            rpath = outd / "replay.jsonl"
            before = d.status()["config"]["loaded_at"]
            _, w_rep = save_config(d.config, [{"name": "main", "path": fan_path},
                                              {"name": "replay", "path": rpath,
                                               "backfill": True}])
            C.wait_for(lambda: d.status()["config"]["loaded_at"] != before, 10, 0.005,
                       "replay config loaded")
            _, st2 = wait_delivered(d, ["replay"], 0, 120, every=0.01)
            w_done = time.time()
            r = tracker(st2, "replay")
            assert r is not None
            rlines, rseen, _ = read_lines([rpath])
            res["replay"] = {"delivered": r["delivered"], "lines": rlines,
                             "s": w_done - st2["config"]["loaded_at"],
                             "from_replace_s": w_done - w_rep,
                             **exactly_once(rseen, dict.fromkeys(run_ids, per))}
        res["rss_kb"] = d.rss_kb()
    finally:
        kill_all(procs)
        res["daemon_exit"] = d.stop(timeout=120)
        res["daemon_log_problems"] = d.log_problems()
        C.remove_tree(root, keep)
    res["ingest_eps"] = total / res["ingest_s"]
    res["runlog_eps"] = total / res["runlog_s"]
    if with_tracker:
        res["fan_eps"] = total / res["fan_s"]
        rp = res["replay"]
        rp["eps"] = rp["delivered"] / rp["s"] if rp["s"] > 0 else float("nan")
    return res


# -- report -------------------------------------------------------------------------------


def stats(vals: list[float]) -> str:
    s = sorted(vals)
    return f"{statistics.median(s):.3f} / {s[-1]:.3f}" if s else "-"


def report(args: argparse.Namespace, swap: dict[str, Any] | None,
           fans: list[dict[str, Any]], elapsed: float) -> str:
    out = [f"# tracker hot swap and fan-out\n\n{C.machine_line()}; "
           f"`{' '.join(sys.argv[1:]) or '(defaults)'}`; total {elapsed:.0f} s\n"]
    problems: list[str] = []
    if swap:
        sw = swap["swaps"]
        out.append(f"## swap latency (target ≤ {TARGET_S:g} s)\n\nOne client at "
                   f"{swap['achieved_rate']:,.0f} events/s (asked {swap['rate']:,.0f}); the "
                   "config file replaced with `os.replace`; seconds from the replace, "
                   "median / max.\n")
        rows = []
        for kind in ("path", "new name"):
            s = [x for x in sw if x["kind"] == kind]
            if not s:
                continue
            worst = max(x["first_line_s"] for x in s)
            rows.append([
                "`main` path A → B (same name)" if kind == "path" else "new tracker name",
                len(s), stats([x["loaded_s"] for x in s]), stats([x["first_line_s"] for x in s]),
                stats([x["first_ts_s"] for x in s]),
                "OK" if worst <= TARGET_S else "SLOW",
                "OK" if statistics.median(x["first_line_s"] for x in s) <= MEDIAN_TARGET_S
                else "over"])
        out.append(C.table(["change", "swaps", "replace → config.loaded_at",
                            "replace → first line in new file",
                            "first line's `timestamp` − replace", "max ≤ 2 s",
                            f"median ≤ {MEDIAN_TARGET_S:g} s"], rows))
        mc = swap["main_check"]
        ok = (mc["missing"] == 0 and mc["duplicates"] == 0 and mc["unexpected"] == 0
              and swap["flush_ok"])
        out.append(f"\nExactly once across the {mc['files']} `main` instances' files: "
                   f"{mc['lines']:,} lines for {swap['events']:,} events sent; missing "
                   f"{mc['missing']}, duplicated {mc['duplicates']}, unexpected "
                   f"{mc['unexpected']} — **{'OK' if ok else 'FAIL'}**. Client's largest "
                   f"catch-up burst: {swap['max_burst']} events.\n")
        if not ok:
            problems.append("swap: main instances not exactly once")
        errs = [x for x in sw if x["config_error"] or x["state"] != "running"]
        if errs:
            problems.append(f"swap: {len(errs)} swap(s) with a config error or a tracker not "
                            f"running: {errs[:2]}")
        out.append("<details><summary>each swap (s)</summary>\n")
        out.append(C.table(["#", "change", "tracker", "→ loaded_at", "→ first line",
                            "first `timestamp` − replace"],
                           [[i, x["kind"], x["tracker"], f"{x['loaded_s']:.3f}",
                             f"{x['first_line_s']:.3f}", f"{x['first_ts_s']:.3f}"]
                            for i, x in enumerate(sw, 1)]))
        out.append("\n</details>\n")
        for p in swap["daemon_log_problems"]:
            problems.append(f"swap daemon log: {p}")
        if swap["daemon_exit"] != 0:
            problems.append(f"swap daemon exited {swap['daemon_exit']}")
    if fans:
        out.append("## `file` tracker fan-out while ingest runs at full speed\n\nFrom the "
                   "first event of any client; events/s = events / that time. Fan-out lag = "
                   "fan-out done − ingest done. CPU from release to caught up: the daemon "
                   "process, and (the tracker runs in its own process) its worker. Rounds "
                   "alternate: with the tracker, then the baseline, each a fresh daemon.\n")
        rows = []
        for r in fans:
            c = r.get("check")
            w = r.get("worker_rss_kb", {}).get("main")
            rows.append([
                r.get("round", 1),
                "`file` tracker" if r["tracker"] else "no tracker (baseline)",
                f"{r['clients']} × {r['events'] // r['clients']:,}",
                f"{r['ingest_s']:.2f}", f"**{r['ingest_eps']:,.0f}**",
                f"{r['runlog_eps']:,.0f}",
                f"{r['fan_s']:.2f}" if r["tracker"] else "-",
                f"**{r['fan_eps']:,.0f}**" if r["tracker"] else "-",
                f"{r['fan_lag_s']:.2f}" if r["tracker"] else "-",
                f"{r['max_pending']:,}" if r["tracker"] else "-",
                f"{r['daemon_cpu_s']:.2f}",
                f"{r['worker_cpu_s']:.2f}" if r["tracker"] else "-",
                f"{r['rss_kb'][1] / 1024:.0f}" + (f" / {w[1] / 1024:.0f}" if w else ""),
                f"{c['lines']:,}" if c else "-",
                f"{c['missing']} / {c['duplicates']}" if c else "-",
            ])
        out.append(C.table(["round", "case", "clients × events", "ingest s", "ingest events/s",
                            "run log events/s", "fan-out s", "fan-out events/s",
                            "fan-out lag s", "max pending", "daemon CPU s", "worker CPU s",
                            "peak RSS MB daemon / worker", "lines in file",
                            "missing / duplicated"], rows))
        pairs = [(a, b) for a in fans for b in fans if a["tracker"] and not b["tracker"]
                 and a.get("round", 1) == b.get("round", 1)]
        if pairs:
            ratios = [a["ingest_eps"] / b["ingest_eps"] for a, b in pairs]
            fan = [a["fan_eps"] for a, _ in pairs]
            out.append(f"\nIngest with the `file` tracker ÷ without, round by round: "
                       f"{', '.join(f'{x:.1%}' for x in ratios)}; **median "
                       f"{statistics.median(ratios):.1%}** (target ≥ {INGEST_TARGET:.0%}). "
                       f"Fan-out events/s: median **{statistics.median(fan):,.0f}** "
                       f"(min {min(fan):,.0f}, max {max(fan):,.0f}).\n")
        reps = [(r.get("round", 1), r["replay"]) for r in fans if r["tracker"]]
        if reps:
            out.append("\nThe `file` tracker alone (the same daemon, idle after the round: a "
                       "second `file` tracker with `backfill: true` replays the retained "
                       "journal; events/s from its `config.loaded_at`):\n")
            out.append(C.table(
                ["round", "events", "s from loaded_at", "events/s", "s from the replace",
                 "lines in file", "missing / duplicated"],
                [[rnd, f"{rp['delivered']:,}", f"{rp['s']:.2f}", f"**{rp['eps']:,.0f}**",
                  f"{rp['from_replace_s']:.2f}", f"{rp['lines']:,}",
                  f"{rp['missing']} / {rp['duplicates']}"] for rnd, rp in reps]))
            out.append("")
        for r in fans:
            if not r["tracker"]:
                continue
            rp = r["replay"]
            if rp["missing"] or rp["duplicates"] or rp["lines"] != r["events"]:
                problems.append(f"fan-out replay: file check failed: {rp}")
            c = r["check"]
            if (c["missing"] or c["duplicates"] or c["unexpected"] or c["lines"] != r["events"]
                    or not r["flush_ok"]):
                problems.append(f"fan-out: file check failed: {c}")
            if r["tracker_errors"] or r.get("restarts"):
                problems.append(f"fan-out: tracker errors {r['tracker_errors']}, restarts "
                                f"{r.get('restarts')}: {r['tracker_last_error']}")
        for r in fans:
            for p in r["daemon_log_problems"]:
                problems.append(f"fan-out daemon log: {p}")
            if r["daemon_exit"] != 0:
                problems.append(f"fan-out daemon exited {r['daemon_exit']}")
            for e in r.get("client_stderr", []):
                problems.append(f"client stderr: {e}")
    if swap:
        for e in swap.get("client_stderr", []):
            problems.append(f"client stderr: {e}")
    out.append("## problems\n\n" + ("\n".join(f"- {p}" for p in problems) if problems
                                    else "none (no WARNING/ERROR in the daemon logs, nothing "
                                         "lost or duplicated)"))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=20_000, help="swap: client events/s")
    ap.add_argument("--swaps", type=int, default=10, help="swap: swaps of each kind")
    ap.add_argument("--clients", type=int, default=2, help="fan-out: client processes")
    ap.add_argument("--events", type=int, default=500_000, help="fan-out: events per client")
    ap.add_argument("--rounds", type=int, default=3,
                    help="fan-out: rounds of (with the tracker, without)")
    ap.add_argument("--cases", default="swap,fanout", help="comma-separated subset")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (daemon logs)")
    args = ap.parse_args()
    C.check_python()
    cases = set(args.cases.split(","))
    t0 = time.monotonic()
    swap = None
    fans = []
    if "swap" in cases:
        print(f"swap: {args.swaps} + {args.swaps} swaps at {args.rate:,.0f} events/s ...",
              file=sys.stderr)
        swap = case_swap(args.rate, args.swaps, args.keep)
    if "fanout" in cases:
        for rnd in range(1, args.rounds + 1):
            for with_tracker in (True, False):
                print(f"fan-out round {rnd}: {args.clients} × {args.events:,} events, "
                      f"{'file tracker' if with_tracker else 'no tracker'} ...",
                      file=sys.stderr)
                r = case_fanout(args.clients, args.events, with_tracker, args.keep)
                r["round"] = rnd
                fans.append(r)
    text = report(args, swap, fans, time.monotonic() - t0)
    print(text)
    print(f"(written to {C.write_report('swap', text)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
