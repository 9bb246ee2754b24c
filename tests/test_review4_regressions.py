"""Regressions found reviewing e6fcb30..ea8b299 (the fused publish, LONG queues, held
frames, overflow records acked at read-back, read-ahead)."""

from __future__ import annotations

import time
from pathlib import Path

import pika

from leveret.broker import Config
from leveret.testing import BrokerThread


def test_expired_messages_recovered_past_the_first_page_batch_are_not_delivered(tmp_path: Path) -> None:
    """A durable queue without x-message-ttl, recovered after a restart: its messages are
    all paged out, and nothing tells the queue yet that some carry an expiration.  Those
    past the first PAGE_BATCH are read back by the one consumer's dispatch loop; expired,
    they must be dropped (RabbitMQ never delivers an expired message), not delivered."""
    data_dir = str(tmp_path / "data")
    plain, expiring = 2500, 20
    with BrokerThread(Config(port=0, data_dir=data_dir)) as b:
        with pika.BlockingConnection(pika.URLParameters(b.url)) as c:
            ch = c.channel()
            ch.queue_declare("dq", durable=True)
            persistent = pika.BasicProperties(delivery_mode=2)
            for i in range(plain):
                ch.basic_publish("", "dq", b"keep-%d" % i, persistent)
            short = pika.BasicProperties(delivery_mode=2, expiration="200")
            for i in range(expiring):
                ch.basic_publish("", "dq", b"gone-%d" % i, short)
            ch.queue_declare("dq", durable=True, passive=True)  # (a round trip)
    time.sleep(0.5)  # the last ones have expired (their TTL counts from the publish)
    with BrokerThread(Config(port=0, data_dir=data_dir)) as b:
        with pika.BlockingConnection(pika.URLParameters(b.url)) as c:
            ch = c.channel()
            got: list[bytes] = []
            for _method, _props, body in ch.consume("dq", auto_ack=True, inactivity_timeout=1.0):
                if body is None:
                    break
                got.append(body)
            ch.cancel()
            left = ch.queue_declare("dq", durable=True, passive=True).method.message_count
    gone = [m for m in got if m.startswith(b"gone-")]
    assert not gone, f"{len(gone)} expired messages were delivered"
    assert len(got) == plain and left == 0
