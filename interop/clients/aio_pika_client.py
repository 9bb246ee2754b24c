"""aio-pika scenarios, including connect_robust recovering after a broker restart."""

from __future__ import annotations

import asyncio

import aio_pika
import aiormq.exceptions
from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.exceptions import ChannelNotFoundEntity, DeliveryError
from interop_common import check, control, eq, name, run_async_scenarios, scenario
from interop_common import env as ENV


async def drain(q: aio_pika.abc.AbstractQueue) -> list[bytes]:
    out = []
    while (m := await q.get(no_ack=True, fail=False)) is not None:
        out.append(m.body)
    return out


@scenario("connect")
async def s_connect() -> None:
    async with await aio_pika.connect(ENV.url) as conn:
        ch = await conn.channel()
        check(not ch.is_closed, "channel open")
        props = conn.transport.connection.server_properties
        check(props["capabilities"].get("publisher_confirms"), f"capabilities {props}")


@scenario("topology")
async def s_topology() -> None:
    async with await aio_pika.connect(ENV.url) as conn:
        ch = await conn.channel()
        x = await ch.declare_exchange(name("topo.x"), ExchangeType.DIRECT, durable=True)
        x2 = await ch.declare_exchange(name("topo.h"), ExchangeType.HEADERS, auto_delete=True)
        await x2.bind(x, "to-headers")
        q = await ch.declare_queue(name("topo.q"), durable=True)
        await q.bind(x, "k")
        await q.bind(x2, arguments={"x-match": "any", "kind": "report"})
        await x.publish(Message(b"direct"), "k")
        await x.publish(Message(b"headers", headers={"kind": "report"}), "to-headers")
        await x.publish(Message(b"no match", headers={"kind": "other"}), "to-headers")
        await asyncio.sleep(0.1)
        eq(sorted(await drain(q)), [b"direct", b"headers"], "routed")
        same = await ch.declare_queue(name("topo.q"), passive=True)
        eq(same.name, q.name, "passive declare")
        try:
            await ch.get_queue(name("topo.none"))
            raise AssertionError("missing queue found")
        except ChannelNotFoundEntity:
            pass
        ch = await conn.channel()
        await ch.queue_delete(q.name)
        await ch.exchange_delete(x2.name)
        await ch.exchange_delete(x.name)


@scenario("confirm")
async def s_confirm() -> None:
    async with await aio_pika.connect(ENV.url) as conn:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        q = await ch.declare_queue("", exclusive=True)
        results = await asyncio.gather(*(
            ch.default_exchange.publish(
                Message(b"m%d" % i, delivery_mode=DeliveryMode.PERSISTENT), q.name)
            for i in range(500)))
        check(all(r is not None for r in results), "missing confirms")
        q2 = await ch.declare_queue(q.name, passive=True)
        eq(q2.declaration_result.message_count, 500, "confirmed messages")
        try:
            await ch.default_exchange.publish(Message(b"x"), name("nowhere"), mandatory=True)
            raise AssertionError("unroutable mandatory publish was confirmed")
        except DeliveryError as exc:
            eq(exc.message.body, b"x", "returned body")


@scenario("consume_prefetch")
async def s_consume_prefetch() -> None:
    async with await aio_pika.connect(ENV.url) as conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=4)
        q = await ch.declare_queue("", exclusive=True)
        for i in range(20):
            await ch.default_exchange.publish(Message(str(i).encode()), q.name)
        held: list[aio_pika.abc.AbstractIncomingMessage] = []
        seen: list[bytes] = []
        await q.consume(held.append)
        while len(seen) < 20:
            for _ in range(200):
                if len(held) >= 4:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            check(len(held) == 4, f"{len(held)} unacked deliveries with prefetch 4")
            seen.extend(m.body for m in held)
            await held[-1].ack(multiple=True)
            held.clear()
        eq(seen, [str(i).encode() for i in range(20)], "order")


