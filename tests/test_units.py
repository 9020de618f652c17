"""In-process tests of the pure parts, beside the real-daemon tests: the wire's event count, the
fan-out's ops, the ingress's duplicate check and journal write, the run store's files and the
series, and the run-log fold."""

from __future__ import annotations

import math
from array import array
from pathlib import Path
from typing import Literal

import msgspec

from magnus import _protocol as proto
from magnus._fold import RunFold
from magnusd import _series
from magnusd._fanout import OP_EVENTS, to_ops, to_record_ops
from magnusd._ingress import Dedup, Ingress
from magnusd._journal import Journal, Reader
from magnusd._reader import Record
from magnusd._runstore import RunStore

HELLO = proto.Hello(proto.PROTOCOL_VERSION, "t")


def batch(seq: int, *, run: str = "r", step: str = "s", rows: list[proto.Record] | None = None,
          key: str | None = None, n: int = 0, rank: int | None = None) -> proto.Batch:
    if key is not None:
        return proto.Batch("c", seq, run, "", step, [], True, [key], list(range(1, n + 1)),
                           [1.0] * n, [float(i) for i in range(1, n + 1)], rank)
    return proto.Batch("c", seq, run, "", step, rows or [], rank=rank)


def mark(seq: int, kind: Literal["start", "end"], status: str = "",
         attempt: str = "a1") -> proto.StepMark:
    return proto.StepMark("c", seq, "r", "", "s", kind, 1.0, status, attempt, "h", 7)


def journaled(*msgs: msgspec.Struct) -> list[Record]:
    out, total = [], 0
    for i, m in enumerate(msgs, 1):
        total += m.count() if isinstance(m, proto.Batch) and m.track else 0
        out.append(Record(i, total, proto.encoder.encode(m)))
    return out


def test_a_batch_counts_metric_points_in_either_form() -> None:
    assert batch(1, rows=[(1, 1.0, {"a": 1, "b": 2}), (2, 1.0, {"a": 3})]).count() == 3
    assert batch(1, key="loss", n=7).count() == 7


def test_ops_merge_events_cut_at_step_ends_and_carry_ranks() -> None:
    ops = to_ops(journaled(mark(1, "start"), batch(2, key="x", n=3),
                           batch(3, rows=[(1, 1.0, {"y": 1})], rank=2), mark(4, "end", "FAIL")))
    # the start mark alone is an empty op that carries the cursor past it
    assert [(o.kind, len(o.events), o.seq) for o in ops] == [
        ("events", 0, 1), ("events", 4, 3), ("step_end", 0, 4)]
    events = ops[1].events
    assert [(e.key, e.step, e.rank, e.name) for e in events] == [
        ("x", 1, None, "x"), ("x", 2, None, "x"), ("x", 3, None, "x"), ("y", 1, 2, "rank2/y")]
    assert ops[1].origin == [(2, 0), (2, 1), (2, 2), (3, 0)]
    assert ops[2].status == "FAIL"


def test_a_record_larger_than_an_op_completes_only_with_its_last_piece() -> None:
    ops = to_ops(journaled(batch(1, key="x", n=OP_EVENTS * 2 + 1)))
    assert [len(o.events) for o in ops] == [OP_EVENTS, OP_EVENTS, 1]
    assert [o.seq for o in ops] == [0, 0, 1]  # the cursor moves only past whole records


def test_record_ops_keep_the_journal_order() -> None:
    ops = to_record_ops(journaled(batch(1, key="x", n=2), mark(2, "start")))
    assert [[s for s, _ in o.records] for o in ops] == [[1, 2]] and ops[0].mark == 2


