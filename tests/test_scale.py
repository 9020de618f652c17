"""Scale: one run with 1,000,000 steps of `loss` (design §7 "mind the scale").

The daemon's memory must not grow with the run's history, a restart must not replay it, and
`magnusd show` must still assemble the whole run log.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from conftest import Daemon, wait_for

N = 1_000_000
STEP0 = {f"p{i}": i for i in range(10)}
RSS_LIMIT_MB = 100
RESTART_LIMIT_S = 5.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.samples.append(rss_mb(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            self.stop_event.wait(self.every)

    def stop(self) -> float:
        self.stop_event.set()
        self.join(5)
        self.samples.append(rss_mb(self.pid))
        return max(self.samples)


CLIENT = f"""
import time
from magnus import track_this, flush
t0 = time.perf_counter()
track_this(**{STEP0!r})
for i in range(1, {N} + 1):
    track_this(loss=float(i), step=i)
t1 = time.perf_counter()
ok = flush(timeout=120)
t2 = time.perf_counter()
print("FLUSHED", ok, round(t1 - t0, 3), round(t2 - t1, 3))
"""


def caught_up(d: Daemon) -> bool:
    st = d.status()
    return bool(st["runlog"]["applied_seq"] >= st["journal"]["last_seq"] > 0)


@pytest.mark.slow
def test_million_steps_bounded_memory_fast_restart_full_show(daemon: Daemon) -> None:
    assert daemon.proc is not None
    base_rss = rss_mb(daemon.proc.pid)
    sampler = RssSampler(daemon.proc.pid)
    sampler.start()

    t0 = time.monotonic()
    r = daemon.client(CLIENT, MAGNUS_RUN_ID="big", timeout=240)
    load_s = time.monotonic() - t0
    assert "FLUSHED True" in r.stdout, f"flush() did not return True:\n{r.stdout}\n{r.stderr}"
    wait_for(lambda: caught_up(daemon), timeout=60, every=0.2,
             what="the run store to catch up with the journal")
    caught_s = time.monotonic() - t0
    time.sleep(0.5)  # a few samples at rest, after the load
    max_rss = sampler.stop()
    st = daemon.status()
    print(f"\n[scale] client: {r.stdout.strip()} (track s, flush s); load+flush {load_s:.2f} s, "
          f"run store caught up at {caught_s:.2f} s; events_total {st['events_total']}, "
          f"journal {st['journal']['bytes'] / 1e6:.1f} MB in {st['journal']['segments']} "
          f"segment(s)")
    print(f"[scale] daemon RSS: start {base_rss:.1f} MB, max {max_rss:.1f} MB over "
          f"{len(sampler.samples)} samples")
    # events_total counts records (one per track_this call), plus the SDK's env-metric records.
    assert st["events_total"] >= N + 1
    assert max_rss < RSS_LIMIT_MB, f"daemon RSS reached {max_rss:.1f} MB"

    # Restart: SIGTERM, then the next daemon must answer status quickly (no full replay).
    t0 = time.monotonic()
    assert daemon.stop() == 0, daemon.log_text()
    stop_s = time.monotonic() - t0
    t0 = time.monotonic()
    daemon.start(wait=False)
    wait_for(daemon.alive, timeout=30, every=0.02, what="the restarted daemon to answer status")
    restart_s = time.monotonic() - t0
    print(f"[scale] graceful stop {stop_s:.2f} s; restart → status answered in {restart_s:.2f} s")
    assert restart_s < RESTART_LIMIT_S, f"restart took {restart_s:.2f} s"
    assert daemon.status()["runlog"]["applied_seq"] >= st["journal"]["last_seq"]

    # The whole run log.
    t0 = time.monotonic()
    out = daemon.cli("show", "big", "--json", timeout=120).stdout
    show_s = time.monotonic() - t0
    t0 = time.monotonic()
    log = json.loads(out)
    parse_s = time.monotonic() - t0
    print(f"[scale] `magnusd show big --json`: {show_s:.2f} s, {len(out) / 1e6:.1f} MB "
          f"(json.loads in the test {parse_s:.2f} s)")
    assert list(log["steps"]) == ["main"]
    m = log["steps"]["main"]["user_defined_metrics"]
    assert len(m) == N + len(STEP0), len(m)
    for k, v in STEP0.items():
        assert m[k] == v
    for i in (1, 2, 3, 999, 1000, 4096, 8191, 8192, 8193, 123_457, 500_000, 999_999, N):
        assert m[f"loss_{i}"] == float(i), (i, m.get(f"loss_{i}"))
    assert all(f"loss_{i}" in m for i in range(1, N + 1))
    assert sum(1 for k in m if k.startswith("loss_")) == N
    assert all(m[f"loss_{i}"] == float(i) for i in range(1, N + 1, 997))
