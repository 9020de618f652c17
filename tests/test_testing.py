"""`magnus.testing.capture`: what users' own tests see, folded with the run log's rules."""

from __future__ import annotations

import pytest

import magnus
from magnus.testing import capture


def test_capture_folds_steps_metrics_and_statuses_like_the_run_log(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAGNUS_RUN_ID", "cap1")
    monkeypatch.setenv("MAGNUS_TRACK_seed", "7")
    with capture() as tracked:
        with magnus.step("train"):
            for i in range(1, 4):
                magnus.track_this(step=i, loss=1 / i)
            magnus.track_this(lr=0.1)
            magnus.track_this(step=2, loss=0.4)  # a later value of a step wins
        # the step must end by the exception, so it raises inside the raises() block
        with pytest.raises(RuntimeError, match="boom"), magnus.step("eval"):  # noqa: PT012
            magnus.track_this(acc=0.9)
            raise RuntimeError("boom")
    run = tracked.run("cap1")  # (earlier tests of this process may have left events pending)
    assert run["run_id"] == "cap1" and run["status"] == "FAIL"
    train = run["steps"]["train"]
    assert train["status"] == "SUCCESS" and len(train["attempts"]) == 1
    assert tracked.metrics("train", "cap1") == {"loss_1": 1.0, "loss_2": 0.4, "loss_3": 1 / 3,
                                                "lr": 0.1, "seed": 7}
    assert run["steps"]["eval"]["status"] == "FAIL"
    assert [(e["key"], e["step"]) for e in tracked.events() if e["run_id"] == "cap1"] == [
        ("loss", 1), ("loss", 2), ("loss", 3), ("lr", 0), ("loss", 2), ("acc", 0)]


def test_capture_reaches_no_daemon_and_keeps_values_plain(monkeypatch: pytest.MonkeyPatch,
                                                          ) -> None:
    np = pytest.importorskip("numpy")
    monkeypatch.setenv("MAGNUS_RUN_ID", "cap2")
    with capture() as tracked:
        magnus.track_this(a=np.float32(0.5), b=np.arange(3), c={"k": [1, "x"]})
        with magnus.get_experiment_tracker_context() as ctx:
            assert ctx is None  # no tracker while captured
    assert tracked.metrics(run_id="cap2") == {"a": 0.5, "b": [0, 1, 2], "c": {"k": [1, "x"]}}
    assert tracked.run("cap2")["steps"]["main"]["status"] == "PROCESSING"  # the process runs on
    with pytest.raises(LookupError):
        tracked.run("nope")


def test_the_readme_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"```python\n(from magnus import step, track_this\n"
                      r"from magnus.testing import capture\n.*?)```", readme, re.S)
    assert block is not None
    monkeypatch.setenv("MAGNUS_RUN_ID", "readme-example")
    scope: dict[str, object] = {}
    exec(block.group(1), scope)  # the README's own example
    scope["test_training_logs_its_loss"]()  # type: ignore[operator]

