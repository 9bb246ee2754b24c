"""The node's delivered and acked totals are the queues' counters summed (a delivery and an
ack are counted once, on the queue): deleted queues and vhosts and direct reply-to keep
what was counted, and an ack counts acks only (a reject or a nack without requeue is no
ack, as in RabbitMQ's ``ack`` counter)."""

from __future__ import annotations

import aio_pika
from aio_pika import Message

from leveret.broker import Config
from leveret.testing import AsyncBroker
from tests.polling import async_wait_until


async def test_node_delivered_and_acked_are_summed_from_queues_and_never_go_down() -> None:
    async with AsyncBroker(Config(port=0, vhosts=["/", "gone"])) as b:
        broker = b.broker
        async with await aio_pika.connect(b.url_for("gone")) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue("totals.q")
            for _ in range(5):
                await ch.default_exchange.publish(Message(b"m"), "totals.q")
            got = [await q.get(timeout=5) for _ in range(4)]
            await got[0].ack()
            await got[1].ack()
            await got[2].reject(requeue=False)  # not an ack
            await got[3].nack(requeue=True)  # back, not an ack
            again = await q.get(timeout=5)  # the requeued one, or the fifth
            await again.ack()
            await q.declare()  # a round trip: all settled
            assert (broker.stats_delivered, broker.stats_acked) == (5, 3)
            await q.delete(if_unused=False, if_empty=False)
            assert (broker.stats_delivered, broker.stats_acked) == (5, 3)
        broker.delete_vhost("gone")
        assert (broker.stats_delivered, broker.stats_acked) == (5, 3)
        # direct reply-to: counted while its consumer lives, and after
        async with await aio_pika.connect(b.url) as conn:
            ch = await conn.channel()
            replies = await ch.get_queue("amq.rabbitmq.reply-to", ensure=False)
            got_reply: list[bytes] = []

            async def on_reply(m: aio_pika.abc.AbstractIncomingMessage) -> None:
                got_reply.append(m.body)

            tag = await replies.consume(on_reply, no_ack=True)
            (key,) = broker.reply_channels  # the reply consumer's key
            ch2 = await conn.channel()
            await ch2.default_exchange.publish(Message(b"reply"), f"amq.rabbitmq.reply-to.{key}")
            await async_wait_until(lambda: got_reply, what="the reply")
            assert got_reply == [b"reply"]
            assert broker.stats_delivered == 6
            await replies.cancel(tag)
            assert broker.stats_delivered == 6
        assert broker.stats_delivered == 6


# ---------------------------------------------------------------------- published


async def test_node_published_total_is_summed_from_exchanges_and_never_goes_down() -> None:
    """The node's published counter is the exchanges' publish_in summed (counted once per
    publish); deleting an exchange or a whole vhost keeps what was counted."""
    from leveret.testing import AsyncBroker

    async with AsyncBroker(Config(port=0, vhosts=["/", "gone"])) as b:
        broker = b.broker
        async with await aio_pika.connect(b.url_for("gone")) as conn:
            ch = await conn.channel()
            x = await ch.declare_exchange("r3.x", aio_pika.ExchangeType.FANOUT)
            q = await ch.declare_queue("r3.q")
            await q.bind(x)
            for _ in range(3):
                await x.publish(Message(b"m"), "")
            await ch.default_exchange.publish(Message(b"m"), "r3.q")
            await q.declare()  # a round trip: all four routed
            assert broker.stats_published == 4
            await x.delete()
            assert broker.stats_published == 4
        broker.delete_vhost("gone")
        assert broker.stats_published == 4

