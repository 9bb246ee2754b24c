"""AMQP semantics through aio-pika (broker on the test's event loop).

Complements tests/test_basic_aiopika.py and tests/test_semantics_pika.py.  Every
expectation was checked against RabbitMQ 3.10:
``LEVERET_REFERENCE_URL=amqp://guest:guest@127.0.0.1:5672/`` runs these tests against a
real RabbitMQ instead (checks of Leveret's internals are skipped then; see tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import aiormq
import pytest
from aio_pika import ExchangeType, Message
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiormq.exceptions import (
    ChannelAccessRefused,
    ChannelLockedResource,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
)

from leveret.broker import Broker
from tests.helpers import ready_count
from tests.polling import async_wait_until
from tests.reference import REFERENCE, leveret_only

Connect = Callable[[], Awaitable[AbstractRobustConnection]]


@pytest.fixture
def target_url(request: pytest.FixtureRequest) -> str:
    if REFERENCE:
        return REFERENCE
    return request.getfixturevalue("url")


@pytest.fixture
async def connect(target_url: str) -> AsyncIterator[Connect]:
    conns: list[AbstractRobustConnection] = []

    async def _connect() -> AbstractRobustConnection:
        conns.append(await aio_pika.connect(target_url))
        return conns[-1]

    yield _connect
    for c in conns:
        if not c.is_closed:
            await c.close()


@pytest.fixture
async def conn(connect: Connect) -> AbstractRobustConnection:
    return await connect()


def unique(prefix: str) -> str:
    return f"test-{prefix}-{uuid.uuid4().hex[:10]}"


async def noop(message: AbstractIncomingMessage) -> None:
    pass


def collect(into: list[AbstractIncomingMessage]) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    async def on_message(message: AbstractIncomingMessage) -> None:
        into.append(message)

    return on_message


async def drain(q: aio_pika.abc.AbstractQueue) -> list[bytes]:
    out = []
    while (m := await q.get(no_ack=True, fail=False)) is not None:
        out.append(m.body)
    return out


# ---------------------------------------------------------------------- queues


async def test_exclusive_queue_deleted_with_its_connection(connect: Connect, request: pytest.FixtureRequest) -> None:
    owner, other = await connect(), await connect()
    q = await (await owner.channel()).declare_queue("", exclusive=True)
    och = await other.channel()
    with pytest.raises(ChannelLockedResource):
        await (await other.channel()).declare_queue(q.name, passive=True)
    with pytest.raises(ChannelLockedResource) as ei:
        await (await (await other.channel()).get_queue(q.name, ensure=False)).consume(noop)
    assert f"cannot obtain exclusive access to locked queue '{q.name}'" in str(ei.value)
    await owner.close()
    with pytest.raises(ChannelNotFoundEntity):
        await och.declare_queue(q.name, passive=True)
    if not REFERENCE:
        broker: Broker = request.getfixturevalue("broker")
        assert q.name not in broker.vhosts["/"].queues
        await async_wait_until(lambda: len(broker.connections) == 1)


async def test_auto_delete_queue_and_declare_counts(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel(publisher_confirms=True)
    name = unique("auto")
    q = await ch.declare_queue(name, auto_delete=True)
    for i in range(5):
        await ch.default_exchange.publish(Message(b"%d" % i), name)
    await ch.set_qos(prefetch_count=2)
    got: list[AbstractIncomingMessage] = []
    tag1 = await q.consume(collect(got))
    tag2 = await q.consume(noop)
    await async_wait_until(lambda: len(got) == 2)
    declared = await ch.declare_queue(name, auto_delete=True)  # redeclare: counts
    assert declared.declaration_result.consumer_count == 2
    assert declared.declaration_result.message_count == 1  # 5 - 2 - 2 unacked
    await q.cancel(tag1)
    assert (await ch.declare_queue(name, passive=True)).declaration_result.consumer_count == 1
    await q.cancel(tag2)
    with pytest.raises(ChannelNotFoundEntity):
        await (await conn.channel()).declare_queue(name, passive=True)


async def test_queue_delete_if_unused_if_empty(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel(publisher_confirms=True)
    q = await ch.declare_queue("", exclusive=True)
    await ch.default_exchange.publish(Message(b"x"), q.name)
    with pytest.raises(ChannelPreconditionFailed) as ei:
        await (await conn.channel()).queue_delete(q.name, if_empty=True)
    assert str(ei.value).endswith("not empty")
    ch2 = await conn.channel()
    await (await ch2.get_queue(q.name, ensure=False)).consume(noop, no_ack=True)
    with pytest.raises(ChannelPreconditionFailed) as ei:
        await (await conn.channel()).queue_delete(q.name, if_unused=True)
    assert str(ei.value).endswith("in use")
    result = await ch.queue_delete(q.name)
    assert result.message_count == 0  # the consumer had taken it
    assert (await ch.queue_delete(unique("missing"))).message_count == 0


async def test_purge_returns_the_count(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel(publisher_confirms=True)
    q = await ch.declare_queue("", exclusive=True)
    for i in range(7):
        await ch.default_exchange.publish(Message(b"%d" % i), q.name)
    held = await q.get()  # unacked: not purged
    assert (await q.purge()).message_count == 6
    await held.nack(requeue=True)
    assert await drain(q) == [b"0"]


# ---------------------------------------------------------------------- exchanges


async def test_exchange_passive_delete_and_e2e(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel(publisher_confirms=True)
    src, dst = unique("src"), unique("dst")
    x_src = await ch.declare_exchange(src, ExchangeType.FANOUT)
    x_dst = await ch.declare_exchange(dst, ExchangeType.HEADERS, auto_delete=True)
    await ch.declare_exchange(src, ExchangeType.FANOUT, passive=True)
    q = await ch.declare_queue("", exclusive=True)
    await q.bind(x_dst, arguments={"x-match": "any", "kind": "a"})
    await x_dst.bind(x_src)
    await x_src.publish(Message(b"a", headers={"kind": "a"}), "")
    await x_src.publish(Message(b"b", headers={"kind": "b"}), "")
    assert await drain(q) == [b"a"]
    with pytest.raises(ChannelPreconditionFailed):
        await (await conn.channel()).exchange_delete(src, if_unused=True)
    await x_dst.unbind(x_src)
    await x_src.delete(if_unused=True)
    with pytest.raises(ChannelNotFoundEntity):
        await (await conn.channel()).declare_exchange(src, passive=True)


async def test_alternate_exchange_chain(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
    ae, main = unique("ae"), unique("main")
    x_ae = await ch.declare_exchange(ae, ExchangeType.TOPIC, auto_delete=True)
    x_main = await ch.declare_exchange(main, ExchangeType.DIRECT, auto_delete=True, arguments={"alternate-exchange": ae})
    q_ae = await ch.declare_queue("", exclusive=True)
    await q_ae.bind(x_ae, "only.#")
    await x_main.publish(Message(b"to-ae"), "only.this", mandatory=True)
    with pytest.raises(aio_pika.exceptions.DeliveryError) as ei:  # neither main nor the AE route it
        await x_main.publish(Message(b"lost"), "other", mandatory=True)
    assert ei.value.frame.reply_code == 312
    assert await drain(q_ae) == [b"to-ae"]


async def test_unknown_exchange_type_is_a_connection_error(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel()
    with pytest.raises(aiormq.exceptions.ConnectionCommandInvalid) as ei:
        await ch.declare_exchange(unique("x"), "x-no-such-type")
    assert "unknown exchange type 'x-no-such-type'" in str(ei.value)


# ---------------------------------------------------------------------- consumers


async def test_server_sent_cancel_when_queue_deleted(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel()
    name = unique("doomed")
    q = await ch.declare_queue(name)
    cancelled: list[str] = []
    (await ch.get_underlay_channel()).on_consumer_cancel_callbacks.add(
        lambda frame: cancelled.append(frame.consumer_tag)
    )
    tag = await q.consume(noop)
    await (await conn.channel()).queue_delete(name)
    await async_wait_until(lambda: cancelled == [tag])
    assert not ch.is_closed
    await ch.declare_queue("", exclusive=True)  # the channel still works


async def test_exclusive_consumer(connect: Connect) -> None:
    a, b = await connect(), await connect()
    ca = await a.channel()
    name = unique("excl-consume")
    q = await ca.declare_queue(name, auto_delete=True)
    ok = await (await ca.get_underlay_channel()).basic_consume(name, noop, exclusive=True)
    with pytest.raises(ChannelAccessRefused) as ei:
        await (await (await b.channel()).get_queue(name, ensure=False)).consume(noop)
    assert f"queue '{name}' in vhost '/' in exclusive use" in str(ei.value)
    await (await ca.get_underlay_channel()).basic_cancel(ok.consumer_tag)
    await q.delete()


async def test_nack_multiple_requeue_and_redelivered_flag(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel(publisher_confirms=True)
    q = await ch.declare_queue("", exclusive=True)
    for i in range(4):
        await ch.default_exchange.publish(Message(b"%d" % i), q.name)
    c = await conn.channel()
    await c.set_qos(prefetch_count=4)
    got: list[AbstractIncomingMessage] = []
    await (await c.get_queue(q.name, ensure=False)).consume(collect(got))
    await async_wait_until(lambda: len(got) == 4)
    assert not any(m.redelivered for m in got)
    await got[2].nack(multiple=True, requeue=True)  # 0, 1, 2 back, in order
    await async_wait_until(lambda: len(got) == 7)
    assert [(m.body, m.redelivered) for m in got[4:]] == [(b"0", True), (b"1", True), (b"2", True)]
    await got[4].reject(requeue=False)
    await got[6].ack(multiple=True)  # 3, 1 (5), 2 (6)
    await c.close()
    assert await ready_count(ch, q.name) == 0


async def test_global_qos_shared_by_consumers(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel(publisher_confirms=True)
    queues = [await ch.declare_queue("", exclusive=True) for _ in range(2)]
    for q in queues:
        for i in range(5):
            await ch.default_exchange.publish(Message(b"%d" % i), q.name)
    c = await conn.channel()
    await c.set_qos(prefetch_count=3, global_=True)
    got: list[AbstractIncomingMessage] = []
    for q in queues:
        await (await c.get_queue(q.name, ensure=False)).consume(collect(got))
    await async_wait_until(lambda: len(got) == 3)
    await asyncio.sleep(0.1)
    assert len(got) == 3
    await got[0].ack()
    await async_wait_until(lambda: len(got) == 4)
    await asyncio.sleep(0.1)
    assert len(got) == 4


async def test_recover_and_requeue_on_channel_close(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel(publisher_confirms=True)
    q = await ch.declare_queue("", exclusive=True)
    for i in range(3):
        await ch.default_exchange.publish(Message(b"%d" % i), q.name)
    c = await conn.channel()
    got: list[AbstractIncomingMessage] = []
    await (await c.get_queue(q.name, ensure=False)).consume(collect(got))
    await async_wait_until(lambda: len(got) == 3)
    await got[1].ack()
    await (await c.get_underlay_channel()).basic_recover(requeue=True)
    await async_wait_until(lambda: len(got) == 5)
    assert [(m.body, m.redelivered) for m in got[3:]] == [(b"0", True), (b"2", True)]
    await c.close()
    assert await drain(q) == [b"0", b"2"]


async def test_get_message_count(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel(publisher_confirms=True)
    q = await ch.declare_queue("", exclusive=True)
    assert await q.get(fail=False) is None
    for i in range(3):
        await ch.default_exchange.publish(Message(b"%d" % i), q.name)
    counts = [(await q.get(no_ack=True)).message_count for _ in range(3)]
    assert counts == [2, 1, 0]


# ---------------------------------------------------------------------- confirms and tx


async def test_many_concurrent_publishes_all_confirmed(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel(publisher_confirms=True)
    q = await ch.declare_queue("", exclusive=True)
    n = 500
    results = await asyncio.gather(*(ch.default_exchange.publish(Message(b"%d" % i), q.name) for i in range(n)))
    assert all(isinstance(r, aiormq.spec.Basic.Ack) for r in results)
    assert await ready_count(ch, q.name) == n
    bodies = await drain(q)
    assert bodies == [b"%d" % i for i in range(n)]


async def test_transaction_commit_and_rollback(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel(publisher_confirms=False)
    q = await ch.declare_queue("", exclusive=True)
    tx = ch.transaction()
    await tx.select()
    await ch.default_exchange.publish(Message(b"rolled back"), q.name)
    await tx.rollback()
    await ch.default_exchange.publish(Message(b"kept"), q.name)
    assert await ready_count(ch, q.name) == 0
    await tx.commit()
    msg = await q.get()
    assert msg.body == b"kept"
    await msg.ack()
    await tx.rollback()  # the ack is undone: the message is unacked again
    await ch.close()
    ch2 = await conn.channel()
    again = await (await ch2.get_queue(q.name, ensure=False)).get(no_ack=True)
    assert again.body == b"kept" and again.redelivered


async def test_tx_commit_without_select_406(conn: AbstractRobustConnection) -> None:
    ch = await conn.channel()
    with pytest.raises(ChannelPreconditionFailed) as ei:
        await (await ch.get_underlay_channel()).tx_commit()
    assert "channel is not transactional" in str(ei.value)


# ---------------------------------------------------------------------- bodies


@pytest.mark.parametrize("size", [1 << 20, 20 << 20], ids=["1MiB", "20MiB"])
async def test_large_body_consumed(conn: AbstractRobustConnection, size: int) -> None:
    ch = await conn.channel(publisher_confirms=True)
    q = await ch.declare_queue("", exclusive=True)
    body = os.urandom(1 << 16) * (size >> 16)
    await ch.default_exchange.publish(Message(body, headers={"n": size}), q.name)
    received: list[AbstractIncomingMessage] = []
    await q.consume(collect(received), no_ack=True)
    await async_wait_until(lambda: bool(received), 10)
    msg = received[0]
    assert len(msg.body) == size and msg.body == body and msg.headers == {"n": size}


# ---------------------------------------------------------------------- connection close


async def test_client_close_requeues_unacked(connect: Connect, request: pytest.FixtureRequest) -> None:
    keeper, worker = await connect(), await connect()
    kch = await keeper.channel(publisher_confirms=True)
    name = unique("requeue")
    await kch.declare_queue(name)
    for i in range(3):
        await kch.default_exchange.publish(Message(b"%d" % i), name)
    wch = await worker.channel()
    got: list[AbstractIncomingMessage] = []
    await (await wch.get_queue(name, ensure=False)).consume(collect(got))
    await async_wait_until(lambda: len(got) == 3)
    await got[0].ack()
    await worker.close()

    async def requeued() -> bool:
        return await ready_count(kch, name) == 2

    await async_wait_until(requeued)
    q = await kch.declare_queue(name, passive=True)
    assert [(m.body, m.redelivered) for m in [await q.get(no_ack=True) for _ in range(2)]] == [
        (b"1", True), (b"2", True)]
    await q.delete()
    if not REFERENCE:
        broker: Broker = request.getfixturevalue("broker")
        await async_wait_until(lambda: len(broker.connections) == 1)


@leveret_only
async def test_broker_stop_closes_clients_with_320(broker: Broker, url: str) -> None:
    conn = await aio_pika.connect(url)
    await conn.channel()
    closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    conn.close_callbacks.add(lambda sender, exc: closed.done() or closed.set_result(exc))
    await broker.stop()
    exc = await asyncio.wait_for(closed, 5)
    assert isinstance(exc, aiormq.exceptions.ConnectionClosed)
    assert exc.args == (320, "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'")
    assert not conn.connected.is_set()
    assert not broker.connections
