"""Inspection: peek, wait, listings and counters, through the plugin's fixtures and
through AsyncBroker (broker on the test's own event loop)."""

from __future__ import annotations

import asyncio

import aio_pika
import pika
import pytest

from leveret.testing import AsyncBroker, VhostView


def test_listings_show_what_the_client_declared(amqp_url: str, leveret: VhostView) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.exchange_declare("events", "topic", durable=True)
    ch.exchange_declare("audit", "fanout", auto_delete=True)
    ch.exchange_bind("audit", "events", "#")
    ch.queue_declare("billing", durable=True, arguments={"x-max-length": 10})
    ch.queue_bind("billing", "events", "invoice.*")
    ch.basic_qos(prefetch_count=3)
    ch.basic_consume("billing", lambda *a: None, consumer_tag="billing-worker")
    conn.process_data_events(0)

    names = {x.name: x for x in leveret.exchanges()}
    assert {"", "amq.direct", "amq.topic", "events", "audit"} <= set(names)
    assert (names["events"].type, names["events"].durable) == ("topic", True)
    assert names["audit"].auto_delete

    [q] = leveret.queues()
    assert (q.name, q.durable, q.arguments, q.consumers) == (
        "billing",
        True,
        {"x-max-length": 10},
        1,
    )
    assert leveret.queue_names() == ["billing"]

    bindings = {
        (b.source, b.destination, b.destination_type, b.routing_key) for b in leveret.bindings()
    }
    assert bindings == {
        ("events", "audit", "exchange", "#"),
        ("events", "billing", "queue", "invoice.*"),
    }
    with_default = leveret.bindings(include_default=True)
    assert ("", "billing", "billing") in {
        (b.source, b.destination, b.routing_key) for b in with_default
    }

    [c] = leveret.consumers()
    assert (c.queue, c.consumer_tag, c.prefetch_count, c.no_ack) == (
        "billing",
        "billing-worker",
        3,
        False,
    )

    [info] = leveret.connections()
    assert info.vhost == leveret.vhost and info.user == "guest" and info.channels == 1
    assert info.client_properties["product"] == "Pika Python Client Library"
    conn.close()


def test_peek_does_not_consume_and_counts_follow_the_traffic(
    amqp_url: str, leveret: VhostView
) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("q")
    for i in range(3):
        ch.basic_publish("", "q", b"m%d" % i, pika.BasicProperties(headers={"i": i}, priority=i))

    peeked = leveret.peek("q")
    assert [m.body for m in peeked] == [b"m0", b"m1", b"m2"]
    assert [m.headers["i"] for m in peeked] == [0, 1, 2]
    assert peeked[2].priority == 2 and not peeked[0].redelivered and peeked[0].state == "ready"
    assert [m.body for m in leveret.peek("q", limit=2)] == [b"m0", b"m1"]
    assert leveret.peek("q") == peeked  # still there

    method, _, body = ch.basic_get("q")  # delivered, not acked
    assert body == b"m0"
    assert [m.body for m in leveret.peek("q")] == [b"m1", b"m2"]
    both = leveret.peek("q", include_unacked=True)
    assert [(m.body, m.state) for m in both] == [
        (b"m0", "unacked"),
        (b"m1", "ready"),
        (b"m2", "ready"),
    ]
    ch.basic_ack(method.delivery_tag)
    conn.process_data_events(0)

    assert leveret.wait_for_message("q", predicate=lambda m: m.headers["i"] == 2).body == b"m2"
    assert [m.body for m in leveret.wait_for_messages("q", 2, timeout=1)] == [b"m1", b"m2"]
    with pytest.raises(TimeoutError, match="expected 3 message"):
        leveret.wait_for_messages("q", 3, timeout=0.05)
    with pytest.raises(TimeoutError, match="does not exist"):
        leveret.wait_for_message("missing", timeout=0.05)
    with pytest.raises(KeyError):
        leveret.peek("missing")

    stats = leveret.stats()
    assert (stats.published, stats.delivered, stats.acked) == (3, 1, 1)
    assert leveret.purge("q") == 2 and leveret.message_count("q") == 0
    conn.close()


async def test_wait_for_message_async_while_the_client_runs_on_the_same_loop(
    amqp_url: str, leveret: VhostView
) -> None:
    async with await aio_pika.connect(amqp_url) as conn:
        ch = await conn.channel()
        await ch.declare_queue("later")

        async def publish_later() -> None:
            await asyncio.sleep(0.05)
            await ch.default_exchange.publish(aio_pika.Message(b"late"), "later")

        task = asyncio.create_task(publish_later())
        msg = await leveret.wait_for_message_async("later", timeout=2)
        await task
        assert msg.body == b"late"
        [m] = await leveret.wait_for_messages_async("later", 1, timeout=1)
        assert m.body == b"late"


async def test_async_broker_on_the_running_loop() -> None:
    async with AsyncBroker() as b:
        assert b.startup_seconds is not None and b.startup_seconds < 0.2
        assert b.url == f"amqp://guest:guest@127.0.0.1:{b.port}/"
        b.add_vhost("v1")
        assert b.vhosts() == ["/", "v1"]
        async with await aio_pika.connect(b.url_for("v1")) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue("jobs")
            waiter = asyncio.create_task(b.wait_for_message("jobs", vhost="v1", timeout=2))
            await ch.default_exchange.publish(aio_pika.Message(b"job", message_id="m-1"), "jobs")
            msg = await waiter
            assert (msg.body, msg.message_id, msg.queue) == (b"job", "m-1", "jobs")
            assert [x.name for x in b.queues("v1")] == ["jobs"]
            assert b.stats().published == 1
            got = await q.get(timeout=2)
            await got.ack()
        b.delete_vhost("v1")
        assert b.vhosts() == ["/"]