def test_ingress_journals_each_client_seq_once_and_stops_at_a_bad_frame(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j"))
    j.open()
    ing = Ingress(j, Dedup(), set(), dict, None)  # type: ignore[arg-type]
    good = [proto.encoder.encode(batch(i, key="x", n=2)) for i in (1, 2)]
    taken = ing.take([*good, good[0]], HELLO)
    assert (taken.events, taken.error, j.last_seq, ing.dedup.skipped) == (4, None, 2, 1)
    taken = ing.take([proto.encoder.encode(batch(3, key="x", n=1)), b"\xc1",
                      proto.encoder.encode(batch(4, key="x", n=1))], HELLO)
    n, error = taken.events, taken.error
    assert n == 1 and error and error.startswith("malformed message") and j.last_seq == 3
    j.close()


def test_the_run_store_writes_logs_marks_and_series_and_the_fold_reads_them(
        tmp_path: Path) -> None:
    store = RunStore(str(tmp_path))
    store.apply(journaled(mark(1, "start"), batch(2, key="loss", n=5),
                          batch(3, rows=[(0, 1.0, {"lr": 0.1, "note": "x"})]),
                          mark(4, "end", "SUCCESS")))
    store.close()
    steps, _, values = _series.read(_series.path_of(str(tmp_path / "runs"), "r", "s",
                                                        "loss"))
    assert list(steps) == [1, 2, 3, 4, 5] and list(values) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert not Path(_series.path_of(str(tmp_path / "runs"), "r", "s", "note")).exists()
    from magnusd._runlog import load_run

    run = load_run(str(tmp_path), "r")
    assert run is not None and run.status == "SUCCESS"
    assert run.steps["s"].user_defined_metrics == {
        "loss_1": 1.0, "loss_2": 2.0, "loss_3": 3.0, "loss_4": 4.0, "loss_5": 5.0,
        "lr": 0.1, "note": "x"}
    assert store.take_touched() == {"r"} and store.take_touched() == set()


def test_the_fold_lets_a_process_own_end_win_over_the_daemons_verdict() -> None:
    fold = RunFold("r")
    fold.add(mark(1, "start"))
    dead = proto.StepMark("magnusd@h", 9, "r", "", "s", "end", 2.0, "FAIL", "a1", "h", 7,
                          end_reason="killed: SIGKILL (pid 7)")
    fold.add(dead)
    assert (fold.result().steps["s"].attempts[0].end_reason or "").startswith("killed")
    fold.add(mark(2, "end", "SUCCESS"))  # the spooled real end arrives later
    attempt = fold.result().steps["s"].attempts[0]
    assert (attempt.status, attempt.end_reason) == ("SUCCESS", None)
    fold.add(dead)  # and a verdict after the real end changes nothing
    assert fold.result().status == "SUCCESS"


def test_downsampling_keeps_every_bucket_s_extremes() -> None:
    n = 100_000
    values = array("d", [math.sin(i / 100) for i in range(n)])
    values[77_777] = 50.0
    values[12_345] = -50.0
    s, _, v, down = _series.downsample(array("q", range(n)), array("d", [0.0] * n), values, 200)
    assert down and len(v) <= 200 and s == sorted(s)
    assert 50.0 in v and -50.0 in v and s[v.index(50.0)] == 77_777


def test_a_read_of_the_journal_is_bounded_and_resumes(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j"))
    j.open()
    for _ in range(6000):  # ~6 MB
        j.append([b"x" * 1000], [1])
    r = Reader(j.dir, 1, j)
    first = r.read(max_bytes=10_000)  # "about": whole chunks of at least 2 MiB
    rest = r.read(max_bytes=64 << 20)
    assert 1000 < len(first) < 6000
    assert [s for s, _, _ in first + rest] == list(range(1, 6001))
    j.close()


def test_the_head_structs_are_prefixes_of_the_messages_they_read() -> None:
    for head, full in ((proto.BatchHead, proto.Batch), (proto.MarkHead, proto.StepMark),
                       (proto.BatchSteps, proto.Batch)):
        n = len(head.__struct_fields__)
        assert head.__struct_fields__ == full.__struct_fields__[:n], head
        assert head.__struct_config__.tag == full.__struct_config__.tag
