"""Transient backlogs page out to a per-queue overflow log (leveret.broker.core.backing):
memory stays bounded, order and bytes are kept, and nothing of it survives a restart."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pika
import pytest

from leveret.broker import Config
from leveret.broker.core import backing
from leveret.testing import BrokerThread
from tests.polling import pump_until


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backing, "PAGE_MAX", 200)
    monkeypatch.setattr(backing, "FLOW_LEN", 150)
    monkeypatch.setattr(backing, "PAGE_BATCH", 50)


def _overflow_files(data_dir: Path) -> list[str]:
    root = data_dir / "overflow"
    return [f for _, _, fs in os.walk(root) for f in fs] if root.exists() else []


def test_transient_backlog_pages_to_an_overflow_log_and_comes_back_in_order(small_pages: None, tmp_path: Path) -> None:
    n = 2000
    with BrokerThread(Config(port=0, data_dir=str(tmp_path), segment_size=64 * 1024)) as b:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.queue_declare("backlog")  # not durable: only the overflow log can page it
        bodies = [b"%06d:" % i + os.urandom(i % 700) for i in range(n)]
        for i, body in enumerate(bodies):
            ch.basic_publish("", "backlog", body, pika.BasicProperties(message_id=str(i)))
        assert ch.queue_declare("backlog", passive=True).method.message_count == n
        assert b.broker is not None
        q = b.broker.vhosts["/"].queues["backlog"]
        assert len(q.store.messages) <= 200  # the rest is on disk only
        assert _overflow_files(tmp_path)
        # a requeue in the middle puts messages back at their place
        got = []
        for _ in range(300):
            m, props, body = ch.basic_get("backlog")
            got.append((m.delivery_tag, body))
        ch.basic_nack(got[99][0], multiple=True, requeue=True)
        received = [body for _, body in got[100:]]
        ch.basic_ack(got[-1][0], multiple=True)
        first = []
        for _ in range(100):
            m, props, body = ch.basic_get("backlog", auto_ack=True)
            assert m.redelivered
            first.append(body)
        assert first == bodies[:100]
        assert received == bodies[100:300]
        rest = []
        while True:
            m, props, body = ch.basic_get("backlog")
            if m is None:
                break
            rest.append(body)
            ch.basic_ack(m.delivery_tag)
        assert rest == bodies[300:]
        # drained and acked: the queue is back in memory only, its segments are gone
        assert q.store.plog is None
        assert len([f for f in _overflow_files(tmp_path) if f.startswith("msgs.")]) <= 1
        # another backlog reuses the log; deleting the queue removes it
        for body in bodies[:500]:
            ch.basic_publish("", "backlog", body)
        assert q.store.plog is not None
        assert [ch.basic_get("backlog", auto_ack=True)[2] for _ in range(500)] == bodies[:500]
        ch.queue_delete("backlog")
        assert _overflow_files(tmp_path) == []
        conn.close()


def test_records_are_released_once_read_back_even_while_their_messages_are_unacked(
    small_pages: None, tmp_path: Path
) -> None:
    """An overflow record is done with once its message is back in RAM: a consumer sitting
    on unacked messages read back from the overflow log pins none of its segments, and a
    requeue of them loses nothing (they are in RAM)."""
    n = 2000
    with BrokerThread(Config(port=0, data_dir=str(tmp_path), segment_size=64 * 1024)) as b:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.queue_declare("held")
        bodies = [b"%06d:" % i + b"z" * 1000 for i in range(n)]
        for body in bodies:
            ch.basic_publish("", "held", body)
        assert len([f for f in _overflow_files(tmp_path) if f.startswith("msgs.")]) > 5
        tags = []
        for _ in range(n):
            m, _, body = ch.basic_get("held")  # unacked
            tags.append(m.delivery_tag)
        assert b.broker is not None
        q = b.broker.vhosts["/"].queues["held"]
        assert q.store.plog is None  # all read back: in RAM only again
        assert len([f for f in _overflow_files(tmp_path) if f.startswith("msgs.")]) <= 1
        ch.basic_nack(tags[-1], multiple=True, requeue=True)
        again = [ch.basic_get("held", auto_ack=True)[2] for _ in range(n)]
        assert again == bodies
        assert ch.queue_declare("held", passive=True).method.message_count == 0
        conn.close()


def test_a_draining_queue_reads_ahead_of_its_consumers(small_pages: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With consumers, a queue draining from its log keeps READ_AHEAD messages ready in RAM
    (read back in chunks between dispatches), not just a batch once RAM ran out; order and
    count are kept."""
    monkeypatch.setattr(backing, "READ_AHEAD", 120)
    monkeypatch.setattr(backing, "READ_AHEAD_CHUNK", 30)
    n = 2000
    with BrokerThread(Config(port=0, data_dir=str(tmp_path), segment_size=64 * 1024)) as b:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.queue_declare("ahead")
        bodies = [b"%06d" % i for i in range(n)]
        for body in bodies:
            ch.basic_publish("", "ahead", body)
        assert b.broker is not None
        q = b.broker.vhosts["/"].queues["ahead"]
        assert len(q.store.tail) > 1000  # paged out
        ch.basic_qos(prefetch_count=10)
        got: list[bytes] = []
        tags: list[int] = []

        def on_msg(c: object, method: object, props: object, body: bytes) -> None:
            got.append(body)
            tags.append(method.delivery_tag)  # type: ignore[attr-defined]
            if len(got) <= 400:
                ch.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

        ch.basic_consume("ahead", on_msg)
        pump_until(conn, lambda: len(got) >= 410, 10, pump=0.05)
        conn.process_data_events(0.3)  # (the consumer is stuck now: 10 unacked)
        assert len(got) == 410
        assert len(q.store.messages) >= 120, len(q.store.messages)  # read ahead, not run dry
        ch.basic_ack(tags[-1], multiple=True)
        acked = tags[-1]
        deadline = time.monotonic() + 30  # (each round acks what it got: not a plain wait)
        while len(got) < n and time.monotonic() < deadline:
            conn.process_data_events(0.05)
            if tags[-1] != acked:  # (a tag acked twice is a channel error: 406 unknown tag)
                acked = tags[-1]
                ch.basic_ack(acked, multiple=True)
        assert got == bodies
        conn.close()


