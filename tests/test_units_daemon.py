"""In-process tests of daemon parts with typed results: what an ingress read comes to (`Taken`),
the op kinds of the fan-out, journal recovery, the run-store checkpoint, the command line's
parser, crash isolation's bookkeeping and a worker's bisection of refused events."""

from __future__ import annotations

from pathlib import Path

import pytest

from magnus import _protocol as proto
from magnusd._ingress import Dedup, Ingress, Taken
from magnusd._journal import Journal

HELLO = proto.Hello(proto.PROTOCOL_VERSION, "t")


def batch(seq: int, n: int = 1, client: str = "c") -> bytes:
    return proto.encoder.encode(proto.Batch(client, seq, "r", "", "s", [], True, ["x"],
                                            list(range(1, n + 1)), [1.0] * n,
                                            [float(i) for i in range(1, n + 1)]))


def ingress(tmp_path: Path) -> tuple[Ingress, Journal]:
    j = Journal(str(tmp_path / "j"))
    j.open()
    return Ingress(j, Dedup(), set(), dict, None), j  # type: ignore[arg-type]


def test_a_read_that_greets_reports_its_hello_syncs_and_events(tmp_path: Path) -> None:
    ing, j = ingress(tmp_path)
    sync = proto.Sync(7)
    taken = ing.take([proto.encoder.encode(HELLO), batch(1, 3), proto.encoder.encode(sync)],
                     None)
    assert taken == Taken(3, [sync], [HELLO], HELLO, None)
    assert j.last_seq == 1
    j.close()


def test_a_read_before_the_hello_is_refused_and_journals_nothing(tmp_path: Path) -> None:
    ing, j = ingress(tmp_path)
    taken = ing.take([batch(1)], None)
    assert (taken.events, taken.hello, taken.error) == (0, None, "the first message must be hello")
    assert j.last_seq == 0
    j.close()


def test_frames_without_a_handshake_are_journaled_once_and_a_hello_among_them_is_an_error(
        tmp_path: Path) -> None:
    ing, j = ingress(tmp_path)
    taken = ing.take_without_hello([batch(1, 2), batch(1, 2), batch(2, 1)])
    assert (taken.events, taken.error, j.last_seq) == (3, None, 2)
    taken = ing.take_without_hello([batch(3), proto.encoder.encode(HELLO), batch(4)])
    assert (taken.events, taken.error, j.last_seq) == (1, "hello sent twice", 3)
    j.close()


def test_op_kinds_are_their_strings_on_any_wire() -> None:
    import msgspec

    from magnusd._fanout import OpKind, to_ops, to_record_ops
    from magnusd._reader import Record

    mark = proto.StepMark("c", 2, "r", "", "s", "end", 1.0, "FAIL", "a1", "h", 7)
    records = [Record(1, 1, batch(1)), Record(2, 1, proto.encoder.encode(mark))]
    assert [o.kind for o in to_ops(records)] == [OpKind.EVENTS, OpKind.STEP_END]
    assert [o.kind for o in to_record_ops(records)] == [OpKind.RECORDS]
    assert [o.kind for o in to_ops(records)] == ["events", "step_end"]
    assert msgspec.json.encode(list(OpKind)) == b'["events","step_end","records"]'
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(OpKind.STEP_END)) == "step_end"
    assert msgspec.json.decode(b'"records"', type=OpKind) is OpKind.RECORDS


def test_recovery_cuts_damage_keeps_evidence_and_writes_back_intact_records(
        tmp_path: Path) -> None:
    import os

    from magnusd import _records as records
    from magnusd._reader import Position, Reader, segment_path
    from magnusd._recovery import recover

    good = b"".join(records.encode(s, b"p%d" % s, s) for s in (1, 2, 3))
    after = b"".join(records.encode(s, b"p%d" % s, s) for s in (5, 6))
    Path(segment_path(str(tmp_path), 1)).write_bytes(good + b"\xff" * 40 + after)
    r = recover(str(tmp_path), (1,))
    os.close(r.fd)
    assert (r.last_seq, r.events, r.salvaged_records) == (6, 6, 2)
    assert r.truncated_bytes == 40 + len(after)
    assert r.end == Position(1, len(good) + len(after)) and r.size == r.end.offset
    assert r.damaged_copy is not None and Path(r.damaged_copy).read_bytes().startswith(good)
    assert [s for s, _, _ in Reader(str(tmp_path), 1).read()] == [1, 2, 3, 5, 6]


