from pathlib import Path

from leveret.storage import QueueLog


def test_delivered_marks_survive_a_crash_and_only_for_live_records(tmp_path: Path) -> None:
    d = tmp_path / "q"
    log = QueueLog(d, segment_size=4096)
    log.recover()
    a, b, c = (log.append(x) for x in (b"a", b"b", b"c"))
    log.mark_delivered(a)
    log.mark_delivered(b)
    log.ack(a)
    job = log.sync_job()
    assert job is not None
    job()
    # crash: no close
    log2 = QueueLog(d, segment_size=4096)
    assert list(log2.recover()) == [b, c]
    assert log2.delivered == {b}
    assert log2.read(b) == b"b"
