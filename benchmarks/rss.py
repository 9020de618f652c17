"""Memory: the daemon with the real trackers configured, and each tracker's worker process
(design: daemon RSS with MLflow, W&B and TensorBoard configured ≤ 60 MB, workers reported
separately).

    .venv/bin/python benchmarks/rss.py [--n 200000] [--rounds 1] [--cases none,trackers]
        [--every 0.2] [--daemon-rev REV] [--no-verify] [--quick] [--keep]

Two cases in one run, each a fresh private `magnusd serve` (socket, data directory, sqlite db,
W&B and TensorBoard directories under /tmp; the daemon's working directory is that temp dir):

- `none`: no tracker configured (the reference);
- `trackers`: MLflow (`sqlite:///<tmp>/mlflow.db`), W&B (`mode: offline`, `dir: <tmp>/wb`,
  and WANDB_MODE=offline, WANDB_DIR / _CACHE_DIR / _CONFIG_DIR / _DATA_DIR under the temp dir
  in the daemon's environment, which its workers inherit) and TensorBoard (`log_dir`).

The daemon is started, the trackers' workers come up (`status`: every tracker `running`), then
one client process (benchmarks/_trackers_client.py) sends `track_this(loss=1/i, step=i)` for
i = 1..N as fast as it can and `flush()`es. Until every tracker is `caught_up` with `pending` 0
and N more events delivered (and the run log caught up with the journal), every --every
seconds: `status` (for the workers' pids) and /proc/<pid>/status (VmRSS, VmHWM) of the daemon,
each worker and each worker's descendants (W&B's `wandb-core`). Reported: the daemon's VmRSS
after start (trackers loaded, nothing sent), at the end, the largest VmRSS sampled and VmHWM
(the kernel's peak over the process's life); the same for each worker (the worker whose pid
`status` showed; a restart is reported, its predecessor's peak is then the largest seen), and
the status' own `rss_mb` as a cross-check. The daemon's web viewer (on by default since
9bcee4f) listens on a free port of its own (tests/harness.py); the report says whether it
did. Afterwards every point is read back from MLflow,
TensorBoard and the W&B offline file (as benchmarks/trackers.py does), unless --no-verify.
--rounds repeats the pair (no tracker, then the three), each a fresh daemon: the daemon's peak
moves by several MB from run to run with the ingest's timing.

--daemon-rev REV runs the daemon and its workers from `git archive REV daemon/magnusd`
(extracted to a temp dir, first on PYTHONPATH; the client's SDK stays the working tree's), to
tell the trackers' cost from other changes to the daemon; the report names the code measured.

Results: benchmarks/out/rss.json, rendered to rss.md (render.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import _common as C
from _results import Report, Result, finish, new_report, tbl
from _rss_cases import TARGET_MB, RssCase, case, daemon_source
from _tracker_data import landed
from _trackers_cases import KINDS, LABEL

# -- report -------------------------------------------------------------------------------


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def report(rep: Report, args: argparse.Namespace, results: list[RssCase], src: str) -> None:
    rep.intro = (f"Daemon code: {src}.\n\n"
           f"N = {args.n:,} events (`loss` = 1/i, steps 1..N, one run, one client process as "
           f"fast as it can), then until every tracker is caught up; /proc/<pid>/status "
           f"sampled every {args.every:g} s. MB = MiB. Peak = VmHWM (the kernel's high-water "
           f"mark over the whole process life, start-up included). Rounds alternate: no "
           f"tracker, then the three trackers, each a fresh daemon.")
    problems = rep.notes
    rows: list[list[Any]] = []
    for r in results:
        dm = r.daemon
        peak = dm.last[1]
        rows.append([
            r.round,
            "none (reference)" if not r.kinds else ", ".join(LABEL[k] for k in r.kinds),
            r.viewer, f"{r.n:,}", mb(r.after_start.daemon[0]),
            mb(dm.last[0]), mb(dm.max_rss), mb(peak),
            f"{r.runlog_s:.2f}",
            ("OK" if peak / 1024 <= TARGET_MB else "OVER") if r.kinds else "-"])
    rep.add(tbl(["round", "trackers configured", "web viewer", "events", "VmRSS after start MB",
                 "VmRSS at end MB", "largest VmRSS sampled MB", ("peak VmHWM MB", "*"),
                 "run log caught up s", f"peak ≤ {TARGET_MB:g} MB"], rows, "the daemon process"))
    none = [r for r in results if not r.kinds]
    trk = [r for r in results if r.kinds]
    if none and trk:
        def rng(rs: list[RssCase], i: int) -> str:
            v = sorted(r.daemon.last[i] for r in rs)
            return f"{mb(v[0])}–{mb(v[-1])}" if len(v) > 1 else mb(v[0])

        rep.add(f"\nDaemon peak (VmHWM) with the three trackers {rng(trk, 1)} MB, with no "
                   f"tracker {rng(none, 1)} MB; VmRSS at the end {rng(trk, 0)} vs "
                   f"{rng(none, 0)} MB.\n")
    rows = []
    for tr in trk:
        tot_last = tr.daemon.last[0]
        tot_peak = tr.daemon.last[1]
        for k in tr.kinds:
            ws = tr.workers.get(k, [])
            st = C.tracker({"trackers": tr.status_trackers}, k)
            w = ws[-1] if ws else None
            kids = [c for c in tr.children.get(k, []) if c.last != (0, 0)]
            kid_s = ("; ".join(f"{c.comm} {mb(c.last[0])} / {mb(c.max_rss)} / "
                               f"{mb(c.last[1])}" for c in kids) or "-")
            if w:
                tot_last += w.last[0] + sum(c.last[0] for c in kids)
                tot_peak += w.last[1] + sum(c.last[1] for c in kids)
            chk = tr.check.get(k) if tr.check is not None else None
            rows.append([
                tr.round, LABEL[k], w.pid if w else "-",
                mb(tr.after_start.workers.get(k, (0, 0))[0]),
                mb(w.last[0]) if w else "-", mb(max(x.max_rss for x in ws)) if ws else "-",
                mb(w.last[1]) if w else "-", st.get("rss_mb"), kid_s,
                f"{tr.caught_up_s.get(k, float('nan')):.1f}",
                f"{tr.n / tr.caught_up_s[k]:,.0f}" if k in tr.caught_up_s else "-",
                st.get("restarts"), st.get("errors"), st.get("dead_lettered"),
                landed(chk, "not checked")])
            if len(ws) > 1:
                problems.append(f"round {tr.round} {k}: the worker's pid changed during the "
                                f"run: {[x.pid for x in ws]}")
            if st.get("restarts") or st.get("errors") or st.get("dead_lettered"):
                problems.append(f"round {tr.round} {k}: restarts {st.get('restarts')}, "
                                f"errors {st.get('errors')}, dead-lettered "
                                f"{st.get('dead_lettered')}, last_error "
                                f"{st.get('last_error')!r}")
            if chk is not None and not chk.ok:
                problems.append(f"round {tr.round} {k}: data did not land right: {chk}")
        tr.tot = (tot_last, tot_peak)
    if trk:
        rep.add(tbl(["round", "tracker", ("worker pid", "d"), "VmRSS after start MB",
                     "VmRSS at end MB", "largest VmRSS sampled MB", ("peak VmHWM MB", "*"),
                     "status rss_mb", "children: comm VmRSS / largest / peak MB",
                     "caught up s", "events/s", "restarts", "errors", "dead-lettered",
                     "landed"], rows, "each tracker's worker process (`python -m magnusd._worker`)",
                    "`status` rss_mb = the daemon's own reading at the end (it samples each "
                    "worker every second). Children = the worker's descendant processes "
                    "(W&B's `wandb-core`), VmRSS at the end / largest sampled / peak. Events/s "
                    "= N / (caught up − go)."))
        rep.add("\nAll processes together (daemon + workers + children; shared pages "
                   "counted in each), VmRSS at the end / sum of the peaks, MB: "
                   + ", ".join(f"round {tr.round} {mb(tr.tot[0])} / {mb(tr.tot[1])}"
                               for tr in trk)
                   + ". Every tracker `running` after "
                   + ", ".join(f"{tr.up_s:.1f}" for tr in trk)
                   + " s from the daemon's start; the daemon stopped (SIGTERM → exit) in "
                   + ", ".join(f"{tr.stop_s:.2f}" for tr in trk) + " s.\n")
    for r in results:
        problems += r.problems(f"round {r.round} {r.name}")
        if not r.client.get("flush_ok", False):
            problems.append(f"round {r.round} {r.name}: client flush() did not return "
                            "True")
    rep.ok = not problems


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="events sent")
    ap.add_argument("--cases", default="none,trackers", help="comma-separated subset")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the cases")
    ap.add_argument("--every", type=float, default=0.2, help="sampling period, s")
    ap.add_argument("--daemon-rev", default=None,
                    help="run the daemon (and its workers) from `git archive REV "
                         "daemon/magnusd` instead of the working tree")
    ap.add_argument("--no-verify", action="store_true", help="skip reading the points back")
    ap.add_argument("--quick", action="store_true", help="N = 5,000")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (daemon logs)")
    args = ap.parse_args()
    C.check_python()
    if args.quick:
        args.n = 5_000
    want = args.cases.split(",")
    pythonpath, src = daemon_source(args.daemon_rev)
    results: list[RssCase] = []
    try:
        for rnd in range(1, args.rounds + 1):
            for name in ("none", "trackers"):
                if name not in want:
                    continue
                kinds = () if name == "none" else KINDS
                print(f"round {rnd}, {name}: {args.n:,} events ...", file=sys.stderr)
                r = case(kinds, args.n, args.every, not args.no_verify, args.keep, pythonpath)
                r.round, r.name = rnd, name
                results.append(r)
    finally:
        if pythonpath:
            C.remove_tree(Path(pythonpath).parent, False)
    rep = new_report("rss", "magnusd memory: the daemon with the real trackers, and their workers")
    report(rep, args, results, src)
    for r in results:
        peak = r.daemon.last[1] / 1024
        rep.results.append(Result(
            name=f"daemon peak VmHWM, round {r.round}, "
            + (", ".join(LABEL[k] for k in r.kinds) or "no tracker"), unit="MB", median=peak,
            ok=peak <= TARGET_MB or not r.kinds))
    rep.data = results
    return finish(rep)


if __name__ == "__main__":
    sys.exit(main())
