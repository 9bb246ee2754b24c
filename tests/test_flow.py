"""Backpressure and the memory alarm: memory stays bounded when a peer is slow."""

from __future__ import annotations

import asyncio
import threading

import aio_pika
import pika
import pytest
from pamqp import commands as C
from rawamqp import RawClient

from leveret.broker import Broker, Config
from leveret.broker.wire.connection import State
from leveret.testing import BrokerThread, broker_url, running_broker
from tests.polling import wait_until


async def test_consumer_that_does_not_read_gets_no_more_than_the_high_water_mark() -> None:
    async with running_broker(Config(port=0)) as broker:
        url = broker_url(broker)
        # a raw consumer with no_ack that never reads its socket
        slow = await asyncio.to_thread(RawClient.connect, broker.port)
        await asyncio.to_thread(slow.handshake)
        await asyncio.to_thread(slow.open_channel, 1)
        await asyncio.to_thread(slow.rpc, 1, C.Queue.Declare(queue="slow"), C.Queue.DeclareOk)
        await asyncio.to_thread(slow.rpc, 1, C.Basic.Consume(queue="slow", no_ack=True), C.Basic.ConsumeOk)
        body = b"x" * 65536
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel(publisher_confirms=False)
            for _ in range(800):  # 50 MiB
                await ch.default_exchange.publish(aio_pika.Message(body), "slow")
            await asyncio.sleep(0.3)
            q = broker.vhosts["/"].queues["slow"]
            server_conn = next(c for c in broker.connections if q.consumers and c is q.consumers[0].channel.conn)
            assert server_conn.transport is not None
            buffered = server_conn.transport.get_write_buffer_size() + server_conn.out_bytes
            # what is held for the slow peer is bounded; the rest waits in the queue
            assert buffered < 8 * 1024 * 1024
            assert q.message_count > 600
            # and another consumer on another queue is not disturbed
            other = await ch.declare_queue("", exclusive=True)
            await ch.default_exchange.publish(aio_pika.Message(b"fine"), other.name)
            assert (await other.get(timeout=2)).body == b"fine"
        slow.close()


def test_memory_alarm_blocks_publishers_and_unblocks() -> None:
    with BrokerThread(Config(port=0, memory_high_watermark=1024 * 1024)) as b:
        events: list[str] = []
        blocked = threading.Event()
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        conn.add_on_connection_blocked_callback(lambda *_: (events.append("blocked"), blocked.set()))
        conn.add_on_connection_unblocked_callback(lambda *_: events.append("unblocked"))
        ch = conn.channel()
        ch.queue_declare("big")
        for _ in range(100):  # up to 6.4 MiB, one at a time, until the 1 MiB alarm trips
            ch.basic_publish("", "big", b"y" * 65536)
            conn.process_data_events(0.02)
            if blocked.is_set():
                break
        assert events == ["blocked"]
        assert b.broker is not None and b.broker.alarm
        # draining the queue from another connection clears the alarm
        conn2 = pika.BlockingConnection(pika.URLParameters(b.url))
        ch2 = conn2.channel()
        ch2.queue_purge("big")
        for _ in range(50):
            conn.process_data_events(0.05)
            if "unblocked" in events:
                break
        assert events == ["blocked", "unblocked"]
        # reading resumed: the publishes held back while blocked arrive, then ours
        conn.process_data_events(0.2)
        before = ch2.queue_declare("big", passive=True).method.message_count
        ch.basic_publish("", "big", b"after")
        conn.process_data_events(0.1)
        assert ch2.queue_declare("big", passive=True).method.message_count == before + 1
        conn2.close()
        conn.close()


@pytest.mark.slow
async def test_publisher_that_never_reads_is_paused_not_buffered(broker: Broker) -> None:
    # A raw client that pipelines queue.declare forever without reading the replies:
    # the server stops reading from it instead of buffering replies without bound.
    c = await asyncio.to_thread(RawClient.connect, broker.port)
    await asyncio.to_thread(c.handshake)
    await asyncio.to_thread(c.open_channel, 1)
    frame = C.Queue.Declare(queue="flood", passive=False)
    from rawamqp import method_frame

    data = method_frame(1, frame) * 2000
    c.sock.setblocking(False)
    sent = 0
    pending = memoryview(b"")
    deadline = asyncio.get_running_loop().time() + 5
    for _ in range(2000):
        if asyncio.get_running_loop().time() > deadline:
            break
        # (a partial send is completed before the next batch: starting the batch over
        # would cut a frame, a framing error that closes the connection)
        if not pending:
            pending = memoryview(data)
        try:
            n = c.sock.send(pending)
        except BlockingIOError:
            await asyncio.sleep(0.01)
            continue
        sent += n
        pending = pending[n:]
    server = next(iter(broker.connections))
    assert server.transport is not None
    assert server.transport.get_write_buffer_size() < 64 * 1024 * 1024
    assert server.state == State.OPENED  # not closed for a framing error
    c.close()


def test_partial_bodies_count_towards_the_memory_alarm() -> None:
    """Many channels each holding part of a large message must not grow memory without
    bound: the bytes held count towards the alarm, which stops reading the publisher."""
    import struct

    from rawamqp import method_frame

    with BrokerThread(Config(port=0, memory_high_watermark=2 * 1024 * 1024)) as b:
        assert b.broker is not None
        c = RawClient.connect(b.port)
        c.handshake(capabilities={"connection.blocked": True})
        chunk = b"p" * (131072 - 8)
        c.sock.settimeout(0.5)
        try:
            for ch in range(1, 11):
                if b.broker.alarm:
                    break
                c.send(method_frame(ch, C.Channel.Open()))  # replies are not read
                c.send(method_frame(ch, C.Basic.Publish(exchange="", routing_key="nowhere")))
                c.send(struct.pack(">BHIHHQH", 2, ch, 14, 60, 0, 100 * 1024 * 1024, 0) + b"\xce")
                body_frame = struct.pack(">BHI", 3, ch, len(chunk)) + chunk + b"\xce"
                for _ in range(40):  # up to 5 MiB per channel
                    c.send(body_frame)
        except (TimeoutError, OSError):
            pass  # the broker stopped reading from us: that is the point
        wait_until(lambda: b.broker.alarm, what="the memory alarm")
        assert b.broker.alarm
        assert b.broker.queued_bytes < 64 * 1024 * 1024  # reading stopped: bounded
        # other connections still work: a consumer-side connection can get and purge
        other = pika.BlockingConnection(pika.URLParameters(b.url))
        och = other.channel()
        och.queue_declare("still-alive")
        assert och.basic_get("still-alive")[0] is None
        other.close()
        c.close()


@pytest.mark.slow
def test_blocked_publisher_is_not_dropped_for_missed_heartbeats() -> None:
    import time

    with BrokerThread(Config(port=0, memory_high_watermark=64 * 1024)) as b:
        assert b.broker is not None
        params = pika.URLParameters(b.url + "?heartbeat=1")
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        ch.queue_declare("hb-big")
        blocked = threading.Event()
        conn.add_on_connection_blocked_callback(lambda *_: blocked.set())
        for _ in range(50):
            ch.basic_publish("", "hb-big", b"y" * 16384)
            conn.process_data_events(0.02)
            if blocked.is_set():
                break
        assert blocked.is_set()
        # the broker does not read us now; 3 heartbeat intervals later we are still there
        time.sleep(3.5)
        assert len(b.broker.connections) == 1
        b.broker.config.memory_high_watermark = 1 << 30
        b.call(b.broker.check_alarm)
        conn.process_data_events(0.2)
        assert conn.is_open
        conn.close()
