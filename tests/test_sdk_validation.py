"""Bad input raises at the call site and records nothing of that call (in-process SDK)."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest

import magnus
from magnus import _steps


@pytest.fixture(autouse=True)
def _empty_buffer() -> None:
    del _steps.buffer[:]


@pytest.mark.parametrize("kwargs", [
    {"x": object()}, {"x": b"bytes"}, {"x": {1: 2}}, {"x": [1, {2}]}, {"x": 2**64},
    {"x": -(2**63) - 1}, {"x": "\ud800"}, {"": 1}, {"k" * 251: 1}, {"x": {"a": object()}},
])
def test_bad_values_and_keys_raise(kwargs: dict[str, Any]) -> None:
    before = len(_steps.buffer)
    with pytest.raises((TypeError, ValueError)):
        magnus.track_this(**kwargs)
    assert len(_steps.buffer) == before


@pytest.mark.parametrize("step", [-1, 1.5, "3", True, None])
def test_bad_steps_raise(step: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        magnus.track_this(x=1, step=step)  # type: ignore[arg-type]
    assert not _steps.buffer


def test_one_bad_value_records_nothing_of_the_call() -> None:
    with pytest.raises(TypeError):
        magnus.track_this(good=1, bad=object())
    assert not _steps.records(_steps.buffer)


def test_error_names_the_key() -> None:
    with pytest.raises(TypeError, match="'weights'"):
        magnus.track_this(weights=[1, object()])


def test_cyclic_and_too_deep_values_raise() -> None:
    a: list[object] = []
    a.append(a)
    with pytest.raises(ValueError, match="nested deeper"):
        magnus.track_this(a=a)
    deep: list[object] = []
    cur = deep
    for _ in range(100):
        nxt: list[object] = []
        cur.append(nxt)
        cur = nxt
    with pytest.raises(ValueError, match="nested deeper"):
        magnus.track_this(d=deep)


def test_too_large_value_raises() -> None:
    with pytest.raises(ValueError, match="larger"):
        magnus.track_this(blob="x" * (1 << 20))


def test_accepted_values_are_buffered_as_given() -> None:
    magnus.track_this(step=5, f=math.inf, n=None, i=3, s="é", t=(1, 2))
    rec = _steps.records(_steps.buffer)[-1]
    assert rec[0] == 5
    assert rec[2] == {"f": math.inf, "n": None, "i": 3, "s": "é", "t": [1, 2]}


def test_track_this_returns_none() -> None:
    # what the annotation says, checked at run time
    assert magnus.track_this(x=1) is None  # type: ignore[func-returns-value]


# -- values from ML libraries (design §4) ----------------------------------------------------

np = pytest.importorskip("numpy")


def recorded() -> dict[str, object]:
    (entry,) = _steps.records(_steps.buffer)
    return entry[2]


def test_numpy_scalars_become_the_plain_type() -> None:
    magnus.track_this(f64=np.float64(0.5), f32=np.float32(0.25), i64=np.int64(7),
                      u8=np.uint8(3), b=np.bool_(False), s=np.str_("x"))
    got = recorded()
    assert got == {"f64": 0.5, "f32": 0.25, "i64": 7, "u8": 3, "b": False, "s": "x"}
    assert [type(v) for v in got.values()] == [float, float, int, int, bool, str]


def test_arrays_become_nested_lists_that_later_changes_do_not_touch() -> None:
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    magnus.track_this(a=a, nested={"w": [np.float32(1.5)]}, zero_d=np.array(4.5))
    a[0, 0] = 99
    assert recorded() == {"a": [[0, 1, 2], [3, 4, 5]], "nested": {"w": [1.5]}, "zero_d": 4.5}


def test_subclasses_of_plain_types_are_recorded_as_the_plain_type() -> None:
    import enum

    class Level(enum.IntEnum):
        HIGH = 3

    class Name(str):
        pass

    class Ratio(float):
        pass

    magnus.track_this(level=Level.HIGH, name=Name("adam"), ratio=Ratio(0.5))
    got = recorded()
    assert got == {"level": 3, "name": "adam", "ratio": 0.5}
    assert [type(v) for v in got.values()] == [int, str, float]


def test_torch_tensors_become_numbers_and_lists() -> None:
    torch = pytest.importorskip("torch")
    magnus.track_this(loss=torch.tensor(0.25), w=torch.ones(2, requires_grad=True),
                      flag=torch.tensor(True), n=torch.tensor(3))
    assert recorded() == {"loss": 0.25, "w": [1.0, 1.0], "flag": True, "n": 3}


@pytest.mark.parametrize("make", [lambda: np.zeros(100_000), lambda: np.complex64(1j),
                                  lambda: np.datetime64("2020-01-01"),
                                  lambda: np.array([object()], dtype=object)],
                         ids=["too-large", "complex", "datetime", "object-array"])
def test_ml_values_that_are_not_json_friendly_raise(make: object) -> None:
    with pytest.raises((TypeError, ValueError), match="metric 'v'"):
        magnus.track_this(v=make())  # type: ignore[operator]
    assert not _steps.buffer


def test_plain_values_never_import_numpy_or_torch() -> None:
    code = ("import sys, magnus\nmagnus.track_this(a=1.0, b=2, c='x', d=[1, {'e': None}])\n"
            "assert 'numpy' not in sys.modules and 'torch' not in sys.modules, 'imported'\n")
    r = subprocess.run([sys.executable, "-c", code],
                                     capture_output=True, text=True,
                                     env={"MAGNUS_SOCKET": "/nonexistent/s", "PATH": ""})
    assert r.returncode == 0, r.stderr


def test_values_reach_the_run_log_as_the_plain_values_they_became() -> None:
    from magnus.testing import capture

    with capture() as tracked:  # also gets what earlier tests left undelivered: own keys here
        magnus.track_this(step=5, rl_f=math.inf, rl_n=None, rl_i=3, rl_s="é", rl_t=(1, 2),
                          rl_a=np.arange(3, dtype=np.int64), rl_x=np.float32(0.5))
    events = [e for e in tracked.events() if e["key"].startswith("rl_")]
    assert {e["key"]: e["value"] for e in events} == {
        "rl_f": math.inf, "rl_n": None, "rl_i": 3, "rl_s": "é", "rl_t": [1, 2],
        "rl_a": [0, 1, 2], "rl_x": 0.5}
    assert {e["step"] for e in events} == {5}
    (step_name,) = {e["step_name"] for e in events}
    assert tracked.metrics(step_name)["rl_x_5"] == 0.5