@scenario("reject_requeue")
async def s_reject_requeue() -> None:
    async with await aio_pika.connect(ENV.url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue("", exclusive=True)
        for body in (b"a", b"b"):
            await ch.default_exchange.publish(Message(body), q.name)
        m = await q.get()
        await m.reject(requeue=True)
        m = await q.get()
        eq((m.body, m.redelivered), (b"a", True), "requeued")
        await m.nack(requeue=False)
        async with q.iterator() as it:
            async for m in it:
                eq((m.body, m.redelivered), (b"b", False), "next")
                await m.reject(requeue=True)
                break
        m = await q.get()
        eq((m.body, m.redelivered), (b"b", True), "cancelled consumer's reject requeued")
        await m.ack()
        eq(await drain(q), [], "left")


@scenario("fanout")
async def s_fanout() -> None:
    async with await aio_pika.connect(ENV.url) as conn:
        ch = await conn.channel()
        x = await ch.declare_exchange(name("fan"), ExchangeType.FANOUT, auto_delete=True)
        qs = [await ch.declare_queue("", exclusive=True) for _ in range(3)]
        for q in qs:
            await q.bind(x)
        await x.publish(Message(b"all"), "")
        await asyncio.sleep(0.1)
        for q in qs:
            eq(await drain(q), [b"all"], q.name)


@scenario("topic")
async def s_topic() -> None:
    async with await aio_pika.connect(ENV.url) as conn:
        ch = await conn.channel()
        x = await ch.declare_exchange(name("topic"), ExchangeType.TOPIC, auto_delete=True)
        qa = await ch.declare_queue("", exclusive=True)
        qb = await ch.declare_queue("", exclusive=True)
        await qa.bind(x, "stock.*.nyse")
        await qb.bind(x, "stock.#")
        await qb.bind(x, "#.eur")
        for rk in ("stock.ibm.nyse", "stock.sap.xetra.eur", "fx.usd.eur", "stock", "bond.x"):
            await x.publish(Message(rk.encode()), rk)
        await asyncio.sleep(0.1)
        eq(await drain(qa), [b"stock.ibm.nyse"], "stock.*.nyse")
        eq(await drain(qb), [b"stock.ibm.nyse", b"stock.sap.xetra.eur", b"fx.usd.eur", b"stock"],
           "stock.# + #.eur")


@scenario("tx")
async def s_tx() -> None:
    async with await aio_pika.connect(ENV.url) as conn:
        ch = await conn.channel(publisher_confirms=False)
        q = await ch.declare_queue("", exclusive=True)
        tx = ch.transaction()
        await tx.select()
        await ch.default_exchange.publish(Message(b"rb"), q.name)
        await tx.rollback()
        await ch.default_exchange.publish(Message(b"c1"), q.name)
        await tx.commit()
        m = await q.get()
        await m.ack()
        await tx.commit()
        eq(await drain(q), [], "after commit")
        async with ch.transaction():
            await ch.default_exchange.publish(Message(b"c2"), q.name)
        eq(await drain(q), [b"c2"], "context-manager tx")


@scenario("close")
async def s_close() -> None:
    conn = await aio_pika.connect(ENV.url)
    ch = await conn.channel()
    await ch.close()
    check(ch.is_closed, "channel closed")
    ch = await conn.channel()
    try:
        await ch.declare_exchange("amq.reserved-name", ExchangeType.DIRECT)
        raise AssertionError("declared an amq.* exchange")
    except aiormq.exceptions.ChannelAccessRefused:
        pass
    ch = await conn.channel()
    await ch.declare_queue("", exclusive=True)
    await conn.close()
    check(conn.is_closed, "connection closed")


@scenario("reconnect", timeout=40)
async def s_reconnect() -> None:
    await asyncio.get_running_loop().run_in_executor(None, control, "ping")  # or SKIP
    conn = await aio_pika.connect_robust(ENV.url, reconnect_interval=0.5)
    try:
        reconnected = asyncio.Event()
        conn.reconnect_callbacks.add(lambda *a: reconnected.set())
        ch = await conn.channel(publisher_confirms=True)
        await ch.set_qos(prefetch_count=10)
        x = await ch.declare_exchange(name("robust.x"), ExchangeType.TOPIC, auto_delete=False)
        q = await ch.declare_queue(name("robust.q"), auto_delete=False)
        await q.bind(x, "r.#")
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            await got.put(m.body)
            await m.ack()

        await q.consume(on_message)
        await x.publish(Message(b"before"), "r.1")
        eq(await asyncio.wait_for(got.get(), 5), b"before", "before restart")
        await asyncio.get_running_loop().run_in_executor(None, control, "restart 1")
        await asyncio.wait_for(reconnected.wait(), 20)
        # the exchange, queue, binding, qos and consumer were redeclared by the robust channel
        for attempt in range(50):
            try:
                await x.publish(Message(b"after"), "r.2")
                break
            except Exception:  # noqa: BLE001 - channel still recovering
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)
        eq(await asyncio.wait_for(got.get(), 10), b"after", "after restart")
        await q.delete(if_unused=False, if_empty=False)
        await x.delete()
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(run_async_scenarios())
