"""aiormq (the low-level client under aio-pika) scenarios; no automatic recovery."""

from __future__ import annotations

import asyncio

import aiormq
import aiormq.exceptions
from aiormq.abc import DeliveredMessage
from interop_common import check, eq, name, run_async_scenarios, scenario
from interop_common import env as ENV
from pamqp.commands import Basic


async def drain(ch: aiormq.abc.AbstractChannel, q: str) -> list[bytes]:
    out = []
    while True:
        m = await ch.basic_get(q, no_ack=True)
        if isinstance(m.delivery, Basic.GetEmpty):
            return out
        out.append(m.body)


async def temp_queue(ch: aiormq.abc.AbstractChannel) -> str:
    return (await ch.queue_declare("", exclusive=True)).queue


@scenario("connect")
async def s_connect() -> None:
    conn = await aiormq.connect(ENV.url)
    try:
        check(conn.server_capabilities.get("publisher_confirms"), "publisher_confirms capability")
        ch = await conn.channel()
        check(not ch.is_closed, "channel open")
    finally:
        await conn.close()


@scenario("topology")
async def s_topology() -> None:
    conn = await aiormq.connect(ENV.url)
    try:
        ch = await conn.channel()
        x, q = name("topo.x"), name("topo.q")
        await ch.exchange_declare(x, exchange_type="direct", durable=True)
        ok = await ch.queue_declare(q, durable=True, arguments={"x-queue-type": "classic"})
        eq((ok.queue, ok.message_count, ok.consumer_count), (q, 0, 0), "declare-ok")
        await ch.queue_bind(q, x, routing_key="k")
        await ch.basic_publish(b"one", exchange=x, routing_key="k")
        ok = await ch.queue_declare(q, passive=True)
        eq(ok.message_count, 1, "routed")
        purged = await ch.queue_purge(q)
        eq(purged.message_count, 1, "purge-ok count")
        await ch.queue_unbind(q, x, routing_key="k")
        await ch.queue_delete(q)
        await ch.exchange_delete(x)
        try:
            await ch.exchange_declare(x, passive=True)
            raise AssertionError("deleted exchange still there")
        except aiormq.exceptions.ChannelNotFoundEntity:
            pass
    finally:
        await conn.close()


@scenario("confirm")
async def s_confirm() -> None:
    conn = await aiormq.connect(ENV.url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        q = await temp_queue(ch)
        props = aiormq.spec.Basic.Properties(delivery_mode=2, content_type="text/plain")
        confs = await asyncio.gather(*(
            ch.basic_publish(b"m%d" % i, routing_key=q, properties=props) for i in range(300)))
        check(all(isinstance(c, Basic.Ack) for c in confs),
              f"not all acked: {set(map(type, confs))}")
        try:
            await ch.basic_publish(b"r", exchange="amq.direct", routing_key=name("x"),
                                   mandatory=True)
            raise AssertionError("unroutable mandatory publish not returned")
        except aiormq.exceptions.PublishError as exc:
            eq(exc.message.body, b"r", "returned body")
        eq((await ch.queue_declare(q, passive=True)).message_count, 300, "messages")
    finally:
        await conn.close()


@scenario("consume_prefetch")
async def s_consume_prefetch() -> None:
    conn = await aiormq.connect(ENV.url)
    try:
        ch = await conn.channel()
        q = await temp_queue(ch)
        for i in range(12):
            await ch.basic_publish(str(i).encode(), routing_key=q)
        await ch.basic_qos(prefetch_count=5)
        held: list[DeliveredMessage] = []

        async def on_message(m: DeliveredMessage) -> None:
            held.append(m)

        await ch.basic_consume(q, on_message, no_ack=False)
        seen: list[bytes] = []
        while len(seen) < 12:
            want = min(5, 12 - len(seen))
            for _ in range(300):
                if len(held) >= want:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            eq(len(held), want, "deliveries in flight with prefetch 5")
            seen.extend(m.body for m in held)
            await ch.basic_ack(held[-1].delivery_tag, multiple=True)
            held.clear()
        eq(seen, [str(i).encode() for i in range(12)], "order")
    finally:
        await conn.close()


@scenario("reject_requeue")
async def s_reject_requeue() -> None:
    conn = await aiormq.connect(ENV.url)
    try:
        ch = await conn.channel()
        q = await temp_queue(ch)
        await ch.basic_publish(b"x", routing_key=q)
        m = await ch.basic_get(q)
        await ch.basic_reject(m.delivery_tag, requeue=True)
        m = await ch.basic_get(q)
        eq((m.body, m.redelivered), (b"x", True), "requeued")
        await ch.basic_nack(m.delivery_tag, requeue=False)
        eq(await drain(ch, q), [], "discarded")
    finally:
        await conn.close()


@scenario("fanout")
async def s_fanout() -> None:
    conn = await aiormq.connect(ENV.url)
    try:
        ch = await conn.channel()
        x = name("fan")
        await ch.exchange_declare(x, exchange_type="fanout", auto_delete=True)
        qs = [await temp_queue(ch) for _ in range(2)]
        for q in qs:
            await ch.queue_bind(q, x)
        await ch.basic_publish(b"f", exchange=x, routing_key="")
        await asyncio.sleep(0.05)
        for q in qs:
            eq(await drain(ch, q), [b"f"], q)
    finally:
        await conn.close()


@scenario("topic")
async def s_topic() -> None:
    conn = await aiormq.connect(ENV.url)
    try:
        ch = await conn.channel()
        x = name("topic")
        await ch.exchange_declare(x, exchange_type="topic", auto_delete=True)
        q = await temp_queue(ch)
        await ch.queue_bind(q, x, routing_key="*.orange.*")
        await ch.queue_bind(q, x, routing_key="lazy.#")
        for rk in ("quick.orange.rabbit", "lazy.orange.elephant", "quick.brown.fox",
                   "lazy.brown.fox", "quick.orange.male.rabbit", "lazy"):
            await ch.basic_publish(rk.encode(), exchange=x, routing_key=rk)
        await asyncio.sleep(0.05)
        eq(await drain(ch, q), [b"quick.orange.rabbit", b"lazy.orange.elephant",
                                b"lazy.brown.fox", b"lazy"], "topic matches")
    finally:
        await conn.close()


@scenario("tx")
async def s_tx() -> None:
    conn = await aiormq.connect(ENV.url)
    try:
        ch = await conn.channel(publisher_confirms=False)
        q = await temp_queue(ch)
        await ch.tx_select()
        await ch.basic_publish(b"no", routing_key=q)
        await ch.tx_rollback()
        await ch.basic_publish(b"yes", routing_key=q)
        eq((await ch.queue_declare(q, passive=True)).message_count, 0, "before commit")
        await ch.tx_commit()
        eq(await drain(ch, q), [b"yes"], "after commit")
    finally:
        await conn.close()


@scenario("close")
async def s_close() -> None:
    conn = await aiormq.connect(ENV.url)
    ch = await conn.channel()
    try:
        await ch.basic_ack(999)
        await ch.queue_declare("", exclusive=True)
        raise AssertionError("ack of an unknown delivery tag accepted")
    except aiormq.exceptions.ChannelPreconditionFailed:
        pass
    ch2 = await conn.channel()
    await ch2.close()
    await conn.close()
    check(conn.is_closed, "closed")


if __name__ == "__main__":
    asyncio.run(run_async_scenarios())
