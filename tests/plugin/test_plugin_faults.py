"""Fault injection: close connections, restart, block publishers, delay/drop deliveries."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import pika
import pika.exceptions
import pytest

from leveret.testing import BrokerHandle, VhostView


def _consume(
    conn: pika.BlockingConnection, queue: str, n: int, timeout: float = 2.0, tag: str = ""
) -> list[tuple[bytes, float]]:
    """Consume ``n`` messages (body, arrival time) or until ``timeout``."""
    ch = conn.channel()
    got: list[tuple[bytes, float]] = []

    def on_message(ch: Any, method: pika.spec.Basic.Deliver, props: Any, body: bytes) -> None:
        got.append((body, time.monotonic()))
        ch.basic_ack(method.delivery_tag)

    ch.basic_consume(queue, on_message, consumer_tag=tag or None)
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        conn.process_data_events(0.02)
    return got


def test_close_connections_with_a_chosen_code_only_in_this_vhost(
    amqp_url: str, leveret: VhostView, leveret_broker: BrokerHandle
) -> None:
    mine = pika.BlockingConnection(pika.URLParameters(amqp_url))
    with leveret_broker.isolated_vhost("bystander") as other:
        theirs = pika.BlockingConnection(pika.URLParameters(other.url))

        assert leveret.close_connections(code=541, text="boom") == 1

        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            mine.process_data_events(1)
        assert (info.value.reply_code, info.value.reply_text) == (541, "INTERNAL_ERROR - boom")
        assert theirs.is_open and len(other.connections()) == 1
        theirs.close()


def test_restart_keeps_state_on_the_same_port(amqp_url: str, leveret: VhostView) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("x", "direct")
    ch.queue_declare("kept")
    ch.queue_bind("kept", "x", "k")
    ch.basic_publish("x", "k", b"before")
    port = leveret.port

    leveret.restart()

    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        conn.process_data_events(1)
    assert info.value.reply_code == 320
    assert leveret.port == port
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.basic_publish("x", "k", b"after")  # exchange and binding survived
    assert [m.body for m in leveret.wait_for_messages("kept", 2, timeout=2)] == [
        b"before",
        b"after",
    ]
    conn.close()


async def test_restart_with_downtime_refuses_connections_meanwhile(
    amqp_url: str, leveret: VhostView
) -> None:
    robust = await aio_pika.connect_robust(amqp_url, reconnect_interval=0.05)
    reconnected = asyncio.Event()
    robust.reconnect_callbacks.add(lambda *_: reconnected.set())
    restart = asyncio.create_task(leveret.restart_async(downtime=0.3))
    await asyncio.sleep(0.15)
    with pytest.raises(ConnectionError):
        await aio_pika.connect(amqp_url, timeout=1)
    await restart
    await asyncio.wait_for(reconnected.wait(), 3)  # the robust client came back by itself
    assert len(leveret.connections()) == 1
    await robust.close()


async def test_close_connections_async_lets_a_robust_client_reconnect(
    amqp_url: str, leveret: VhostView
) -> None:
    robust = await aio_pika.connect_robust(amqp_url, reconnect_interval=0.05)
    reconnected = asyncio.Event()
    robust.reconnect_callbacks.add(lambda *_: reconnected.set())
    before = leveret.connections()

    assert await leveret.close_connections_async(timeout=1) == 1

    await asyncio.wait_for(reconnected.wait(), 3)
    after = leveret.connections()
    assert len(after) == 1 and after[0].peer != before[0].peer
    await robust.close()


def test_block_and_unblock_publishers(amqp_url: str, leveret: VhostView) -> None:
    events: list[str] = []
    publisher = pika.BlockingConnection(pika.URLParameters(amqp_url))
    publisher.add_on_connection_blocked_callback(lambda *_: events.append("blocked"))
    publisher.add_on_connection_unblocked_callback(lambda *_: events.append("unblocked"))
    idle = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = publisher.channel()
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"1")
    publisher.process_data_events(0.05)

    assert leveret.block_publishers(publishers_only=True) == 1  # the idle one never published
    publisher.process_data_events(0.05)
    assert events == ["blocked"]
    assert sorted(c.blocked for c in leveret.connections()) == [False, True]
    ch.basic_publish("", "q", b"2")  # sent, but the broker does not read it while blocked
    publisher.process_data_events(0.05)
    assert leveret.message_count("q") == 1

    assert leveret.unblock_publishers() == 1
    publisher.process_data_events(0.05)
    assert events == ["blocked", "unblocked"]
    assert [m.body for m in leveret.wait_for_messages("q", 2, timeout=1)] == [b"1", b"2"]
    assert leveret.block_publishers() == 2  # default: every open connection
    assert leveret.unblock_publishers() == 2  # (a blocked connection cannot close cleanly)
    idle.close()
    publisher.close()


def test_delay_deliveries(amqp_url: str, leveret: VhostView) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("slow")
    rule = leveret.delay_deliveries(0.2, queue="slow", count=1)
    assert [r.id for r in leveret.faults()] == [rule.id]
    ch.basic_publish("", "slow", b"held")
    ch.basic_publish("", "slow", b"next")
    start = time.monotonic()

    got = _consume(conn, "slow", 2)

    assert [b for b, _ in got] == [b"next", b"held"]  # the held one was overtaken
    assert got[1][1] - start >= 0.19 and got[0][1] - start < 0.19
    assert rule.matched == 1 and leveret.faults() == []  # count reached: removed
    conn.close()


def test_drop_deliveries_by_consumer_tag(amqp_url: str, leveret: VhostView) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("lossy")
    rule = leveret.drop_deliveries(consumer_tag="unlucky", count=2)
    other = leveret.drop_deliveries(consumer_tag="someone-else")
    for i in range(3):
        ch.basic_publish("", "lossy", b"%d" % i)
    stats = leveret.stats()

    got = _consume(conn, "lossy", 3, timeout=0.3, tag="unlucky")

    assert [b for b, _ in got] == [b"2"]  # the first two were lost
    assert leveret.message_count("lossy") == 0
    assert rule.matched == 2 and other.matched == 0
    assert leveret.stats().delivered - stats.delivered == 1
    assert leveret.clear_faults() == 1 and leveret.faults() == []
    conn.close()


def test_held_delivery_goes_back_to_the_queue_when_its_consumer_leaves(
    amqp_url: str, leveret: VhostView
) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("q")
    leveret.delay_deliveries(0.1, queue="q")
    ch.basic_publish("", "q", b"m")
    consumer = conn.channel()
    consumer.basic_consume("q", lambda *a: None)
    conn.process_data_events(0.01)
    consumer.close()  # gone before the delay is over
    [m] = leveret.wait_for_messages("q", 1, timeout=1)
    assert m.body == b"m" and m.redelivered
    conn.close()