def test_recovery_of_an_empty_last_segment_continues_the_previous_ones_numbering(
        tmp_path: Path) -> None:
    import os

    from magnusd import _records as records
    from magnusd._reader import segment_path
    from magnusd._recovery import recover

    Path(segment_path(str(tmp_path), 1)).write_bytes(records.encode(1, b"a", 4)
                                                     + records.encode(2, b"b", 9))
    Path(segment_path(str(tmp_path), 3)).write_bytes(b"")
    r = recover(str(tmp_path), (1, 3))
    os.close(r.fd)
    assert (r.last_seq, r.events, r.truncated_bytes, r.damaged_copy) == (2, 9, 0, None)


def test_the_checkpoint_reads_back_and_an_unreadable_one_counts_as_none(tmp_path: Path) -> None:
    from magnusd._checkpoint import (
        CHECKPOINT,
        Checkpoint,
        load_checkpoint,
        read_checkpoint,
        write_checkpoint,
    )

    assert load_checkpoint(str(tmp_path)) == Checkpoint(0)
    write_checkpoint(str(tmp_path), 42, [{"attempt": "a"}])
    assert load_checkpoint(str(tmp_path)) == Checkpoint(42, [{"attempt": "a"}])
    assert read_checkpoint(str(tmp_path)) == 42
    (tmp_path / CHECKPOINT).write_text('{"applied_seq": "x"}')
    assert load_checkpoint(str(tmp_path), move_bad=True) == Checkpoint(0)
    assert (tmp_path / (CHECKPOINT + ".bad")).exists() and not (tmp_path / CHECKPOINT).exists()


def test_every_command_the_parser_knows_has_an_implementation() -> None:
    import argparse

    from magnusd._cli import COMMANDS, parser

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS)
    args = parser().parse_args(["show", "r1", "--plot", "loss", "--step-name", "train"])
    assert (args.run_id, args.plot, args.step_name) == ("r1", "loss", "train")


def test_status_without_a_daemon_exits_3_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from magnusd._cli import EXIT_NOT_RUNNING, main

    assert main(["status", "--socket", str(tmp_path / "none.sock")]) == EXIT_NOT_RUNNING
    err = capsys.readouterr().err
    assert err.startswith("magnusd: magnusd is not running") and err.count("\n") == 1


def test_deaths_on_one_op_isolate_it_and_a_death_on_one_of_its_events_dead_letters_that(
        tmp_path: Path) -> None:
    import json

    from magnusd import _workerwire as wire
    from magnusd._isolation import ISOLATE_AFTER, Isolation

    dead = tmp_path / "t.dead.jsonl"
    iso = Isolation("t", str(dead))
    op = wire.Begin(7, 100)
    assert not any(iso.died(op, "killed") for _ in range(ISOLATE_AFTER - 1))
    assert iso.isolate == 0
    assert not iso.died(op, "killed")
    assert iso.isolate == 7
    event = json.dumps({"seq": 8, "index": 3, "key": "x"})
    assert iso.died(wire.Begin(7, 1, 3, 8, event), "worker was killed by SIGSEGV")
    assert iso.skip == [(8, 3)]
    line = json.loads(dead.read_text())
    assert (line["key"], line["error"]) == ("x", "worker was killed by SIGSEGV")
    iso.delivered(6)  # not yet past the isolated op
    assert (iso.isolate, iso.skip) == (7, [(8, 3)])
    iso.delivered(9)
    assert (iso.isolate, iso.skip) == (0, [])


def test_delivery_halves_a_refused_batch_until_the_refused_event_is_alone(
        tmp_path: Path) -> None:
    import json

    from magnusd import _workerwire as wire
    from magnusd._delivery import Delivered, Delivery
    from magnusd._fanout import Op, OpKind
    from magnusd._tracker import BaseExperimentTracker, Event, PermanentError

    class Refuses(BaseExperimentTracker):
        def __init__(self) -> None:
            self.got: list[int] = []

        def log_batch(self, events: list[Event]) -> None:
            if any(e.value == 13 for e in events):
                raise PermanentError("13 is refused")
            self.got += [e.value for e in events]

    sent: list[object] = []
    tracker = Refuses()
    dead = tmp_path / "t.dead.jsonl"
    d = Delivery(tracker, sent.append, lambda _s: False, str(dead))
    events = [Event("r", "", "s", "x", v, v, 1.0) for v in range(10, 18)]
    op = Op(OpKind.EVENTS, events, seq=5, mark=8, first=5, origin=[(5, i) for i in range(8)])
    assert d.deliver(op, False, {(5, 0)}) == Delivered(6, 1)  # (5, 0): dead-lettered before
    assert sorted(tracker.got) == [11, 12, 14, 15, 16, 17]
    assert [json.loads(x)["value"] for x in dead.read_text().splitlines()] == [13]
    assert all(isinstance(m, wire.Begin) and m.first_seq == 5 for m in sent)
