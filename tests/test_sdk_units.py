"""In-process unit tests of the SDK's pure parts: the encoder, the flusher's slicing, the
transports, and the protocol's one-place rules. The real-daemon tests cover the same code end
to end; these pin its seams."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from magnus import _encode, _flusher, _protocol, _steps
from magnus._encode import Encoder, Frame, Proc
from magnus._steps import Ctx, Mark, Steps
from magnus._transport import MemoryTransport, SocketTransport, SpoolTransport


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> Steps:
    monkeypatch.setenv("MAGNUS_RUN_ID", "unit-run")
    monkeypatch.setenv("MAGNUS_STEP_NAME", "train")
    monkeypatch.delenv("MAGNUS_RUN_TAG", raising=False)
    return Steps()


def encoder(steps: Steps, warnings: list[str] | None = None) -> Encoder:
    sink = warnings if warnings is not None else []
    return Encoder(steps, Proc(os.environ, os.getpid()), "cid", sink.append)


def decode(frames: list[Frame]) -> list[Any]:
    out = []
    for f in frames:
        assert int.from_bytes(f.data[:4], "big") == len(f.data) - 4
        out.append(_protocol.decoder.decode(f.data[4:]))
    return out


def flat(calls: list[tuple[int, float, dict[str, Any]]]) -> list[Any]:
    return [x for call in calls for x in call]


def test_single_key_calls_take_the_columnar_form_after_the_implicit_start(steps: Steps) -> None:
    calls = [(i, 100.0 + i, {"loss": i / 10}) for i in range(5)]
    frames = encoder(steps).encode(flat(calls), steps.marks_added)
    start, batch = decode(frames)
    assert type(start) is _protocol.StepMark and start.kind == "start"
    assert (start.run_id, start.step_name, start.pid) == ("unit-run", "train", os.getpid())
    assert start.attempt == steps.implicit[("unit-run", "train")] != ""
    assert type(batch) is _protocol.Batch and batch.keys == ["loss"] and batch.records == []
    assert batch.rows() == calls
    assert [f.seq for f in frames] == [1, 2] and [f.records for f in frames] == [1, 5]
    assert _protocol.tracker_points(batch) == 5 and _protocol.tracker_points(start) == 0


def test_mixed_keys_take_the_row_form(steps: Steps) -> None:
    calls: list[tuple[int, float, dict[str, Any]]] = [
        (0, 1.0, {"a": 1}), (1, 2.0, {"b": 2}), (2, 3.0, {"a": 3, "b": "x"})]
    _, batch = decode(encoder(steps).encode(flat(calls), 0))
    assert batch.keys == [] and [tuple(r) for r in batch.records] == calls
    assert _protocol.tracker_points(batch) == 4


def test_marks_split_the_records_and_set_the_identity_that_follows(steps: Steps) -> None:
    enc = encoder(steps)
    outer = steps.current()
    inner = Ctx(outer.run_id, outer.tag, "eval", True, steps.new_attempt())
    entries = [0, 1.0, {"x": 1}]
    steps.add_mark(Mark("start", inner, inner))
    steps.add_mark(Mark("end", inner, outer, "SUCCESS"))
    entries += _steps.buffer[-2:]
    del _steps.buffer[-2:]
    entries += [1, 2.0, {"x": 2}]
    msgs = decode(enc.encode(entries, steps.marks_added))
    kinds = [(type(m).__name__, m.step_name) for m in msgs]
    assert kinds == [("StepMark", "train"), ("Batch", "train"), ("StepMark", "eval"),
                     ("StepMark", "eval"), ("Batch", "train")]
    assert msgs[2].attempt == msgs[3].attempt == inner.attempt and msgs[3].status == "SUCCESS"
    assert [m.seq for m in msgs] == [1, 2, 3, 4, 5]
    assert enc.marks_seen == 2 and enc.head is outer


def test_a_forked_child_records_inside_its_parents_attempt(steps: Steps) -> None:
    steps.child = True
    msgs = decode(encoder(steps).encode([0, 1.0, {"x": 1}], 0))
    assert [type(m) for m in msgs] == [_protocol.Batch]
    assert steps.implicit == {("unit-run", "train"): ""}


def test_oversized_batches_are_halved_and_an_oversized_record_dropped(
        steps: Steps, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_encode, "MAX_FRAME", 400)
    steps.implicit[("unit-run", "train")] = "given"  # no start mark in the way
    warnings: list[str] = []
    calls = [(i, 1.0, {f"k{i}": "v" * 40}) for i in range(20)] + [(99, 1.0, {"big": "x" * 500})]
    enc = encoder(steps, warnings)
    msgs = decode(enc.encode(flat(calls), 0))
    assert len(msgs) > 1
    assert [tuple(r) for m in msgs for r in m.rows()] == calls[:-1]
    assert enc.dropped == 1 and "maximum frame size" in warnings[0]


def test_the_flusher_encodes_in_slices_and_keeps_every_record(steps: Steps) -> None:
    f = _flusher.Flusher(steps, print)
    try:
        del _steps.buffer[:]
        n = 3 * _encode.BATCH_RECORDS + 17
        for i in range(n):
            _steps.buffer.extend((i, float(i), {"loss": i}))
        f.encode_pending()
        assert not _steps.buffer
        msgs = decode(f.unacked)
        batches = [m for m in msgs if type(m) is _protocol.Batch]
        assert all(m.count() <= _encode.BATCH_RECORDS for m in batches)
        assert [s for m in batches for s in m.steps] == list(range(n))
        assert f.unacked_records == n + 1  # and the implicit start

        f.override = memory = MemoryTransport()
        f._cycle()
        assert f.done_seq == msgs[-1].seq and not f.unacked and f.unacked_records == 0
        assert len(memory.frames) == len(msgs)
    finally:
        f.close_fds()


def test_the_spool_writes_the_frames_and_is_durable_at_once(tmp_path: Path) -> None:
    frames = [Frame(7, _protocol.frame(_protocol.Sync(7)), 0),
              Frame(8, _protocol.frame(_protocol.Sync(8)), 0)]
    spool = SpoolTransport(str(tmp_path / "spool"), "abc")
    assert spool.send(frames, True) == 8
    (path,) = (tmp_path / "spool").iterdir()
    assert path.name == "abc-7.spool" and oct(path.stat().st_mode & 0o777) == "0o600"
    payloads, used, error = _protocol.split_frames(path.read_bytes())
    assert error is None and used == path.stat().st_size
    syncs = [_protocol.decoder.decode(p) for p in payloads]
    assert [m.seq for m in syncs if type(m) is _protocol.Sync] == [7, 8]


def test_an_unreachable_socket_backs_off(tmp_path: Path) -> None:
    warnings: list[str] = []
    sock = SocketTransport(str(tmp_path / "nobody.sock"), "abc", warnings.append)
    frames = [Frame(1, _protocol.frame(_protocol.Sync(1)), 0)]
    assert sock.send(frames, urgent=False) is None
    first = sock.backoff
    assert sock.send(frames, urgent=False) is None  # within the backoff: not even tried
    assert sock.backoff == first and sock.fileno() == -1
    assert sock.send(frames, urgent=True) is None  # urgent tries again
    assert sock.backoff == 2 * first and sock.last_error


def test_records_reads_the_calls_among_marks(steps: Steps) -> None:
    ctx = steps.current()
    entries = [1, 2.0, {"a": 1}, Mark("claim", ctx, ctx), 3, 4.0, {"b": 2}]
    assert _steps.records(entries) == [(1, 2.0, {"a": 1}), (3, 4.0, {"b": 2})]


def test_environment_metrics_and_marks_are_not_for_trackers(steps: Steps) -> None:
    ctx = steps.current()
    steps.add_mark(Mark("env", ctx, ctx, metrics={"lr": 0.1, "opt": "adam"}))
    entries = _steps.buffer[-1:]
    del _steps.buffer[-1:]
    start, env = decode(encoder(steps).encode(entries, steps.marks_added))
    assert type(env) is _protocol.Batch and env.track is False and env.count() == 2
    assert not _protocol.for_trackers(env) and _protocol.tracker_points(env) == 0
    assert not _protocol.for_trackers(start)
    head = _protocol.steps_decoder.decode(_protocol.encoder.encode(env))
    assert type(head) is _protocol.BatchSteps and _protocol.tracker_points(head) == 0
