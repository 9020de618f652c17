"""Bad input raises at the call site and records nothing of that call (in-process SDK)."""

from __future__ import annotations

import math

import pytest

import magnus
from magnus import _client


@pytest.fixture(autouse=True)
def _empty_buffer() -> None:
    del _client.buffer[:]


@pytest.mark.parametrize("kwargs", [
    {"x": object()}, {"x": b"bytes"}, {"x": {1: 2}}, {"x": [1, {2}]}, {"x": 2**64},
    {"x": -(2**63) - 1}, {"x": "\ud800"}, {"": 1}, {"k" * 251: 1}, {"x": {"a": object()}},
])
def test_bad_values_and_keys_raise(kwargs: dict[str, object]) -> None:
    before = len(_client.buffer)
    with pytest.raises((TypeError, ValueError)):
        magnus.track_this(**kwargs)
    assert len(_client.buffer) == before


@pytest.mark.parametrize("step", [-1, 1.5, "3", True, None])
def test_bad_steps_raise(step: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        magnus.track_this(x=1, step=step)  # type: ignore[arg-type]
    assert not _client.buffer


def test_one_bad_value_records_nothing_of_the_call() -> None:
    with pytest.raises(TypeError):
        magnus.track_this(good=1, bad=object())
    assert not [e for e in _client.buffer if type(e) is tuple]


def test_error_names_the_key() -> None:
    with pytest.raises(TypeError, match="'weights'"):
        magnus.track_this(weights=[1, object()])


def test_cyclic_and_too_deep_values_raise() -> None:
    a: list[object] = []
    a.append(a)
    with pytest.raises(ValueError):
        magnus.track_this(a=a)
    deep: list[object] = []
    cur = deep
    for _ in range(100):
        nxt: list[object] = []
        cur.append(nxt)
        cur = nxt
    with pytest.raises(ValueError):
        magnus.track_this(d=deep)


def test_too_large_value_raises() -> None:
    with pytest.raises(ValueError, match="larger"):
        magnus.track_this(blob="x" * (1 << 20))


def test_accepted_values_are_buffered_as_given() -> None:
    magnus.track_this(step=5, f=math.inf, n=None, i=3, s="é", t=(1, 2))
    rec = [e for e in _client.buffer if type(e) is tuple][-1]
    assert rec[0] == 5
    assert rec[2] == {"f": math.inf, "n": None, "i": 3, "s": "é", "t": [1, 2]}


def test_track_this_returns_none() -> None:
    assert magnus.track_this(x=1) is None
