from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
from pathlib import Path

import pytest

from leveret.storage import CorruptRecord, QueueLog
from leveret.storage.log import _name


def payload(i: int, size: int = 100) -> bytes:
    head = i.to_bytes(4, "big")
    return head + bytes((i + k) % 251 for k in range(size - 4))


def files(d: Path, kind: str = "msgs") -> list[str]:
    """The live files of a kind (a dropped segment, ``*.drop``, waits for the sync job)."""
    return sorted(n for n in os.listdir(d) if n.startswith(kind + ".") and not n.endswith(".drop"))


def recover(d: Path, segment_size: int = 4096) -> tuple[QueueLog, list[int], list[bytes]]:
    q = QueueLog(d, segment_size)
    seen: list[tuple[int, bytes]] = []
    out = q.recover(lambda p, v: seen.append((p, bytes(v))))
    assert [p for p, _ in seen] == list(out)
    return q, list(out), [b for _, b in seen]


def fill(d: Path, n: int, size: int = 100, segment_size: int = 4096) -> tuple[QueueLog, list[int]]:
    q = QueueLog(d, segment_size)
    q.recover()
    return q, [q.append(payload(i, size)) for i in range(n)]


def test_append_read_roundtrip_and_positions(tmp_path: Path) -> None:
    q, ps = fill(tmp_path, 200, size=150, segment_size=2048)
    assert ps == sorted(ps) and len(set(ps)) == 200
    assert len(files(tmp_path)) > 1  # rolled
    # still in the write buffer, then from disk
    assert q.read(ps[-1]) == payload(199, 150)
    q.flush()
    assert all(q.read(p) == payload(i, 150) for i, p in enumerate(ps))
    assert q.live_count == 200 and q.live_bytes == 200 * 158
    assert q.disk_bytes == sum(os.path.getsize(tmp_path / f) for f in files(tmp_path))
    with pytest.raises(ValueError):
        q.append(b"")
    with pytest.raises(ValueError):
        q.read(123 << 32)
    q.close()


def test_oversized_record_gets_own_segment(tmp_path: Path) -> None:
    q, ps = fill(tmp_path, 2, size=100, segment_size=1024)
    big = q.append(b"x" * 5000)
    after = q.append(b"y")
    assert big >> 32 == (ps[1] >> 32) + 1 and big & 0xFFFFFFFF == 0
    assert after >> 32 == (big >> 32) + 1
    assert q.read(big) == b"x" * 5000
    assert q.ack(big)  # inactive and empty: deleted
    assert _name("msgs", big >> 32, 0) not in files(tmp_path)
    q.close()


def test_ack_deletes_fully_acked_segment_and_recover(tmp_path: Path) -> None:
    q, ps = fill(tmp_path, 100, segment_size=1024)
    first_seg = ps[0] >> 32
    in_first = [p for p in ps if p >> 32 == first_seg]
    for p in in_first:
        assert q.ack(p)
    assert not q.ack(in_first[0])  # twice: ignored
    assert not q.ack(ps[1] + 3)  # not a record start: ignored
    assert not q.ack((999 << 32) | 0)  # unknown segment: ignored
    assert _name("msgs", first_seg, 0) not in files(tmp_path)
    acked = set(in_first) | set(ps[20:90:3])
    for p in ps[20:90:3]:
        q.ack(p)
    assert q.live_count == 100 - len(acked)
    job = q.sync_job()
    assert job is not None
    job()
    q.close()
    q2, out, payloads = recover(tmp_path, 1024)
    want = [(p, payload(i)) for i, p in enumerate(ps) if p not in acked]
    assert out == [p for p, _ in want] and payloads == [b for _, b in want]
    assert q2.live_count == len(want)
    # appends after recovery go to a new segment
    assert q2.append(b"new") >> 32 == (ps[-1] >> 32) + 1
    q2.close()


def test_recovery_deletes_fully_acked_segments(tmp_path: Path) -> None:
    q, ps = fill(tmp_path, 30, segment_size=1024)
    last_seg = [p for p in ps if p >> 32 == ps[-1] >> 32]
    for p in last_seg:  # the active segment is not full, so it is kept until recovery
        q.ack(p)
    assert _name("msgs", ps[-1] >> 32, 0) in files(tmp_path)
    q.close()
    q2, out, _ = recover(tmp_path, 1024)
    assert _name("msgs", ps[-1] >> 32, 0) not in files(tmp_path)
    assert out == [p for p in ps if p not in last_seg]
    q2.close()
    q3, out3, _ = recover(tmp_path, 1024)  # orphan acks file removed by q2's close
    assert out3 == out and not any(f.endswith(str(ps[-1] >> 32)) for f in files(tmp_path, "acks"))
    q3.close()


