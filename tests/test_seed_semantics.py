"""The seed's metric semantics in the run log (design §5), through the real daemon."""

from __future__ import annotations

from conftest import Daemon, wait_for


def test_values_steps_types_and_later_wins(daemon: Daemon) -> None:
    daemon.client("""
        import os
        from magnus import track_this, flush
        track_this(answer=42)
        track_this(answer=43, step=3)
        track_this(s="x", f=0.5, n=None, b=False, l=[1, "a", None], d={"k": {"z": [1.5]}})
        track_this(answer=44, step=3)
        track_this(big=2**63, neg=-(2**63))
        os.environ["MAGNUS_TRACK_answer_env"] = "42"
        os.environ["MAGNUS_TRACK_raw"] = "not json"
        assert flush(10) is True
    """, MAGNUS_RUN_ID="sem1", MAGNUS_STEP_NAME="train", MAGNUS_RUN_TAG="exp")
    want = {"answer": 42, "answer_3": 44, "s": "x", "f": 0.5, "n": None, "b": False,
            "l": [1, "a", None], "d": {"k": {"z": [1.5]}}, "big": 2**63, "neg": -(2**63),
            "answer_env": 42, "raw": "not json"}
    got = wait_for(lambda: (m := daemon.metrics("sem1", "train")) == want and m,
                   what="the step log")
    assert type(got["answer"]) is int and type(got["f"]) is float and type(got["b"]) is bool
    log = daemon.show("sem1")
    assert log is not None
    assert log["tag"] == "exp" and log["run_id"] == "sem1"
    assert log["steps"]["train"]["status"] == "SUCCESS"
    assert log["status"] == "SUCCESS"


def test_later_value_wins_across_processes_in_order(daemon: Daemon) -> None:
    for v in (1, 2, 3):
        daemon.client(f"from magnus import track_this, flush\ntrack_this(x={v}, step=7)\n"
                      "assert flush(10)", MAGNUS_RUN_ID="later", MAGNUS_STEP_NAME="s")
    assert daemon.metrics("later", "s") == {"x_7": 3}


def test_caller_mutating_a_value_after_tracking_does_not_change_it(daemon: Daemon) -> None:
    daemon.client("""
        from magnus import track_this, flush
        v = {"a": [1]}
        track_this(v=v)
        v["a"].append(2)
        assert flush(10)
    """, MAGNUS_RUN_ID="copy1", MAGNUS_STEP_NAME="s")
    assert daemon.metrics("copy1", "s") == {"v": {"a": [1]}}


def test_generated_run_id_is_shared_with_children(daemon: Daemon) -> None:
    r = daemon.client("""
        import os, subprocess, sys
        from magnus import track_this, flush
        track_this(parent=1)
        assert flush(10)
        rid = os.environ["MAGNUS_RUN_ID"]
        subprocess.run([sys.executable, "-c",
                        "from magnus import track_this, flush; track_this(child=1); flush(10)"],
                       check=True)
        print(rid)
    """)
    rid = r.stdout.strip()
    assert rid
    assert daemon.metrics(rid, "main") == {"parent": 1, "child": 1}


def test_step_context_and_decorator(daemon: Daemon) -> None:
    daemon.client("""
        import magnus
        @magnus.step("decorated")
        def work(x):
            magnus.track_this(x=x)
            return x * 2
        assert work(21) == 42
        with magnus.step("outer"):
            magnus.track_this(o=1)
            with magnus.step("inner"):
                magnus.track_this(i=1)
            magnus.track_this(o2=2)
        try:
            with magnus.step("boom"):
                raise ValueError("x")
        except ValueError:
            pass
        magnus.track_this(back=1)
        assert magnus.flush(10)
    """, MAGNUS_RUN_ID="steps1", MAGNUS_STEP_NAME="top")
    log = daemon.show("steps1")
    assert log is not None
    st = log["steps"]
    assert st["decorated"]["user_defined_metrics"] == {"x": 21}
    assert st["outer"]["user_defined_metrics"] == {"o": 1, "o2": 2}
    assert st["inner"]["user_defined_metrics"] == {"i": 1}
    assert st["top"]["user_defined_metrics"] == {"back": 1}
    assert st["boom"]["status"] == "FAIL" and st["outer"]["status"] == "SUCCESS"
    assert log["status"] == "FAIL"
    att = st["outer"]["attempts"]
    assert len(att) == 1 and att[0]["start_time"] <= att[0]["end_time"]


def test_uncaught_exception_marks_the_implicit_step_failed(daemon: Daemon) -> None:
    r = daemon.client("""
        from magnus import track_this
        track_this(a=1)
        raise SystemExit("crash")  # not an uncaught exception: exit code, step SUCCESS
    """, check=False, MAGNUS_RUN_ID="exit1", MAGNUS_STEP_NAME="s")
    assert r.returncode == 1
    r = daemon.client("""
        from magnus import track_this
        track_this(a=1)
        raise RuntimeError("boom")
    """, check=False, MAGNUS_RUN_ID="exc1", MAGNUS_STEP_NAME="s")
    assert "RuntimeError" in r.stderr
    log = daemon.show("exc1")
    assert log is not None
    assert log["steps"]["s"]["user_defined_metrics"] == {"a": 1}
    assert log["steps"]["s"]["status"] == "FAIL"


def test_columnar_and_row_batches_mean_the_same(daemon: Daemon) -> None:
    """One key per call goes columnar on the wire; mixed keys go as rows: same run log."""
    daemon.client("""
        from magnus import track_this, flush
        for i in range(1, 101):
            track_this(step=i, loss=i / 2)          # one key per call
        assert flush(10)
        for i in range(1, 101):
            track_this(step=i, loss=i / 2, acc=i)   # two keys per call
        track_this(step=7, loss="seven")            # a later value of another type wins
        assert flush(10)
    """, MAGNUS_RUN_ID="col1", MAGNUS_STEP_NAME="s")
    m = daemon.metrics("col1", "s") or {}
    assert {k: v for k, v in m.items() if k.startswith("loss_")} == {
        f"loss_{i}": ("seven" if i == 7 else i / 2) for i in range(1, 101)}
    assert len([k for k in m if k.startswith("acc_")]) == 100
