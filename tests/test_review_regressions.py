"""Regression tests for bugs found in review (each failed before its fix)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest
from pamqp import commands as C
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp.heartbeat import Heartbeat

import leveret.broker.core.backing as broker_queue
from leveret.broker import Config
from leveret.testing import BrokerThread, broker_url, running_broker
from tests.rawamqp import RawClient, method_frame, publish_frames


@pytest.fixture
def durable_thread(tmp_path: Path) -> Iterator[BrokerThread]:
    with BrokerThread(Config(port=0, data_dir=str(tmp_path / "data"), fsync_interval=5.0)) as b:
        yield b


def frames_until_quiet(c: RawClient, timeout: float = 0.3) -> list[tuple[int, object]]:
    got = []
    while True:
        try:
            ch, obj = c.read_frame(timeout)
        except TimeoutError:
            return got
        if not isinstance(obj, Heartbeat):
            got.append((ch, obj))


def test_no_confirm_sent_on_a_channel_closed_while_waiting_for_fsync(durable_thread: BrokerThread) -> None:
    with RawClient.connect(durable_thread.port) as c:
        c.handshake()
        c.open_channel(1)
        c.declare_queue(1, "dq-close", durable=True)
        c.rpc(1, C.Confirm.Select(), C.Confirm.SelectOk)
        # publish a persistent message and close the channel in the same read: the
        # fsync completes after the close
        c.send(
            publish_frames(1, "", "dq-close", b"x", delivery_mode=2)
            + method_frame(1, C.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
            + method_frame(1, C.Channel.Open())
        )
        got = frames_until_quiet(c)
        kinds = [type(o) for _, o in got]
        assert kinds == [C.Channel.CloseOk, C.Channel.OpenOk], got


def test_confirm_of_persisted_publish_not_lost_after_a_later_nack(durable_thread: BrokerThread) -> None:
    with RawClient.connect(durable_thread.port) as c:
        c.handshake()
        c.open_channel(1)
        c.declare_queue(1, "dq-pers", durable=True)
        c.declare_queue(1, "full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
        c.rpc(1, C.Confirm.Select(), C.Confirm.SelectOk)
        # seq 1 waits for fsync, seq 2 is refused (nack) in the same read
        c.send(publish_frames(1, "", "dq-pers", b"a", delivery_mode=2) + publish_frames(1, "", "full", b"b"))
        got = frames_until_quiet(c, 1.0)
        acked: set[int] = set()
        nacked: set[int] = set()
        for _, o in got:
            if isinstance(o, C.Basic.Ack):
                acked |= set(range(1, o.delivery_tag + 1)) if o.multiple else {o.delivery_tag}
            elif isinstance(o, C.Basic.Nack):
                nacked.add(o.delivery_tag)
        assert nacked == {2}, got
        assert 1 in acked, got


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


def test_channel_close_while_content_expected_is_unexpected_frame(broker_thread: BrokerThread) -> None:
    # RabbitMQ 3.10: a channel.close in the middle of a publish's content is a 505
    with RawClient.connect(broker_thread.port) as c:
        c.handshake()
        c.open_channel(1)
        c.send(
            method_frame(1, C.Basic.Publish(exchange="", routing_key="x"))
            + pframe.marshal(pheader.ContentHeader(0, 10, C.Basic.Properties()), 1)
            + method_frame(1, C.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        )
        c.expect_connection_close(505, 60, 40)


async def test_paged_out_messages_expire_and_dead_letter_on_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a durable TTL queue beyond PAGE_MAX: the expiry timer must go on past the
    # messages held in RAM, into the paged-out tail
    monkeypatch.setattr(broker_queue, "PAGE_MAX", 5)
    monkeypatch.setattr(broker_queue, "FLOW_LEN", 4)
    monkeypatch.setattr(broker_queue, "PAGE_BATCH", 3)
    async with running_broker(Config(port=0, data_dir=str(tmp_path / "d"))) as b:
        async with await aio_pika.connect(broker_url(b)) as conn:
            ch = await conn.channel(publisher_confirms=True)
            dlq = await ch.declare_queue("ttl-dlq", durable=True)
            await ch.declare_queue(
                "ttl-src", durable=True, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": "",
                                                     "x-dead-letter-routing-key": "ttl-dlq"}
            )
            for i in range(12):
                await ch.default_exchange.publish(aio_pika.Message(b"%d" % i, delivery_mode=2), "ttl-src")
            await asyncio.sleep(0.6)
            src = b.vhosts["/"].queues["ttl-src"]
            assert src.total() == 0
            assert src.log.live_count == 0
            got = []
            while (m := await dlq.get(fail=False)) is not None:
                got.append(int(m.body))
                await m.ack()
            assert got == list(range(12))


@pytest.mark.parametrize("overflow", ["drop-head", "reject-publish"])
async def test_max_length_bytes_counts_paged_out_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overflow: str
) -> None:
    monkeypatch.setattr(broker_queue, "PAGE_MAX", 3)
    monkeypatch.setattr(broker_queue, "FLOW_LEN", 2)
    monkeypatch.setattr(broker_queue, "PAGE_BATCH", 2)
    async with running_broker(Config(port=0, data_dir=str(tmp_path / "d"))) as b:
        async with await aio_pika.connect(broker_url(b)) as conn:
            ch = await conn.channel(publisher_confirms=False)
            q = await ch.declare_queue(
                "mlb", durable=True, arguments={"x-max-length-bytes": 5, "x-overflow": overflow}
            )
            for i in range(10):
                await ch.default_exchange.publish(aio_pika.Message(b"%d" % i, delivery_mode=2), "mlb")
            await asyncio.sleep(0.1)
            assert b.vhosts["/"].queues["mlb"].total() == 5
            got = []
            while (m := await q.get(fail=False)) is not None:
                got.append(int(m.body))
                await m.ack()
            assert got == ([5, 6, 7, 8, 9] if overflow == "drop-head" else [0, 1, 2, 3, 4])


async def test_compaction_keeps_the_delivered_flag_of_live_records(tmp_path: Path) -> None:
    # a delivered (unacked, then requeued) persistent message comes back redelivered
    # after a restart, also when its segment was compacted in between
    cfg = Config(port=0, data_dir=str(tmp_path / "d"), segment_size=1024, fsync_interval=30.0)
    async with running_broker(cfg) as b:
        async with await aio_pika.connect(broker_url(b)) as conn:
            ch = await conn.channel(publisher_confirms=True)
            q = await ch.declare_queue("cq", durable=True)
            for i in range(60):
                await ch.default_exchange.publish(aio_pika.Message(b"%03d" % i + b"x" * 100, delivery_mode=2), "cq")
            kept = []
            for i in range(60):
                m = await q.get()
                if i % 6 == 3:
                    kept.append(m)  # delivered, left unacked
                else:
                    await m.ack()
            await ch.declare_queue("cq", passive=True)  # round trip: the acks are in
            qq = b.vhosts["/"].queues["cq"]
            qq.maybe_compact()
            assert [int(m.body[:3]) for m in kept] == list(range(3, 60, 6))
    # (the connection closed: the kept messages went back to the queue)
    async with running_broker(cfg) as b:
        async with await aio_pika.connect(broker_url(b)) as conn:
            q = await (await conn.channel()).declare_queue("cq", passive=True)
            got = []
            while (m := await q.get(fail=False)) is not None:
                got.append((int(m.body[:3]), m.redelivered))
                await m.ack()
            assert got == [(i, True) for i in range(3, 60, 6)]