def test_torn_tail_every_offset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    q, ps = fill(src, 5, size=40)
    q.close()
    seg = src / files(src)[-1]
    size = seg.stat().st_size
    last_start = ps[-1] & 0xFFFFFFFF
    for cut in range(last_start, size):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(src, d)
        os.truncate(d / files(d)[-1], cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            q2, out, payloads = recover(d)
        assert out == ps[:4] and payloads == [payload(i, 40) for i in range(4)]
        if cut > last_start:
            assert any(r.levelno == logging.WARNING for r in caplog.records)
        assert (d / files(d)[-1]).stat().st_size == last_start
        # new appends survive the next recovery
        p = q2.append(b"after")
        q2.close()
        q3, out, _ = recover(d)
        assert out == ps[:4] + [p]
        q3.close()


def test_crc_mismatch_on_last_record_is_torn_tail(tmp_path: Path) -> None:
    q, ps = fill(tmp_path, 3)
    q.close()
    seg = tmp_path / files(tmp_path)[-1]
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF
    seg.write_bytes(data)
    q2, out, _ = recover(tmp_path)
    assert out == ps[:2] and seg.stat().st_size == ps[2] & 0xFFFFFFFF
    q2.close()


def test_zero_filled_tail(tmp_path: Path) -> None:
    q, ps = fill(tmp_path, 3)
    q.close()
    seg = tmp_path / files(tmp_path)[-1]
    with open(seg, "ab") as f:
        f.write(b"\0" * 300)
    q2, out, _ = recover(tmp_path)
    assert out == ps
    q2.close()


def test_corrupt_middle_record_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    q, ps = fill(tmp_path, 60, segment_size=1024)
    q.close()
    segs = sorted({p >> 32 for p in ps})
    victim_seg = segs[1]
    in_seg = [p for p in ps if p >> 32 == victim_seg]
    victim = in_seg[len(in_seg) // 2]
    path = tmp_path / _name("msgs", victim_seg, 0)
    data = bytearray(path.read_bytes())
    data[(victim & 0xFFFFFFFF) + 20] ^= 0x01
    path.write_bytes(data)
    with caplog.at_level(logging.ERROR):
        q2, out, payloads = recover(tmp_path, 1024)
    assert out == [p for p in ps if p != victim]
    assert payloads == [payload(i) for i, p in enumerate(ps) if p != victim]
    assert any("checksum" in r.message and r.levelno == logging.ERROR for r in caplog.records)
    with pytest.raises(ValueError):
        q2.read(1 << 40)
    q2.close()


def test_corrupt_read_raises(tmp_path: Path) -> None:
    q, ps = fill(tmp_path, 3)
    q.flush()
    path = tmp_path / files(tmp_path)[0]
    data = bytearray(path.read_bytes())
    data[(ps[1] & 0xFFFFFFFF) + 30] ^= 0x10
    path.write_bytes(data)
    with pytest.raises(CorruptRecord):
        q.read(ps[1])
    with pytest.raises(CorruptRecord):
        q.read(ps[1] + 9)  # not a record start
    assert q.read(ps[2]) == payload(2)
    q.close()


@pytest.mark.parametrize("where", ["middle", "last"])
def test_garbage_length_drops_rest_of_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    q, ps = fill(tmp_path, 60, segment_size=1024)
    q.close()
    segs = sorted({p >> 32 for p in ps})
    seg_n = segs[1] if where == "middle" else segs[-1]
    in_seg = [p for p in ps if p >> 32 == seg_n]
    bad = in_seg[1]
    path = tmp_path / _name("msgs", seg_n, 0)
    data = bytearray(path.read_bytes())
    struct.pack_into(">I", data, bad & 0xFFFFFFFF, 0x7FFFFFF0)
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING):
        q2, out, _ = recover(tmp_path, 1024)
    lost = set(in_seg[1:])
    assert out == [p for p in ps if p not in lost]
    assert caplog.records
    if where == "last":
        assert path.stat().st_size == bad & 0xFFFFFFFF
    q2.close()


def test_truncated_ack_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    q, ps = fill(tmp_path, 10)
    for p in ps[:3]:
        q.ack(p)
    q.close()
    acks = tmp_path / files(tmp_path, "acks")[0]
    assert acks.stat().st_size == 24
    os.truncate(acks, 21)
    with caplog.at_level(logging.WARNING):
        q2, out, _ = recover(tmp_path)
    assert out == ps[2:]  # third ack lost: that message comes back
    assert acks.stat().st_size == 16
    assert q2.ack(ps[2]) and q2.ack(ps[5])
    q2.close()
    q3, out, _ = recover(tmp_path)
    assert out == [p for p in ps[3:] if p != ps[5]]
    q3.close()


def test_garbage_ack_entries_ignored(tmp_path: Path) -> None:
    q, ps = fill(tmp_path, 4)
    q.ack(ps[1])
    q.close()
    acks = tmp_path / files(tmp_path, "acks")[0]
    with open(acks, "ab") as f:
        f.write(b"\0" * 16 + struct.pack(">Q", (77 << 32) | 0))  # zero fill, foreign segment
    q2, out, _ = recover(tmp_path)
    assert out == [ps[0], ps[2], ps[3]]
    q2.close()


def test_enospc_partial_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q, ps = fill(tmp_path, 5)
    q.flush()
    seg = tmp_path / files(tmp_path)[0]
    good_size = seg.stat().st_size
    more = [q.append(payload(100 + i)) for i in range(3)]
    real_pwrite = os.pwrite
    calls = []

    def failing_pwrite(fd: int, data: bytes, offset: int) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_pwrite(fd, bytes(data)[:50], offset)  # partial write, then full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", failing_pwrite)
    with pytest.raises(OSError) as ei:
        q.flush()
    assert ei.value.errno == errno.ENOSPC
    assert seg.stat().st_size == good_size  # partial write cut back
    assert q.read(more[0]) == payload(100)  # still buffered
    # crash now: the earlier records survive intact
    d2 = tmp_path.parent / (tmp_path.name + "_copy")
    shutil.copytree(tmp_path, d2)
    q2, out, payloads = recover(d2)
    assert out == ps and payloads == [payload(i) for i in range(5)]
    q2.close()
    # disk space comes back: retry succeeds, nothing lost
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    q.flush()
    q.close()
    q3, out, _ = recover(tmp_path)
    assert out == ps + more
    q3.close()


def test_enospc_on_append_leaves_record_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q, ps = fill(tmp_path, 3, segment_size=1024)
    q.flush()

    def no_space(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "full")

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(OSError):
        for i in range(100):  # rolling needs a flush, which fails
            q.append(payload(10 + i))
    count = q.live_count
    monkeypatch.undo()
    q.close()
    q2, out, _ = recover(tmp_path, 1024)
    assert out[:3] == ps and len(out) == count
    q2.close()


def test_compaction_keeps_order_and_bounds_disk(tmp_path: Path) -> None:
    seg_size = 2048
    q, ps = fill(tmp_path, 400, size=100, segment_size=seg_size)
    keep = ps[::25]  # a few old records pin each segment
    for p in ps:
        if p not in keep:
            q.ack(p)
    q.flush()
    assert q.disk_bytes > 2 * q.live_bytes + seg_size
    moved = q.maybe_compact()
    assert moved
    new = [moved.get(p, p) for p in keep]
    assert new == sorted(new) and len(set(new)) == len(new)
    assert [q.read(p) for p in new] == [payload(ps.index(p)) for p in keep]
    assert q.disk_bytes <= 2 * q.live_bytes + seg_size
    assert q.maybe_compact() == {}
    job = q.sync_job()
    if job:
        job()
    on_disk = sum(os.path.getsize(tmp_path / f) for f in files(tmp_path) + files(tmp_path, "acks"))
    assert on_disk == q.disk_bytes
    # acks still work on moved positions, and the result survives recovery
    assert q.ack(new[3]) and not q.ack(new[3])
    q.close()
    q2, out, payloads = recover(tmp_path, seg_size)
    expect = [p for p in new if p != new[3]]
    assert out == expect
    assert payloads == [payload(ps.index(p)) for p in keep if moved.get(p, p) != new[3]]
    q2.close()


def test_one_old_record_does_not_pin_disk(tmp_path: Path) -> None:
    seg_size = 4096
    q, ps = fill(tmp_path, 2000, size=100, segment_size=seg_size)
    where = {p: p for p in ps}  # original -> current position
    for i, p in enumerate(ps[1:]):
        assert q.ack(where[p])
        if i % 50 == 0:
            moved = q.maybe_compact()
            where = {k: moved.get(v, v) for k, v in where.items()}
    q.maybe_compact()
    assert q.live_count == 1 and q.read(where[ps[0]]) == payload(0)
    assert q.disk_bytes <= 2 * q.live_bytes + 2 * seg_size
    assert len(files(tmp_path)) <= 2
    q.close()


def test_dropped_segment_goes_with_the_sync_job_or_at_recovery(tmp_path: Path) -> None:
    """A fully acked segment is renamed at once (a crash must not find its records
    again) and removed by the next sync job, off the event loop; one left by a crash
    goes at recovery."""
    q, ps = fill(tmp_path, 100, segment_size=1024)
    first = ps[0] >> 32
    for p in [p for p in ps if p >> 32 == first]:
        assert q.ack(p)
    dropped = _name("msgs", first, 0) + ".drop"
    assert _name("msgs", first, 0) not in os.listdir(tmp_path)
    assert dropped in os.listdir(tmp_path)
    job = q.sync_job()
    assert job is not None
    job()
    assert dropped not in os.listdir(tmp_path)
    assert _name("acks", first, 0) not in os.listdir(tmp_path)
    # a crash between the rename and the job: recovery removes the leftover
    second = ps[-1] >> 32
    for p in [p for p in ps if p >> 32 == first + 1]:
        assert q.ack(p)
    assert first + 1 != second and _name("msgs", first + 1, 0) + ".drop" in os.listdir(tmp_path)
    q._close_fds()  # the process dies
    q2, out, _ = recover(tmp_path, 1024)
    assert not any(n.endswith(".drop") for n in os.listdir(tmp_path))
    assert out and all(p >> 32 > first + 1 for p in out)


def test_a_failed_segment_rewrite_keeps_the_moves_made_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC (here: the rename) on the 2nd sparse segment of a pass: the 1st one's moves
    are returned (a raise would lose them while its records sit at new offsets), the 2nd
    one stays as it was, and both survive recovery."""
    q, ps = fill(tmp_path, 100, segment_size=1024)
    keep = ps[3::7]  # (none at a segment start: every kept record moves)
    for p in ps:
        if p not in keep:
            q.ack(p)
    q.flush()
    sparse = sorted({p >> 32 for p in keep})[:-1]  # (the last: the active segment)
    assert len(sparse) >= 2
    real_rename = os.rename
    renames: list[str] = []

    def rename(src: str, dst: str) -> None:
        if not src.endswith(".tmp"):  # (an old generation set aside for the sync job)
            return real_rename(src, dst)
        renames.append(dst)
        if len(renames) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    moved = q.compact()
    monkeypatch.undo()
    assert moved and {p >> 32 for p in moved} == {sparse[0]}
    new = [moved.get(p, p) for p in keep]
    assert [q.read(p) for p in new] == [payload(ps.index(p)) for p in keep]
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path))
    assert _name("msgs", sparse[1], 1) not in files(tmp_path)
    q.close()
    q2, out, payloads = recover(tmp_path, 1024)
    assert out == new and payloads == [payload(ps.index(p)) for p in keep]
    q2.close()


def test_compaction_crash_leftovers(tmp_path: Path) -> None:
    q, ps = fill(tmp_path, 100, segment_size=1024)
    for p in ps[1:20]:
        q.ack(p)
    q.flush()
    seg_n = ps[0] >> 32
    old_msgs = (tmp_path / _name("msgs", seg_n, 0)).read_bytes()
    old_acks = (tmp_path / _name("acks", seg_n, 0)).read_bytes()
    moved = q.compact()
    q.close()
    # crash before the old generation was removed, plus a stray tmp file
    (tmp_path / _name("msgs", seg_n, 0)).write_bytes(old_msgs)
    (tmp_path / _name("acks", seg_n, 0)).write_bytes(old_acks)
    (tmp_path / (_name("msgs", seg_n, 2) + ".tmp")).write_bytes(b"junk")
    q2, out, _ = recover(tmp_path, 1024)
    assert out == [moved.get(p, p) for p in [ps[0]] + ps[20:]]
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path))
    assert _name("msgs", seg_n, 0) not in files(tmp_path)
    q2.close()


def test_sync_job(tmp_path: Path) -> None:
    q = QueueLog(tmp_path / "q", 1024)
    q.recover()
    assert q.sync_job() is None
    ps = [q.append(payload(i)) for i in range(30)]
    job = q.sync_job()
    assert job is not None
    q.append(payload(99))
    q.ack(ps[0])
    job2 = q.sync_job()
    q.close()
    job()  # after close: runs on its own dup'd fds
    assert job2 is not None
    q.destroy()
    job2()  # even after the directory is gone
    assert not (tmp_path / "q").exists()


def test_sync_job_nothing_after_clean_sync(tmp_path: Path) -> None:
    q, ps = fill(tmp_path, 3)
    job = q.sync_job()
    assert job is not None
    job()
    assert q.sync_job() is None
    q.ack(ps[0])
    job = q.sync_job()
    assert job is not None
    job()
    assert q.sync_job() is None
    q.close()


def test_append_without_recover_on_fresh_dir(tmp_path: Path) -> None:
    q = QueueLog(tmp_path / "fresh")
    p = q.append_many([b"a", b"bb"])
    assert [q.read(x) for x in p] == [b"a", b"bb"]
    q.close()
    q.close()  # idempotent
    q2, out, payloads = recover(tmp_path / "fresh")
    assert out == p and payloads == [b"a", b"bb"]
    q2.close()


def test_read_many_matches_read_across_segments_buffer_and_errors(tmp_path: Path) -> None:
    import random

    rnd = random.Random(7)
    qlog = QueueLog(tmp_path / "q", segment_size=64 * 1024)
    qlog.recover()
    positions = [qlog.append(bytes([i % 251]) * rnd.randint(1, 3000)) for i in range(400)]
    qlog.flush()
    positions += [qlog.append(b"tail%d" % i) for i in range(20)]  # still in the write buffer
    for p in positions[::7]:
        qlog.ack(p)
    live = [p for i, p in enumerate(positions) if i % 7]
    assert qlog.read_many(live) == [qlog.read(p) for p in live]
    assert qlog.read_many(live[5:9]) == [qlog.read(p) for p in live[5:9]]
    # an unknown position and a corrupt record come back as errors, the rest still read
    bad = (999 << 32) | 0
    out = qlog.read_many([live[0], bad, live[1]])
    assert out[0] == qlog.read(live[0]) and out[2] == qlog.read(live[1])
    assert isinstance(out[1], ValueError)
    seg_no = live[1] >> 32
    seg_path = tmp_path / "q" / _name("msgs", seg_no, 0)
    data = bytearray(seg_path.read_bytes())
    data[(live[1] & 0xFFFFFFFF) + 8] ^= 0xFF
    seg_path.write_bytes(bytes(data))
    out = qlog.read_many(live[1:4])
    assert isinstance(out[0], CorruptRecord)
    assert out[1:] == [qlog.read(p) for p in live[2:4]]
    qlog.close()


@pytest.mark.parametrize("ephemeral", [False, True])
def test_read_records_decodes_as_read_and_decode(tmp_path: Path, ephemeral: bool) -> None:
    import random

    from leveret.storage import record

    rnd = random.Random(11)
    qlog = QueueLog(tmp_path / "q", segment_size=64 * 1024, ephemeral=ephemeral)
    qlog.recover()
    payloads = [record.encode(i % 2, 1000.5 + i, b"\x01x\x02rk" * (i % 3), b"H" * rnd.randint(0, 40), bytes([i % 251]) * rnd.randint(0, 3000))
                for i in range(300)]
    positions = [qlog.append(p) for p in payloads]
    qlog.flush()
    positions += [qlog.append(record.encode(0, 1.0, b"a", b"b", b"in the write buffer"))]
    for p in positions[::5]:
        qlog.ack(p)
    live = [p for i, p in enumerate(positions) if i % 5]
    assert qlog.read_records(live) == [record.decode(qlog.read(p)) for p in live]
    # errors in place, the rest still decoded: an unknown position, a record too short to
    # hold a record head, a damaged record (caught by the checksum where there is one)
    short = qlog.append(b"xy")
    qlog.flush()
    out = qlog.read_records([live[0], (999 << 32) | 0, short, live[1]])
    assert out[0] == record.decode(qlog.read(live[0])) and out[3] == record.decode(qlog.read(live[1]))
    assert isinstance(out[1], ValueError) and isinstance(out[2], Exception)
    qlog.close()


@pytest.mark.parametrize("ephemeral", [False, True])
def test_ack_many_does_what_ack_does_one_by_one(tmp_path: Path, ephemeral: bool) -> None:
    """Runs of consecutive records (the fast path), gaps, records acked before, unknown
    positions, positions out of order, several segments: the same live records, counts,
    files and (durable) recovery as acking each position with ack()."""
    import random

    rnd = random.Random(5)
    for case in range(12):
        logs = []
        for name in ("many", "one"):
            d = tmp_path / f"{case}-{name}"
            q = QueueLog(d, 2048, ephemeral=ephemeral)
            q.recover()
            ps = [q.append(payload(i)) for i in range(120)]
            q.flush()
            logs.append((d, q, ps))
        ps = logs[0][2]
        assert ps == logs[1][2]
        before = rnd.sample(ps, 10)  # acked earlier, one by one, in both
        lo = rnd.randrange(0, 60)
        chosen = ps[lo : lo + rnd.randrange(1, 60)]  # a run, maybe across segments
        if case % 3 == 1:
            chosen = [p for p in chosen if rnd.random() < 0.8]  # with gaps
        if case % 3 == 2:
            chosen = chosen + [ps[-1] + (1 << 32) * 7, ps[0] + 3]  # unknown positions
            rnd.shuffle(chosen)  # out of order
        for _, q, _ in logs:
            for p in before:
                q.ack(p)
        logs[0][1].ack_many(chosen)
        for p in chosen:
            logs[1][1].ack(p)
        (da, qa, _), (db, qb, _) = logs
        assert (qa.live_count, qa.live_bytes) == (qb.live_count, qb.live_bytes)
        assert files(da) == files(db)
        for p in ps:
            ra, rb = qa.read_many([p]), qb.read_many([p])
            assert type(ra[0]) is type(rb[0]) and (ra == rb or isinstance(ra[0], Exception))
        if not ephemeral:
            for _, q, _ in logs:
                job = q.sync_job()
                if job is not None:
                    job()
                q.close()
            assert recover(da, 2048)[1] == recover(db, 2048)[1]


def test_append_parts_writes_large_payloads_from_their_parts(tmp_path: Path) -> None:
    # small payloads are buffered, a large one (DIRECT_MIN or more) goes straight to the
    # file from its parts, behind what was buffered; every record reads back and recovers
    # byte for byte, in order, across segment rolls (one record larger than a segment)
    from leveret.storage.log import DIRECT_MIN

    rnd = __import__("random").Random(5)
    q = QueueLog(tmp_path, 256 * 1024)
    q.recover()
    want: list[bytes] = []
    ps: list[int] = []
    for i, size in enumerate([100, DIRECT_MIN, 7, DIRECT_MIN + 1, 3 * DIRECT_MIN + 5, 50, 600 * 1024, 1, 200 * 1024]):
        data = rnd.randbytes(size)
        cuts = sorted({0, size, *(rnd.randrange(size) for _ in range(i % 4))})
        parts = [memoryview(data)[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
        ps.append(q.append_parts(parts) if i % 3 else q.append(data))
        want.append(data)
    assert [q.read(p) for p in ps] == want
    assert q.read_many(ps) == want
    q.close()
    q2, out, payloads = recover(tmp_path, 256 * 1024)
    assert out == ps and payloads == want
    q2.close()


def test_append_parts_failed_write_is_cut_back_and_keeps_the_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from leveret.storage.log import DIRECT_MIN

    q, ps = fill(tmp_path, 3, segment_size=1 << 20)
    q.flush()
    seg = tmp_path / files(tmp_path)[0]
    good = seg.stat().st_size
    buffered = q.append(payload(50))
    real = os.pwritev
    calls: list[int] = []

    def half_then_full(fd: int, bufs: list[memoryview], offset: int) -> int:
        calls.append(offset)
        if len(calls) == 1:
            return real(fd, [bytes(b"".join(bufs))[:300]], offset)  # a partial write, then a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", half_then_full)
    big = os.urandom(DIRECT_MIN * 2)
    with pytest.raises(OSError):
        q.append_parts([b"head", big])
    assert len(calls) == 2 and seg.stat().st_size == good  # cut back
    assert q.live_count == 4 and q.read(buffered) == payload(50)  # the buffered one is still there
    monkeypatch.undo()
    p = q.append_parts([b"head", big])
    q.close()
    q2, out, payloads = recover(tmp_path, 1 << 20)
    assert out == [*ps, buffered, p] and payloads[-2:] == [payload(50), b"head" + big]
    q2.close()


@pytest.mark.parametrize("ephemeral", [False, True])
def test_read_records_views_of_large_bodies(tmp_path: Path, ephemeral: bool) -> None:
    # views=True: a large body that is at least a quarter of what one pread read comes back
    # as a memoryview of it (equal to the bytes); a small one, one under a quarter of its
    # read (beside a 4x larger one; among many small records) as bytes; a record larger
    # than a read run is read whole, on its own
    from leveret.storage import record
    from leveret.storage.log import _READ_RUN, VIEW_MIN

    qlog = QueueLog(tmp_path / "q", segment_size=16 << 20, ephemeral=ephemeral)
    qlog.recover()
    bodies = [os.urandom(n) for n in (4 * VIEW_MIN, VIEW_MIN, 10, _READ_RUN + 100, VIEW_MIN * 2)]
    bigs = [qlog.append(record.encode(0, 1.5, b"\x01x\x02rk", b"H", b)) for b in bodies]
    smalls = [qlog.append(record.encode(0, 2.5, b"\x01x\x02rk", b"H", os.urandom(100))) for _ in range(2000)]
    lone = qlog.append(record.encode(0, 3.5, b"\x01x\x02rk", b"H", os.urandom(VIEW_MIN)))
    qlog.flush()
    out = qlog.read_records(bigs, True)
    assert [bytes(r[4]) for r in out] == bodies  # type: ignore[index]
    assert [r[4].__class__ for r in out] == [memoryview, bytes, bytes, memoryview, memoryview]  # type: ignore[index]
    assert out == qlog.read_records(bigs) == [record.decode(qlog.read(p)) for p in bigs]
    mixed = qlog.read_records([*smalls, lone], True)
    assert all(r[4].__class__ is bytes for r in mixed)  # type: ignore[index]
    assert mixed[-1] == record.decode(qlog.read(lone))
    qlog.close()


def test_will_need_advises_one_range_per_run_of_near_records_and_skips_the_unreadable(tmp_path: Path) -> None:
    q, pos = fill(tmp_path, 100)  # 108-byte records, 37 to a 4 KiB segment: 3 segments
    segs = sorted({p >> 32 for p in pos})
    first = [p for p in pos if p >> 32 == segs[0]]
    second = [p for p in pos if p >> 32 == segs[1]]
    last = [p for p in pos if p >> 32 == segs[-1]]
    assert q.will_need(first[:5]) == 1  # neighbours: one range
    assert q.will_need([first[0], first[-1]], near=200) == 2  # further apart than near
    assert q.will_need(first[:2] + second[:2]) == 2  # one per segment
    assert q.will_need([(segs[-1] + 5) << 32]) == 0  # no such segment
    assert q.will_need(last) == 0  # still in the write buffer: nothing on disk to read
    q.flush()
    assert q.will_need(last) == 1
    q.will_need_segments(segs)  # (the active segment is skipped; nothing to see but no error)
    assert [q.read(p) for p in first[:2]] == [payload(0), payload(1)]
    q.close()


def test_compaction_candidates_sparsest_first_and_compact_only_those_asked(tmp_path: Path) -> None:
    q, ps = fill(tmp_path, 100)  # 37 records to a segment
    segs = sorted({p >> 32 for p in ps})
    first = [p for p in ps if p >> 32 == segs[0]]
    second = [p for p in ps if p >> 32 == segs[1]]
    for p in first[:-1]:  # the first segment keeps its last record, the second its last 5
        q.ack(p)
    for p in second[:-5]:
        q.ack(p)
    q.flush()
    assert set(q.compaction_candidates()) == {segs[0], segs[1]}
    assert q.compaction_candidates(limit=1) == [segs[0]]
    moved = q.compact(limit=1, only=[segs[1]])  # (not the sparsest: only what was asked)
    assert moved and {p >> 32 for p in moved} == {segs[1]}
    assert q.compaction_candidates() == [segs[0]]
    assert [q.read(moved[p]) for p in second[-5:]] == [payload(ps.index(p)) for p in second[-5:]]
    assert q.compact(only=[segs[1]]) == {}  # no longer over the ratio
    q.close()
