"""The journal and its record format, in-process (no daemon)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from magnusd import _records as records
from magnusd._journal import Journal, Reader, list_segments


def payloads(n: int, start: int = 0) -> list[bytes]:
    return [f"record-{i}".encode() * 3 for i in range(start, start + n)]


def append(j: Journal, ps: list[bytes]) -> int:
    return j.append(ps, [1] * len(ps))


def test_record_roundtrip_and_crc_detects_corruption() -> None:
    data = records.encode_many([(1, b"a"), (2, b"bb"), (3, b"ccc")])
    assert [(s, p) for _, s, _, p in records.scan(data)] == [(1, b"a"), (2, b"bb"), (3, b"ccc")]
    bad = bytearray(data)
    bad[len(records.encode(1, b"a")) + records.HEADER_SIZE] ^= 0xFF  # flip a byte of record 2
    assert [s for _, s, _, _ in records.scan(bytes(bad))] == [1]
    assert [s for _, s, _, _ in records.scan(data[:-1])] == [1, 2]  # torn last record


def test_recovery_truncates_a_torn_tail_and_appends_after_it(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    j.open()
    append(j, payloads(10))
    j.close()
    seg = tmp_path / f"{1:020d}.seg"
    with open(seg, "ab") as f:
        f.write(records.encode(11, b"half written")[:-4])
    j = Journal(str(tmp_path))
    j.open()
    assert j.last_seq == 10 and j.truncated_bytes > 0
    append(j, payloads(5, 10))
    j.close()
    got = Reader(str(tmp_path), 1).read()
    assert [s for s, _, _ in got] == list(range(1, 16))
    assert [p for _, _, p in got] == payloads(15)
    assert [m for _, m, _ in got] == list(range(1, 16))  # cumulative event marks survive


def test_reopen_appends_at_the_end_not_the_start(tmp_path: Path) -> None:
    for k in range(3):
        j = Journal(str(tmp_path))
        j.open()
        append(j, payloads(4, 4 * k))
        j.close()
    assert [p for _, _, p in Reader(str(tmp_path), 1).read()] == payloads(12)


def test_rotation_reader_and_retention(tmp_path: Path) -> None:
    j = Journal(str(tmp_path), segment_bytes=4096)
    j.open()
    for k in range(50):
        append(j, payloads(10, 10 * k))
    assert len(list_segments(str(tmp_path))) > 5
    r = Reader(str(tmp_path), 1, j)
    got: list[tuple[int, int, bytes]] = []
    while batch := r.read(max_bytes=1000):
        got.extend(batch)
    assert [s for s, _, _ in got] == list(range(1, 501))
    # a reader starting in the middle
    assert Reader(str(tmp_path), 250, j).read()[0][0] == 250
    removed = j.retain(min_cursor=300)
    assert removed > 0
    first = list_segments(str(tmp_path))[0]
    assert first <= 301
    assert [s for s, _, _ in Reader(str(tmp_path), 301, j).read()][:1] == [301]
    j.close()


def test_group_commit_makes_appends_durable(tmp_path: Path) -> None:
    async def main() -> None:
        j = Journal(str(tmp_path), fsync_interval=10.0)
        j.open()
        async with anyio.create_task_group() as tg:
            tg.start_soon(j.sync_loop)
            seq = append(j, payloads(3))
            assert j.durable_seq < seq
            with anyio.fail_after(2):  # urgent: not the 10 s interval
                await j.wait_durable(seq, urgent=True)
            assert j.durable_seq >= seq
            tg.cancel_scope.cancel()
        j.close()

    anyio.run(main)


def test_reader_of_a_live_journal_stops_at_a_partial_record(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    j.open()
    append(j, payloads(3))
    os.write(j.fd, records.encode(4, b"partial")[:10])  # a writer mid-record
    got = Reader(str(tmp_path), 1).read()
    assert [s for s, _, _ in got] == [1, 2, 3]
    j.close()


@pytest.mark.parametrize("n", [1, 1000])
def test_encode_many_matches_encode(n: int) -> None:
    items = [(i, b"x" * i) for i in range(1, n + 1)]
    assert records.encode_many(items) == b"".join(records.encode(s, p) for s, p in items)


def test_a_torn_tail_is_found_reading_only_the_end_of_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "log"
    payload = b"p" * 100_000
    blob = b"".join(records.encode(seq, payload) for seq in range(1, 101))  # ~10 MB
    path.write_bytes(blob + records.encode(101, payload)[:5000])  # a torn last record
    assert records.valid_length(str(path)) == len(blob)
    assert len(blob) > records.TAIL_WINDOW  # the window, not the whole file, was read
    path.write_bytes(blob)
    assert records.valid_length(str(path)) == len(blob)
