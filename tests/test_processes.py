"""Many processes, one run: multiprocessing, os.fork, threads — every event arrives."""

from __future__ import annotations

from conftest import Daemon


def test_pool_fork_child_and_threads_write_one_run(daemon: Daemon) -> None:
    daemon.client("""
        import multiprocessing as mp, os, threading
        from magnus import track_this, flush

        def work(w):
            for i in range(1, 2001):
                track_this(step=i, **{f"w{w}": i})
            return w

        if __name__ == "__main__":
            track_this(parent=1)
            with mp.get_context("fork").Pool(4) as pool:
                assert sorted(pool.map(work, range(4))) == [0, 1, 2, 3]
                pool.close()
                pool.join()
            pid = os.fork()
            if pid == 0:
                for i in range(1, 1001):
                    track_this(step=i, forked=i)
                os._exit(0 if flush(20) else 1)
            assert os.waitpid(pid, 0)[1] == 0
            ts = [threading.Thread(target=lambda t=t: [track_this(step=i, **{f"t{t}": i})
                                                       for i in range(1, 1001)])
                  for t in range(4)]
            for t in ts: t.start()
            for t in ts: t.join()
            assert flush(20)
    """, MAGNUS_RUN_ID="mp1", MAGNUS_STEP_NAME="s")
    m = daemon.metrics("mp1", "s")
    assert m is not None
    want = {"parent": 1}
    want.update({f"w{w}_{i}": i for w in range(4) for i in range(1, 2001)})
    want.update({f"forked_{i}": i for i in range(1, 1001)})
    want.update({f"t{t}_{i}": i for t in range(4) for i in range(1, 1001)})
    missing = set(want) - set(m)
    assert not missing, f"{len(missing)} missing, e.g. {sorted(missing)[:5]}"
    assert m == want


def test_pool_workers_flush_at_exit_without_explicit_flush(daemon: Daemon) -> None:
    # Pool workers leave through os._exit: the SDK flushes from multiprocessing's finalizers.
    daemon.client("""
        import multiprocessing as mp
        from magnus import track_this

        def work(w):
            for i in range(1, 501):
                track_this(step=i, **{f"w{w}": i})

        if __name__ == "__main__":
            pool = mp.get_context("fork").Pool(4)
            pool.map(work, range(8))
            pool.close()
            pool.join()
    """, MAGNUS_RUN_ID="mp2", MAGNUS_STEP_NAME="s")
    m = daemon.metrics("mp2", "s") or {}
    missing = {f"w{w}_{i}" for w in range(8) for i in range(1, 501)} - set(m)
    assert not missing, f"{len(missing)} missing"


def test_fork_while_the_flusher_is_sending_never_hangs_or_loses(daemon: Daemon) -> None:
    # Fork 60 times in the middle of a heavy stream: a lock held across fork would hang or fail
    # a child's flush() now and then.
    daemon.client("""
        import os, sys
        from magnus import track_this, flush
        N = 60
        for k in range(N):
            for i in range(1, 3001):
                track_this(step=k * 3000 + i, p=i)
            pid = os.fork()
            if pid == 0:
                track_this(step=k + 1, c=k)
                os._exit(0 if flush(15) else 3)
            _, status = os.waitpid(pid, 0)
            if status != 0:
                print("child", k, "status", status, file=sys.stderr)
                sys.exit(1)
        assert flush(30)
    """, timeout=240, MAGNUS_RUN_ID="fk1", MAGNUS_STEP_NAME="s")
    m = daemon.metrics("fk1", "s") or {}
    assert {f"c_{k + 1}" for k in range(60)} <= set(m)
    assert len([k for k in m if k.startswith("p_")]) == 60 * 3000
