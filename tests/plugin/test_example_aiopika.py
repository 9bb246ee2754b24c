"""aio-pika: test asyncio code that publishes and consumes, with Leveret instead of RabbitMQ.

`amqp_url` is a fresh vhost for each test; `leveret` is the same vhost with inspection
(peek, wait, listings, counters) and fault injection (restart, close connections...).
"""

from __future__ import annotations

import asyncio
import json

import aio_pika
import pytest

from leveret.testing import VhostView

# ---- the code under test ---------------------------------------------------------------


async def publish_order(url: str, order: dict) -> None:
    """Announce a new order on the "orders" topic exchange."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        orders = await channel.declare_exchange("orders", aio_pika.ExchangeType.TOPIC, durable=True)
        await orders.publish(
            aio_pika.Message(
                json.dumps(order).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=f"order.created.{order['country']}",
        )


async def run_email_worker(
    url: str, sent: asyncio.Queue[dict]
) -> aio_pika.abc.AbstractRobustConnection:
    """Consume "order-emails" on a robust (self-reconnecting) connection."""
    connection = await aio_pika.connect_robust(url, reconnect_interval=0.1)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=10)
    orders = await channel.declare_exchange("orders", aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue("order-emails", durable=True)
    await queue.bind(orders, "order.created.*")

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            await sent.put(json.loads(message.body))

    await queue.consume(on_message)
    return connection


# ---- the tests -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_publish_order_is_routed_to_the_email_queue(
    amqp_url: str, leveret: VhostView
) -> None:
    async with await aio_pika.connect(amqp_url) as connection:  # the queue the worker would use
        channel = await connection.channel()
        orders = await channel.declare_exchange("orders", aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("order-emails", durable=True)
        await queue.bind(orders, "order.created.*")

    await publish_order(amqp_url, {"id": 7, "country": "fr"})

    message = await leveret.wait_for_message_async("order-emails", timeout=2)
    assert message.json() == {"id": 7, "country": "fr"}
    assert message.routing_key == "order.created.fr"
    assert message.content_type == "application/json"
    assert message.delivery_mode == 2
    assert leveret.stats().published == 1
    assert leveret.message_count("order-emails") == 1  # peeking did not consume it


@pytest.mark.asyncio
async def test_email_worker_consumes_and_survives_a_broker_restart(
    amqp_url: str, leveret: VhostView
) -> None:
    sent: asyncio.Queue[dict] = asyncio.Queue()
    worker = await run_email_worker(amqp_url, sent)
    try:
        await publish_order(amqp_url, {"id": 1, "country": "de"})
        assert await asyncio.wait_for(sent.get(), 2) == {"id": 1, "country": "de"}

        await leveret.restart_async()  # every connection is closed; same port afterwards
        await publish_order(amqp_url, {"id": 2, "country": "it"})  # waits in the queue

        assert await asyncio.wait_for(sent.get(), 5) == {"id": 2, "country": "it"}
        assert [c.queue for c in leveret.consumers()] == ["order-emails"]  # re-subscribed
        assert leveret.stats().acked == 2
    finally:
        await worker.close()
