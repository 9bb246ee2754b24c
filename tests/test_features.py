"""RabbitMQ queue features (issue 4) end to end through aio-pika."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import aio_pika
import pytest
from aio_pika import ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractQueue
from aio_pika.exceptions import ChannelPreconditionFailed
from pamqp import commands as C
from pamqp.commands import Basic

from tests.polling import async_wait_until
from tests.rawamqp import RawClient, get_raw, header_table, longstr_array, publish_raw_headers


async def drain(q: AbstractQueue) -> list[aio_pika.abc.AbstractIncomingMessage]:
    out = []
    while (m := await q.get(fail=False, no_ack=True)) is not None:
        out.append(m)
    return out


async def bodies(q: AbstractQueue) -> list[bytes]:
    return [m.body for m in await drain(q)]


async def dlx_setup(ch: AbstractChannel, name: str = "dlx") -> AbstractQueue:
    x = await ch.declare_exchange(name, ExchangeType.FANOUT, auto_delete=True)
    dq = await ch.declare_queue("", exclusive=True)
    await dq.bind(x)
    return dq


# 1. TTL ----------------------------------------------------------------------------


async def test_queue_ttl_expires_head_without_consumer_and_dead_letters(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        dq = await dlx_setup(ch)
        q = await ch.declare_queue("", exclusive=True, arguments={"x-message-ttl": 400, "x-dead-letter-exchange": "dlx"})
        await ch.default_exchange.publish(Message(b"a"), q.name)
        assert (await ch.declare_queue(q.name, passive=True)).declaration_result.message_count == 1
        await asyncio.sleep(0.7)
        # expired by the broker's timer, not only on access
        got = await drain(dq)
        assert [m.body for m in got] == [b"a"]
        death = got[0].headers["x-death"][0]
        assert death["reason"] == "expired" and death["queue"] == q.name and death["count"] == 1
        assert await q.get(fail=False) is None


async def test_per_message_ttl_and_original_expiration(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        dq = await dlx_setup(ch)
        q = await ch.declare_queue("", exclusive=True, arguments={"x-dead-letter-exchange": "dlx"})
        await ch.channel.basic_publish(b"short", routing_key=q.name, properties=Basic.Properties(expiration="50"))
        await ch.channel.basic_publish(b"long", routing_key=q.name, properties=Basic.Properties(expiration="60000"))
        await asyncio.sleep(0.2)
        got = await drain(dq)
        assert [m.body for m in got] == [b"short"]
        assert got[0].headers["x-death"][0]["original-expiration"] == "50"
        assert got[0].expiration is None
        assert await bodies(q) == [b"long"]


@pytest.mark.parametrize("exp,text", [
    ("abc", "invalid expiration 'abc': no_integer"),
    ("-1", "invalid expiration '-1': {value_negative,-1}"),
    ("1.5", "invalid expiration '1.5': {leftover_string,\".5\"}"),
])
async def test_invalid_expiration_rejected(url: str, exp: str, text: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue("", exclusive=True)
        with pytest.raises(ChannelPreconditionFailed) as ei:
            await ch.channel.basic_publish(b"x", routing_key=q.name, properties=Basic.Properties(expiration=exp))
            await ch.declare_queue("", exclusive=True)
        assert text in str(ei.value)


async def test_ttl_zero_delivered_only_to_ready_consumer(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue("", exclusive=True, arguments={"x-message-ttl": 0})
        await ch.default_exchange.publish(Message(b"nobody"), q.name)
        await asyncio.sleep(0.05)
        assert await q.get(fail=False) is None
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def cb(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            await got.put(m.body)

        await q.consume(cb, no_ack=True)
        await ch.default_exchange.publish(Message(b"taken"), q.name)
        assert await asyncio.wait_for(got.get(), 2) == b"taken"


async def test_queue_expires_unused(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        await ch.declare_queue("exp-q", arguments={"x-expires": 500})
        await asyncio.sleep(0.3)
        await ch.declare_queue("exp-q", arguments={"x-expires": 500})  # redeclare resets the clock
        await asyncio.sleep(0.3)
        await ch.declare_queue("exp-q", passive=True)  # 0.6 s after the first declare
        await asyncio.sleep(0.8)
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await ch.declare_queue("exp-q", passive=True)


# 2. length limits ----------------------------------------------------------------------


async def test_max_length_drop_head_dead_letters_maxlen(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        dq = await dlx_setup(ch)
        q = await ch.declare_queue("", exclusive=True, arguments={"x-max-length": 2, "x-dead-letter-exchange": "dlx"})
        for b in (b"1", b"2", b"3", b"4"):
            await ch.default_exchange.publish(Message(b), q.name)
        await asyncio.sleep(0.05)
        assert await bodies(q) == [b"3", b"4"]
        got = await drain(dq)
        assert [m.body for m in got] == [b"1", b"2"]
        assert got[0].headers["x-death"][0]["reason"] == "maxlen"


async def test_max_length_bytes(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue("", exclusive=True, arguments={"x-max-length-bytes": 10})
        for b in (b"aaaa", b"bbbb", b"cccc"):
            await ch.default_exchange.publish(Message(b), q.name)
        await asyncio.sleep(0.05)
        assert await bodies(q) == [b"bbbb", b"cccc"]


async def test_reject_publish_nacks_in_confirm_mode(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel(publisher_confirms=True)
        q = await ch.declare_queue("", exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        await ch.default_exchange.publish(Message(b"1"), q.name)
        with pytest.raises(aio_pika.exceptions.DeliveryError):
            await ch.default_exchange.publish(Message(b"2"), q.name)
        await ch.default_exchange.publish(Message(b"3"), "no-such-queue")  # unroutable: acked
        assert await bodies(q) == [b"1"]
        await ch.default_exchange.publish(Message(b"4"), q.name)
        assert await bodies(q) == [b"4"]


async def test_reject_publish_dlx(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        dq = await dlx_setup(ch)
        q = await ch.declare_queue("", exclusive=True, arguments={
            "x-max-length": 1, "x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": "dlx"})
        await ch.default_exchange.publish(Message(b"1"), q.name)
        with pytest.raises(aio_pika.exceptions.DeliveryError):  # nacked, and dead-lettered
            await ch.default_exchange.publish(Message(b"2"), q.name)
        await asyncio.sleep(0.05)
        assert await bodies(q) == [b"1"]
        assert await bodies(dq) == [b"2"]


# 3. dead lettering ----------------------------------------------------------------------


async def test_nack_without_requeue_dead_letters_with_routing_key_and_counts(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        x = await ch.declare_exchange("dlx-direct", ExchangeType.DIRECT, auto_delete=True)
        target = await ch.declare_queue("", exclusive=True)
        await target.bind(x, "dead")
        q = await ch.declare_queue("", exclusive=True, arguments={
            "x-dead-letter-exchange": "dlx-direct", "x-dead-letter-routing-key": "dead"})
        await ch.default_exchange.publish(Message(b"m", headers={"keep": "me"}), q.name)
        m = await q.get(timeout=2)
        await m.nack(requeue=False)
        await asyncio.sleep(0.05)
        got = await target.get(timeout=2)
        assert got.body == b"m" and got.exchange == "dlx-direct" and got.routing_key == "dead"
        h = got.headers
        assert h["keep"] == "me"
        assert h["x-first-death-reason"] == "rejected" and h["x-first-death-queue"] == q.name
        assert h["x-first-death-exchange"] == ""
        d = h["x-death"][0]
        assert d["count"] == 1 and d["exchange"] == "" and d["routing-keys"] == [q.name]
        # round trip again through the same queue: count goes up, one entry per (queue, reason)
        await ch.default_exchange.publish(Message(b"m", headers=h), q.name)
        m = await q.get(timeout=2)
        await m.reject(requeue=False)
        await asyncio.sleep(0.05)
        got2 = await target.get(timeout=2)
        deaths = got2.headers["x-death"]
        assert len(deaths) == 1 and deaths[0]["count"] == 2


async def test_dead_letter_cycle_dropped_for_expiry(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        # a queue that dead-letters expired messages back to itself: RabbitMQ drops them
        await ch.declare_queue("cyc", exclusive=True, arguments={
            "x-message-ttl": 30, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "cyc"})
        await ch.default_exchange.publish(Message(b"loop"), "cyc")
        await asyncio.sleep(0.3)
        q = await ch.declare_queue("cyc", passive=True)
        assert q.declaration_result.message_count == 0


# 4. priorities ----------------------------------------------------------------------------


async def test_priority_queue_orders_by_priority_then_fifo(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue("", exclusive=True, arguments={"x-max-priority": 5})
        for body, prio in ((b"low1", 1), (b"high", 5), (b"none", 0), (b"low2", 1), (b"over", 9)):
            await ch.default_exchange.publish(Message(body, priority=prio), q.name)
        await asyncio.sleep(0.05)
        assert await bodies(q) == [b"high", b"over", b"low1", b"low2", b"none"]


@pytest.mark.parametrize("args,text", [
    ({"x-max-priority": 256}, "{max_value_exceeded,256}"),
    ({"x-max-priority": "a"}, '"expected integer, got longstr"'),
    ({"x-message-ttl": -1}, "{value_negative,-1}"),
    ({"x-expires": 0}, "{value_zero,0}"),
    ({"x-overflow": "bogus"}, "invalid_overflow"),
    ({"x-queue-type": "bogus"}, "\"unsupported queue type 'bogus'\""),
    ({"x-dead-letter-routing-key": "rk"}, "routing_key_but_no_dlx_defined"),
    ({"x-single-active-consumer": 1}, "{unacceptable_type,byte}"),
])
async def test_argument_validation_406(url: str, args: dict[str, Any], text: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        with pytest.raises(ChannelPreconditionFailed) as ei:
            await ch.declare_queue("val-q", arguments=args)
        arg = next(iter(args))
        assert f"invalid arg '{arg}' for queue 'val-q' in vhost '/': {text}" in str(ei.value)


async def test_inequivalent_arguments_406(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        await ch.declare_queue("eqv", exclusive=True, arguments={"x-max-length": 5})
        await ch.declare_queue("eqv", exclusive=True, arguments={"x-max-length": 5})  # same: fine
        with pytest.raises(ChannelPreconditionFailed) as ei:
            await ch.declare_queue("eqv", exclusive=True, arguments={"x-max-length": 6})
        assert "inequivalent arg 'x-max-length' for queue 'eqv' in vhost '/': received '6' but current is '5'" in str(ei.value)


# 5-6. single active consumer, consumer priorities -------------------------------------------


async def test_single_active_consumer_failover_keeps_order(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch1 = await conn.channel()
        ch2 = await conn.channel()
        q1 = await ch1.declare_queue("sac", exclusive=True, arguments={"x-single-active-consumer": True})
        q2 = await ch2.declare_queue("sac", passive=True)
        got: list[tuple[str, bytes]] = []

        def cb(name: str) -> Any:
            async def on(m: aio_pika.abc.AbstractIncomingMessage) -> None:
                got.append((name, m.body))
                await m.ack()
            return on

        tag1 = await q1.consume(cb("one"))
        await q2.consume(cb("two"))
        for i in range(4):
            await ch1.default_exchange.publish(Message(b"%d" % i), "sac")
        await async_wait_until(lambda: len(got) >= 4)
        await asyncio.sleep(0.05)
        assert got == [("one", b"0"), ("one", b"1"), ("one", b"2"), ("one", b"3")]
        await q1.cancel(tag1)
        for i in range(4, 6):
            await ch1.default_exchange.publish(Message(b"%d" % i), "sac")
        await async_wait_until(lambda: len(got) >= 6)
        assert got[4:] == [("two", b"4"), ("two", b"5")]


async def test_consumer_priority(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=3)
        q = await ch.declare_queue("", exclusive=True)
        got: list[str] = []

        def cb(name: str) -> Any:
            async def on(m: aio_pika.abc.AbstractIncomingMessage) -> None:
                got.append(name)  # never acked: credit runs out after 3
            return on

        await q.consume(cb("low"), arguments={"x-priority": 1})
        await q.consume(cb("high"), arguments={"x-priority": 10})
        for _ in range(5):
            await ch.default_exchange.publish(Message(b"x"), q.name)
        await async_wait_until(lambda: len(got) >= 5)
        # the high-priority consumer takes all it has credit for, the rest goes lower
        assert got == ["high"] * 3 + ["low"] * 2


# 7. direct reply-to -------------------------------------------------------------------------


async def test_direct_reply_to_rpc(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        server_ch = await conn.channel()
        client_ch = await conn.channel()
        rpc_q = await server_ch.declare_queue("", exclusive=True)

        async def serve(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            assert m.reply_to and m.reply_to.startswith("amq.rabbitmq.reply-to.")
            await server_ch.default_exchange.publish(
                Message(m.body.upper(), correlation_id=m.correlation_id), m.reply_to)
            await m.ack()

        await rpc_q.consume(serve)
        replies: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        reply_q = await client_ch.get_queue("amq.rabbitmq.reply-to", ensure=False)

        async def on_reply(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            await replies.put(m)

        await reply_q.consume(on_reply, no_ack=True)
        await client_ch.default_exchange.publish(
            Message(b"ping", reply_to="amq.rabbitmq.reply-to", correlation_id="c1"), rpc_q.name)
        r = await asyncio.wait_for(replies.get(), 2)
        assert r.body == b"PING" and r.correlation_id == "c1"


async def test_direct_reply_to_errors(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue("", exclusive=True)
        with pytest.raises(ChannelPreconditionFailed) as ei:
            await ch.default_exchange.publish(Message(b"x", reply_to="amq.rabbitmq.reply-to"), q.name)
            await ch.declare_queue("", exclusive=True)
        assert "fast reply consumer does not exist" in str(ei.value)
        ch2 = await conn.channel()
        rq = await ch2.get_queue("amq.rabbitmq.reply-to", ensure=False)
        with pytest.raises(ChannelPreconditionFailed) as ei:
            await rq.consume(lambda m: None, no_ack=False)
        assert "reply consumer cannot acknowledge" in str(ei.value)


# 8. CC / BCC ------------------------------------------------------------------------------


async def test_cc_and_bcc(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        qa = await ch.declare_queue("", exclusive=True)
        qb = await ch.declare_queue("", exclusive=True)
        qc = await ch.declare_queue("", exclusive=True)
        await ch.default_exchange.publish(
            Message(b"hi", headers={"CC": [qb.name], "BCC": [qc.name]}), qa.name)
        await asyncio.sleep(0.05)
        for q in (qa, qb, qc):
            m = await q.get(timeout=2, no_ack=True)
            assert m.body == b"hi" and m.routing_key == qa.name
            assert m.headers.get("CC") == [qb.name]
            assert "BCC" not in m.headers


# 9. x-queue-type ----------------------------------------------------------------------------


async def test_queue_type_classic_and_quorum_accepted(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        await ch.declare_queue("qt-classic", auto_delete=True, arguments={"x-queue-type": "classic"})
        q = await ch.declare_queue("qt-quorum", durable=True, arguments={"x-queue-type": "quorum"})
        await ch.default_exchange.publish(Message(b"q"), "qt-quorum")
        assert (await q.get(timeout=2, no_ack=True)).body == b"q"
        await ch.queue_delete("qt-quorum")
        with pytest.raises(ChannelPreconditionFailed) as ei:
            await ch.declare_queue("qt-quorum-ad", auto_delete=True, arguments={"x-queue-type": "quorum"})
        assert "invalid property 'auto-delete'" in str(ei.value)


async def test_dead_lettering_routes_by_the_original_bcc_keys_too(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        x = await ch.declare_exchange("dl-direct", ExchangeType.DIRECT, auto_delete=True)
        by_rk = await ch.declare_queue("", exclusive=True)
        by_bcc = await ch.declare_queue("", exclusive=True)
        src = await ch.declare_queue("", exclusive=True, arguments={"x-dead-letter-exchange": "dl-direct"})
        await by_rk.bind(x, src.name)
        await by_bcc.bind(x, "secret")
        await ch.default_exchange.publish(Message(b"m", headers={"BCC": ["secret"]}), src.name)
        m = await src.get(timeout=2)
        assert "BCC" not in m.headers
        await m.reject(requeue=False)
        await asyncio.sleep(0.05)
        got_rk = await by_rk.get(timeout=2, no_ack=True)
        got_bcc = await by_bcc.get(timeout=2, no_ack=True)
        assert got_rk.body == got_bcc.body == b"m"
        assert "BCC" not in got_bcc.headers
        assert got_bcc.headers["x-death"][0]["routing-keys"] == [src.name]


# ---------------------------------------------------------------------- overflow, TTL, direct reply-to and BCC (raw frames where the wire matters)


async def test_requeue_into_a_full_reject_publish_queue_keeps_the_message(url: str) -> None:
    # RabbitMQ only drops the head for x-overflow=drop-head; a requeued message is never
    # dropped from a reject-publish queue
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue(
            "", exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
        )
        await ch.default_exchange.publish(aio_pika.Message(b"a"), q.name)
        a = await q.get(fail=True)
        await ch.default_exchange.publish(aio_pika.Message(b"b"), q.name)
        await a.reject(requeue=True)
        got = []
        while (m := await q.get(fail=False)) is not None:
            got.append(m.body)
            await m.ack()
        assert got == [b"a", b"b"]


def test_basic_get_message_count_leaves_out_expired_messages_now_at_the_head(client: RawClient) -> None:
    q = client.declare_queue(1, exclusive=True).queue
    client.publish(1, "", q, b"long", expiration="100000")
    client.publish(1, "", q, b"short", expiration="1")
    client.publish(1, "", q, b"long2", expiration="100000")
    client.publish(1, "", q, b"short2", expiration="1")
    time.sleep(0.1)
    client.send_method(1, C.Basic.Get(queue=q, no_ack=True))
    ok = client.expect(C.Basic.GetOk, 1)
    assert client.read_content(1)[2] == b"long"
    assert ok.message_count == 2  # "short" went too; "short2" is not at the head yet
    assert client.declare_queue(1, q, passive=True).message_count == 2
    got = client.get(1, q)
    assert got is not None and got[2] == b"long2" and got[0].message_count == 0
    assert client.get(1, q) is None


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "not-passive"])
def test_declare_of_the_direct_reply_to_pseudo_queue(client: RawClient, passive: bool) -> None:
    ok = client.rpc(1, C.Queue.Declare(queue="amq.rabbitmq.reply-to", passive=passive), C.Queue.DeclareOk)
    assert (ok.queue, ok.message_count, ok.consumer_count) == ("amq.rabbitmq.reply-to", 0, 1)
    # nowait: no declare-ok
    client.send_method(1, C.Queue.Declare(queue="amq.rabbitmq.reply-to", passive=passive, nowait=True))
    client.rpc(1, C.Basic.Qos(prefetch_count=1), C.Basic.QosOk)


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "not-passive"])
def test_declare_of_an_unknown_reply_to_name_is_not_found(client: RawClient, passive: bool) -> None:
    client.send_method(1, C.Queue.Declare(queue="amq.rabbitmq.reply-to.abc", passive=passive))
    m = client.expect_channel_close(1, 404, 50, 10)
    assert m.reply_text == "NOT_FOUND - no queue 'amq.rabbitmq.reply-to.abc' in vhost '/'"


def test_bcc_removal_keeps_the_other_header_fields_as_published(client: RawClient) -> None:
    q = client.declare_queue(1, exclusive=True).queue
    table = b"\x02zz" + b"l" + struct.pack(">q", 5) + b"\x03BCC" + longstr_array(b"nowhere") + b"\x02mm" + b"I" + struct.pack(">i", 7)
    publish_raw_headers(client, q, table)
    _, raw = get_raw(client, q)
    assert header_table(raw) == [("zz", ("l", 5)), ("mm", ("I", 7))]

