"""FastStream's RabbitBroker (aio-pika connect_robust underneath) through Leveret.

broker.request() is FastStream's RPC: it publishes with reply_to=amq.rabbitmq.reply-to
and consumes the answer from that pseudo-queue (RabbitMQ's direct reply-to).
"""

from __future__ import annotations

import asyncio
import logging

from faststream import AckPolicy
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitMessage, RabbitQueue
from interop_common import check, control, eq, run_async_scenarios, scenario
from interop_common import env as ENV

P = ENV.prefix
broker = RabbitBroker(ENV.url, reconnect_interval=0.5, log_level=logging.WARNING)

inbox: dict[str, list] = {}


def got(key: str, item: object) -> None:
    inbox.setdefault(key, []).append(item)


async def wait_for(key: str, n: int = 1, timeout: float = 10.0) -> list:
    for _ in range(int(timeout / 0.02)):
        if len(inbox.get(key, [])) >= n:
            return inbox[key]
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{key}: {len(inbox.get(key, []))} of {n} messages")


def q(name: str, **kw) -> RabbitQueue:
    return RabbitQueue(f"{P}.{name}", auto_delete=True, **kw)


topic_x = RabbitExchange(f"{P}.events", type=ExchangeType.TOPIC, auto_delete=True)
fan_x = RabbitExchange(f"{P}.broadcast", type=ExchangeType.FANOUT, auto_delete=True)


@broker.subscriber(q("orders"))
async def on_order(body: dict) -> None:
    got("orders", body)


@broker.subscriber(q("eu", routing_key="order.eu.*"), topic_x)
async def on_eu(body: str, msg: RabbitMessage) -> None:
    got("eu", (body, msg.raw_message.routing_key))


@broker.subscriber(q("fan1"), fan_x)
async def on_fan1(body: str) -> None:
    got("fan", ("1", body))


@broker.subscriber(q("fan2"), fan_x)
async def on_fan2(body: str) -> None:
    got("fan", ("2", body))


@broker.subscriber(q("rpc"))
async def on_rpc(body: dict) -> dict:
    return {"double": body["x"] * 2}


@broker.subscriber(q("flaky"), ack_policy=AckPolicy.NACK_ON_ERROR)
async def on_flaky(body: str, msg: RabbitMessage) -> None:
    got("flaky", msg.raw_message.redelivered)
    if not msg.raw_message.redelivered:
        raise RuntimeError("first delivery fails: nack(requeue=True)")


@broker.subscriber(q("manual"), ack_policy=AckPolicy.MANUAL)
async def on_manual(body: str, msg: RabbitMessage) -> None:
    got("manual", body)
    if body == "reject":
        await msg.reject()
    else:
        await msg.ack()


@scenario("publish_subscribe")
async def s_publish_subscribe() -> None:
    await broker.start()
    for i in range(5):
        await broker.publish({"id": i}, queue=f"{P}.orders")
    eq(await wait_for("orders", 5), [{"id": i} for i in range(5)], "received")


@scenario("topic_fanout")
async def s_topic_fanout() -> None:
    for rk in ("order.eu.fr", "order.us.ny", "order.eu.de.x"):
        await broker.publish(rk, exchange=topic_x, routing_key=rk)
    await broker.publish("all", exchange=fan_x)
    eq(sorted(await wait_for("fan", 2)), [("1", "all"), ("2", "all")], "fanout")
    await asyncio.sleep(0.1)
    eq(inbox["eu"], [("order.eu.fr", "order.eu.fr")], "topic order.eu.*")


@scenario("request_reply")
async def s_request_reply() -> None:
    resp = await broker.request({"x": 21}, queue=f"{P}.rpc", timeout=5)
    eq(await resp.decode(), {"double": 42}, "reply")


@scenario("ack_nack")
async def s_ack_nack() -> None:
    await broker.publish("boom", queue=f"{P}.flaky")
    eq(await wait_for("flaky", 2), [False, True], "nack(requeue) then redelivered")
    await broker.publish("reject", queue=f"{P}.manual")
    await broker.publish("ok", queue=f"{P}.manual")
    eq(await wait_for("manual", 2), ["reject", "ok"], "manual ack/reject")
    await asyncio.sleep(0.1)
    eq(len(inbox["manual"]), 2, "rejected message came back")


@scenario("reconnect", timeout=60)
async def s_reconnect() -> None:
    await asyncio.get_running_loop().run_in_executor(None, control, "restart 1")
    # the queue is auto-delete: the restart removed it, and the publisher's connection
    # may be back before the subscriber has declared it again (then the message is
    # unroutable and dropped, with RabbitMQ too): publish until it arrives
    for attempt in range(60):
        try:
            await broker.publish({"id": "after"}, queue=f"{P}.orders")
        except Exception:  # noqa: BLE001 - still reconnecting
            if attempt == 59:
                raise
        await asyncio.sleep(0.5)
        if {"id": "after"} in inbox.get("orders", []):
            break
    items = await wait_for("orders", 6, timeout=30)
    check({"id": "after"} in items, f"message after the restart: {items}")


async def main() -> None:
    try:
        await run_async_scenarios()
    finally:
        await broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