def test_overflow_logs_do_not_survive_a_restart_and_purge_empties_them(small_pages: None, tmp_path: Path) -> None:
    with BrokerThread(Config(port=0, data_dir=str(tmp_path), segment_size=64 * 1024)) as b:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.queue_declare("p")
        ch.queue_declare("keep")
        for _ in range(1000):
            ch.basic_publish("", "p", b"x" * 100)
            ch.basic_publish("", "keep", b"y" * 100)
        assert ch.queue_purge("p").method.message_count == 1000
        assert b.broker is not None
        assert b.broker.vhosts["/"].queues["p"].store.plog is None
        assert ch.queue_declare("p", passive=True).method.message_count == 0
        assert _overflow_files(tmp_path)  # (the "keep" queue's)
        conn.close()
    assert _overflow_files(tmp_path) == []  # stopped: removed
    os.makedirs(tmp_path / "overflow" / "7")
    (tmp_path / "overflow" / "7" / "msgs.0000000001").write_bytes(b"junk")  # as after a crash
    with BrokerThread(Config(port=0, data_dir=str(tmp_path))) as b:
        assert _overflow_files(tmp_path) == []
        with pika.BlockingConnection(pika.URLParameters(b.url)) as conn:
            ch = conn.channel()
            ch.queue_declare("keep")
            assert ch.queue_declare("keep", passive=True).method.message_count == 0


def test_a_paged_record_without_exchange_and_routing_key_is_dropped_not_raised(tmp_path: Path) -> None:
    """Paging back in: a record whose exchange/routing-key field is empty (damage the
    overflow log's missing checksums let through) is logged and dropped; the records
    around it still come back, in order."""
    from array import array

    from leveret.storage import QueueLog, record

    class Node:
        queued_bytes = 0

    qlog = QueueLog(tmp_path / "q", 64 * 1024, ephemeral=True)
    qlog.recover()
    header = b"\x00\x3c\x00\x00" + (1).to_bytes(8, "big") + b"\x00\x00"
    good = record.encode(0, 1.0, b"\x00\x01q", header, b"a")
    positions = array("Q", [qlog.append(good), qlog.append(record.encode(0, 1.0, b"", header, b"b")), qlog.append(good)])
    qlog.flush()
    bq = backing.BackingQueue(Node(), None)  # type: ignore[arg-type]
    bq.overflow = bq.plog = qlog
    bq.tail = positions
    assert bq.refill(lambda m, now: 0.0, False)
    got = [bq.pop()[1] for _ in range(len(bq.messages))]
    assert [(m.routing_key, bytes(m.body)) for m in got] == [("q", b"a"), ("q", b"a")]
    # every record was read back (the good ones are in RAM now, the bad one dropped):
    # nothing is left in the overflow log, and the queue no longer pages to it
    assert qlog.live_count == 0
    assert bq.plog is None
    qlog.close()
