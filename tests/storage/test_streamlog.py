"""storage.streamlog.StreamLog: offsets across segments, the sparse index, chunks, retention,
recovery (a torn tail cut), and memory that does not grow with the number of records."""

from __future__ import annotations

import os
from pathlib import Path

from leveret.storage import streamlog
from leveret.storage.streamlog import INDEX_EVERY, StreamLog


def fill(log: StreamLog, n: int, start_ts: float = 1000.0, flush_every: int = 0) -> None:
    for i in range(n):
        log.append(0, start_ts + i, b"\x00\x01q", b"hdr", b"body-%d" % i)
        if flush_every and i % flush_every == flush_every - 1:
            log.flush()


def bodies(log: StreamLog, offset: int, n: int = 1 << 30) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos = -1
    while len(out) < n:
        recs, offset, pos = log.read(offset, pos, min(1000, n - len(out)))
        if not recs:
            break
        out += [(r[0], r[5]) for r in recs]
    return out


def test_offsets_across_segments_and_the_sparse_index(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", segment_size=20_000)
    log.recover()
    fill(log, 5000)
    assert len(log.segs) >= 10 and log.next_offset == 5000 and log.first_offset == 0
    got = bodies(log, 0)
    assert got == [(i, b"body-%d" % i) for i in range(5000)]
    for off in (0, 1, 255, 256, 257, 1234, 4999):
        assert bodies(log, log.locate(off)[0], 2)[0] == (off, b"body-%d" % off)
    assert log.locate(5000) == (5000, -1) and log.locate(-3) == (0, 0)
    assert log.offset_at(1000.0 + 3210.5) == 3211 and log.offset_at(0) == 0 and log.offset_at(10**9) == 5000
    # memory: per segment, not per record (the sparse index holds one entry per INDEX_EVERY)
    assert sum(len(s.idx_pos) for s in log.segs) <= 5000 // INDEX_EVERY + len(log.segs)
    log.close()


def test_last_chunk_survives_a_restart(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s")
    log.recover()
    fill(log, 10, flush_every=4)  # chunks: 0-3, 4-7, 8-9
    log.flush()
    assert log.last_chunk == 8
    log.close()
    again = StreamLog(tmp_path / "s")
    assert again.recover() == 10 and again.last_chunk == 8
    again.append(0, 1.0, b"a", b"b", b"c")
    assert again.last_chunk == 10 and again.next_offset == 11
    again.close()


def test_retention_removes_whole_old_segments(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", segment_size=10_000)
    log.recover()
    fill(log, 2000, start_ts=0.0)
    total = log.bytes
    assert log.truncate(total // 2, None) > 0
    assert log.bytes <= total // 2 and log.first_offset > 0 and log.segs[0].first == log.first_offset
    # a reader positioned before the first offset goes on from it
    assert bodies(log, 0, 1)[0][0] == log.first_offset
    # by age: segments whose newest record is older than max_age seconds
    first = log.first_offset
    log.truncate(None, 100.0, now=2000.0)  # records 0..1899 are older than 100 s
    assert first < log.first_offset <= 1900 and log.segs[0].last_ts >= 1900.0
    assert len(os.listdir(tmp_path / "s")) == len(log.segs)
    log.truncate(0, None)  # the active segment always stays
    assert len(log.segs) == 1 and log.next_offset == 2000
    log.close()


def test_recovery_cuts_a_torn_tail(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", segment_size=50_000)
    log.recover()
    fill(log, 300)
    log.close()
    last = sorted(p for p in os.listdir(tmp_path / "s"))[-1]
    path = tmp_path / "s" / last
    with open(path, "ab") as f:
        f.write(b"\x00\x00\x01\x00garbage")  # a record header promising more than is there
    again = StreamLog(tmp_path / "s", segment_size=50_000)
    assert again.recover() == 300
    assert bodies(again, 0)[-1] == (299, b"body-299")
    assert again.append(0, 1.0, b"a", b"b", b"new")[0] == 300
    again.flush()
    assert bodies(again, 300) == [(300, b"new")]
    again.close()


def test_recovery_reads_big_segments_in_runs(tmp_path: Path, monkeypatch: object) -> None:
    monkeypatch.setattr(streamlog, "_SCAN_RUN", 1000)  # type: ignore[attr-defined]
    log = StreamLog(tmp_path / "s")
    log.recover()
    for i in range(200):
        log.append(0, float(i), b"a", b"b", bytes(3000 if i % 7 == 0 else 10))  # some larger than a run
    log.close()
    again = StreamLog(tmp_path / "s")
    assert again.recover() == 200
    assert [len(b) for _, b in bodies(again, 0)] == [3000 if i % 7 == 0 else 10 for i in range(200)]
    again.close()


def test_read_fds_are_bounded(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", segment_size=4096)
    log.recover()
    fill(log, 3000)
    assert len(log.segs) > 3 * streamlog._MAX_FDS
    assert len(bodies(log, 0)) == 3000  # a reader through every segment
    open_fds = [s for s in log.segs if s.fd is not None]
    assert len(open_fds) <= streamlog._MAX_FDS + 1  # (+ the active segment's)
    log.close()


def test_an_empty_segment_left_by_a_crash(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", segment_size=4096)
    log.recover()
    fill(log, 100)
    log.close()
    (tmp_path / "s" / f"stream.{100:020d}").write_bytes(b"")  # rolled, nothing written yet
    again = StreamLog(tmp_path / "s", segment_size=4096)
    assert again.recover() == 100 and again.next_offset == 100
    assert again.append(0, 1.0, b"a", b"b", b"next")[0] == 100
    again.flush()
    again.truncate(0, None)
    assert bodies(again, 0) == [(100, b"next")]
    again.close()
    alone = tmp_path / "t"
    alone.mkdir()
    (alone / f"stream.{7:020d}").write_bytes(b"")  # the only segment, empty: offsets go on from 7
    third = StreamLog(alone)
    assert third.recover() == 0 and third.next_offset == 7 and third.first_offset == 7
    assert third.append(0, 1.0, b"a", b"b", b"x")[0] == 7
    third.close()
