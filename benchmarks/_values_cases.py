"""The cases of benchmarks/track_values.py: one client process per value kind and SDK, its
per-call times, and every value checked in the run log (typed: `ValuesCase`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import msgspec

import _baseline as B
import _common as C
from _results import Stats
from _values_client import expected, plain_ok

CLIENT = str(C.HERE / "_values_client.py")
REPO = C.REPO


class Verified(msgspec.Struct, kw_only=True):
    """What the run log holds of one client's values."""

    found: int
    expected: int
    missing: list[str]
    bad_values: list[str]
    sample: str
    show_s: float
    status: str | None
    attempts: int


class ValuesCase(msgspec.Struct, kw_only=True):
    """One client process: a value kind through one SDK, its per-call times, what landed."""

    kind: str
    sdk: str
    round: int
    n: int
    load: float
    calls: Stats
    timer: Stats
    loop_s: float
    flush_ok: bool
    dropped: int | None = None
    main_cpu_s: float | None = None
    flusher_cpu_s: float | None = None
    magnus_file: str = ""
    value_type: str = ""
    last_error: str | None = None
    stderr: list[str] = []
    events: int = 0
    verify: Verified
    spool_files: int = 0
    ok: bool = False


def verify_run(d: C.Daemon, run_id: str, kind: str, n: int) -> Verified:
    t0 = time.monotonic()
    run = d.run_log(run_id)
    show_s = time.monotonic() - t0
    m = run.get("steps", {}).get("main", {}).get("user_defined_metrics", {})
    found, missing = C.metric_keys_ok(run, "main", "loss", range(n + 1))
    bad = [f"{k}={m[k]!r}" for k, want in (("loss" if i == 0 else f"loss_{i}", expected(kind, i))
                                            for i in range(n + 1))
           if k in m and not plain_ok(kind, m[k], want)][:5]
    sample = {k: m[k] for k in ("loss_1", f"loss_{n}") if k in m}
    return Verified(found=found, expected=n + 1, missing=missing, bad_values=bad,
                    sample=json.dumps(sample, separators=(",", ":")), show_s=show_s,
                    status=run.get("status"),
                    attempts=len(run.get("steps", {}).get("main", {}).get("attempts", [])))


def run_case(d: C.Daemon, cspool: str, kind: str, sdk: str, n: int, rnd: int,
             sdk_dirs: dict[str, Path | None]) -> ValuesCase:
    run_id = f"bench-{kind}-{sdk}-{rnd}-{os.urandom(3).hex()}"
    env, where = B.sdk_env(d.client_env(MAGNUS_SPOOL_DIR=cspool, MAGNUS_RUN_ID=run_id),
                           sdk_dirs[sdk])
    before = d.status()["events_total"]
    load = os.getloadavg()[0]
    print(f"round {rnd}: {kind} / {sdk}: {n:,} calls ...", file=sys.stderr)
    res = C.client_json([C.PY, CLIENT, kind, str(n), str(where)], env, timeout=900)
    _, st = d.wait_applied(before + n + 1)
    v = verify_run(d, run_id, kind, n)
    spool = len(list(Path(cspool).glob("*"))) if os.path.isdir(cspool) else 0
    r = ValuesCase(
        kind=kind, sdk=sdk, round=rnd, n=n, load=load, calls=Stats.of(res["calls"]),
        timer=Stats.of(res["timer"]), loop_s=res["loop_s"], flush_ok=res["flush_ok"],
        dropped=res.get("dropped"), main_cpu_s=res.get("main_cpu_s"),
        flusher_cpu_s=res.get("flusher_cpu_s"), magnus_file=res.get("magnus_file", ""),
        value_type=res.get("value_type", ""), last_error=res.get("last_error"),
        stderr=[ln for ln in res["stderr"].splitlines() if not ln.startswith("magnus imported")],
        events=st["events_total"] - before, verify=v, spool_files=spool)
    r.ok = (v.found == v.expected and not v.bad_values and r.flush_ok and not r.dropped
            and spool == 0 and v.status == "SUCCESS")
    print(f"  median {r.calls.p50 / 1e3:.3f} µs, p99 {r.calls.p99 / 1e3:.3f} µs, "
          f"p99.9 {r.calls.p999 / 1e3:.3f} µs; "
          f"run log {v.found:,}/{v.expected:,} {'OK' if r.ok else 'FAIL'}", file=sys.stderr)
    return r
