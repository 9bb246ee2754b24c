"""End-to-end basics through aio-pika."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from aio_pika import ExchangeType, Message
from aio_pika.exceptions import ChannelClosed, ChannelNotFoundEntity


async def test_publish_get_roundtrip_preserves_properties(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue("", exclusive=True)
        assert q.name.startswith("amq.gen-") and len(q.name) == len("amq.gen-") + 22
        msg = Message(
            b"hello",
            headers={"a": 1, "b": "two", "c": [1, 2], "d": {"x": True}},
            content_type="text/plain",
            content_encoding="utf-8",
            correlation_id="cid",
            reply_to="rq",
            message_id="mid",
            type="t",
            app_id="app",
            priority=3,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await ch.default_exchange.publish(msg, q.name)
        got = await q.get(timeout=2)
        assert got.body == b"hello"
        assert got.headers == {"a": 1, "b": "two", "c": [1, 2], "d": {"x": True}}
        assert (got.content_type, got.content_encoding, got.correlation_id) == ("text/plain", "utf-8", "cid")
        assert (got.reply_to, got.message_id, got.type, got.app_id, got.priority) == ("rq", "mid", "t", "app", 3)
        assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert got.routing_key == q.name and got.exchange == "" and not got.redelivered
        await got.ack()


async def test_large_body_split_into_frames(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue("", exclusive=True)
        body = bytes(range(256)) * 20000  # 5 MB, many frames both ways
        await ch.default_exchange.publish(Message(body), q.name)
        got = await q.get(timeout=5)
        assert got.body == body
        await got.ack()


@pytest.mark.parametrize("xtype,key,matches,misses", [
    (ExchangeType.DIRECT, "k", ["k"], ["k2", ""]),
    (ExchangeType.FANOUT, "ignored", ["any", ""], []),
    (ExchangeType.TOPIC, "a.*.c.#", ["a.b.c", "a.x.c.d.e"], ["a.c", "a.b.d", "b.b.c"]),
    (ExchangeType.TOPIC, "#", ["", "x", "x.y.z"], []),
    (ExchangeType.TOPIC, "*.#.z", ["a.z", "a.b.c.z"], ["z", "a.b"]),
])
async def test_exchange_routing(url: str, xtype: ExchangeType, key: str, matches: list[str], misses: list[str]) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        x = await ch.declare_exchange(f"x-{xtype.value}", xtype, auto_delete=True)
        q = await ch.declare_queue("", exclusive=True)
        await q.bind(x, key)
        for rk in matches + misses:
            await x.publish(Message(rk.encode()), rk)
        await asyncio.sleep(0.05)
        got = []
        while True:
            m = await q.get(fail=False, no_ack=True)
            if m is None:
                break
            got.append(m.body.decode())
        assert got == matches


async def test_headers_exchange_all_any(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        x = await ch.declare_exchange("hx", ExchangeType.HEADERS, auto_delete=True)
        q_all = await ch.declare_queue("", exclusive=True)
        q_any = await ch.declare_queue("", exclusive=True)
        await q_all.bind(x, arguments={"x-match": "all", "a": 1, "b": "x"})
        await q_any.bind(x, arguments={"x-match": "any", "a": 1, "b": "x"})
        await x.publish(Message(b"both", headers={"a": 1, "b": "x"}), "")
        await x.publish(Message(b"one", headers={"a": 1}), "")
        await x.publish(Message(b"bool", headers={"a": True}), "")  # true != 1
        await x.publish(Message(b"none"), "")
        await asyncio.sleep(0.05)

        async def drain(q: aio_pika.abc.AbstractQueue) -> list[bytes]:
            out = []
            while (m := await q.get(fail=False, no_ack=True)) is not None:
                out.append(m.body)
            return out

        assert await drain(q_all) == [b"both"]
        assert await drain(q_any) == [b"both", b"one"]


async def test_consume_ack_prefetch_and_round_robin(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=2)
        q = await ch.declare_queue("rr", auto_delete=True)
        seen: dict[str, list[int]] = {"a": [], "b": []}
        done = asyncio.Event()

        def make(name: str):
            async def on_msg(m: aio_pika.abc.AbstractIncomingMessage) -> None:
                seen[name].append(int(m.body))
                await m.ack()
                if len(seen["a"]) + len(seen["b"]) == 20:
                    done.set()
            return on_msg

        await q.consume(make("a"), consumer_tag="a")
        await q.consume(make("b"), consumer_tag="b")
        for i in range(20):
            await ch.default_exchange.publish(Message(str(i).encode()), "rr")
        await asyncio.wait_for(done.wait(), 5)
        assert sorted(seen["a"] + seen["b"]) == list(range(20))
        assert len(seen["a"]) == 10 and len(seen["b"]) == 10


async def test_passive_declare_missing_queue_closes_channel_404(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        with pytest.raises(ChannelNotFoundEntity) as ei:
            await ch.declare_queue("missing", passive=True)
        assert "NOT_FOUND - no queue 'missing' in vhost '/'" in str(ei.value)
        # the connection survives; a new channel works
        ch2 = await conn.channel()
        await ch2.declare_queue("", exclusive=True)


async def test_confirms_and_mandatory_return(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        q = await ch.declare_queue("", exclusive=True)
        for i in range(50):
            ack = await ch.default_exchange.publish(Message(b"%d" % i), q.name)
            assert ack is not None
        with pytest.raises(aio_pika.exceptions.DeliveryError) as ei:
            await ch.default_exchange.publish(Message(b"lost"), "no-such-queue", mandatory=True)
        assert ei.value.message.body == b"lost"
        d = await ch.declare_queue(q.name, passive=True)
        assert d.declaration_result.message_count == 50


async def test_exchange_declare_inequivalent_406(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        await ch.declare_exchange("eq", ExchangeType.DIRECT, auto_delete=True)
        with pytest.raises(ChannelClosed) as ei:
            await ch.declare_exchange("eq", ExchangeType.FANOUT, auto_delete=True)
        assert ei.value.args[0] == 406 or "406" in str(ei.value) or "PRECONDITION_FAILED" in str(ei.value)
