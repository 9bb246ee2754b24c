"""Durability end to end: a subprocess broker with a data directory, restarted cleanly
and killed with SIGKILL, checked through real clients."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aio_pika
import pika
import pytest
from aio_pika import DeliveryMode, ExchangeType, Message

from leveret.testing import BrokerProcess


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    return str(tmp_path / "data")


def start(data_dir: str, port: int | None = None, *extra: str) -> BrokerProcess:
    return BrokerProcess(port=port, args=["--data-dir", data_dir, "--fsync-interval", "0.05", *extra]).start()


async def publish_confirmed(url: str, queue: str, n: int, persistent: bool = True, start_at: int = 0) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel(publisher_confirms=True)
        mode = DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT
        await asyncio.gather(*(
            ch.default_exchange.publish(Message(b"%d" % i, delivery_mode=mode, headers={"i": i}), queue)
            for i in range(start_at, start_at + n)
        ))


async def drain(url: str, queue: str, ack: bool = True) -> list[tuple[bytes, bool]]:
    out = []
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        while (m := await q.get(fail=False)) is not None:
            out.append((m.body, m.redelivered))
            if ack:
                await m.ack()
    return out


async def test_definitions_and_persistent_messages_survive_clean_restart(data_dir: str) -> None:
    b = start(data_dir)
    try:
        async with await aio_pika.connect(b.url) as conn:
            ch = await conn.channel()
            x = await ch.declare_exchange("dx", ExchangeType.TOPIC, durable=True)
            q = await ch.declare_queue("dq", durable=True, arguments={"x-max-length": 1000})
            await q.bind(x, "a.#")
            await ch.declare_queue("transient-q", durable=False)
            await ch.declare_exchange("transient-x", ExchangeType.FANOUT, durable=False)
        await publish_confirmed(b.url, "dq", 100)
        await publish_confirmed(b.url, "dq", 5, persistent=False, start_at=1000)
        assert b.stop() == 0
        b = start(data_dir, b.port)
        async with await aio_pika.connect(b.url) as conn:
            ch = await conn.channel()
            await ch.declare_exchange("dx", ExchangeType.TOPIC, durable=True, passive=True)
            q = await ch.declare_queue("dq", durable=True, arguments={"x-max-length": 1000})
            assert q.declaration_result.message_count == 100
            for name in ("transient-q",):
                with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                    ch2 = await conn.channel()
                    await ch2.declare_queue(name, passive=True)
            ch3 = await conn.channel()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await ch3.declare_exchange("transient-x", passive=True)
            # the binding survived
            x = await (await conn.channel()).get_exchange("dx")
            await x.publish(Message(b"routed", delivery_mode=DeliveryMode.PERSISTENT), "a.b")
        got = await drain(b.url, "dq")
        assert [m for m, _ in got] == [b"%d" % i for i in range(100)] + [b"routed"]
        assert not any(r for _, r in got)
    finally:
        b.stop()


async def test_acked_messages_do_not_come_back_and_unacked_are_redelivered(data_dir: str) -> None:
    b = start(data_dir)
    try:
        async with await aio_pika.connect(b.url) as conn:
            ch = await conn.channel()
            await ch.declare_queue("q", durable=True)
        await publish_confirmed(b.url, "q", 10)
        # ack 0..4, hold 5 and 6 unacked (delivered), leave 7..9 untouched
        conn = await aio_pika.connect(b.url)
        ch = await conn.channel()
        q = await ch.declare_queue("q", passive=True)
        for _ in range(5):
            m = await q.get()
            await m.ack()
        held = [await q.get(), await q.get()]
        assert [m.body for m in held] == [b"5", b"6"]
        await asyncio.sleep(0.3)  # acks reach the disk within the fsync interval
        b.kill()
        await conn.close()
        b = start(data_dir, b.port)
        got = await drain(b.url, "q")
        assert [m for m, _ in got] == [b"5", b"6", b"7", b"8", b"9"]
        assert [r for _, r in got] == [True, True, False, False, False]
    finally:
        b.stop()


CRASH_PUBLISHER = textwrap.dedent('''
    import sys, pika
    url, n = sys.argv[1], int(sys.argv[2])
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    for i in range(n):
        try:
            ch.basic_publish("", "crash", b"%d" % i, props)
        except Exception:
            break
        print(i, flush=True)   # confirmed
''')


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_under_load_loses_no_confirmed_message(data_dir: str, seed: int, tmp_path: Path) -> None:
    rnd = random.Random(seed)
    b = start(data_dir)
    try:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        conn.channel().queue_declare("crash", durable=True)
        conn.close()
        script = tmp_path / "pub.py"
        script.write_text(CRASH_PUBLISHER)
        pub = subprocess.Popen([sys.executable, str(script), b.url, "100000"], stdout=subprocess.PIPE, text=True)
        assert pub.stdout is not None
        first = pub.stdout.readline()  # publishing has started and confirms flow
        time.sleep(rnd.uniform(0.1, 1.0))
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGKILL)
        b.proc.wait(5)
        out, _ = pub.communicate(timeout=30)
        confirmed = [int(x) for x in (first + out).split()]
        assert confirmed, "the publisher got no confirm before the kill"
        b = start(data_dir, b.port)
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        bodies = []
        while True:
            method, _props, body = ch.basic_get("crash", auto_ack=True)
            if method is None:
                break
            bodies.append(int(body))
        conn.close()
        # every confirmed message is there exactly once, in publish order
        assert len(bodies) == len(set(bodies))
        assert bodies == sorted(bodies)
        missing = set(confirmed) - set(bodies)
        assert not missing, f"{len(missing)} confirmed messages lost"
    finally:
        b.stop()


TTL_MS = 6000  # (long enough for a stop and a start on a loaded machine)


async def test_ttl_counts_from_publish_across_restart_and_dead_letters_stay_persistent(data_dir: str) -> None:
    b = start(data_dir)
    try:
        async with await aio_pika.connect(b.url) as conn:
            ch = await conn.channel()
            await ch.declare_exchange("dlx", ExchangeType.FANOUT, durable=True)
            dlq = await ch.declare_queue("dlq", durable=True)
            await dlq.bind("dlx")
            await ch.declare_queue("ttlq", durable=True, arguments={"x-message-ttl": TTL_MS, "x-dead-letter-exchange": "dlx"})
        published = time.monotonic()
        await publish_confirmed(b.url, "ttlq", 3)
        b.stop()
        time.sleep(2.0)
        b = start(data_dir, b.port)
        restarted = time.monotonic()
        async with await aio_pika.connect(b.url) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue("ttlq", durable=True, arguments={"x-message-ttl": TTL_MS, "x-dead-letter-exchange": "dlx"})
            assert q.declaration_result.message_count == 3
            # just past the TTL after publish: expired, though less than the TTL since restart
            await asyncio.sleep(max(0.0, published + TTL_MS / 1000 + 0.5 - time.monotonic()))
            assert time.monotonic() - restarted < TTL_MS / 1000
            assert (await ch.declare_queue("ttlq", passive=True)).declaration_result.message_count == 0
        b.stop()  # dead-lettered copies are persistent: they survive another restart
        b = start(data_dir, b.port)
        async with await aio_pika.connect(b.url) as conn:
            ch = await conn.channel()
            dlq = await ch.declare_queue("dlq", passive=True)
            m = await dlq.get(timeout=2)
            assert m.delivery_mode == DeliveryMode.PERSISTENT
            assert m.headers["x-death"][0]["reason"] == "expired"
            assert m.headers["x-death"][0]["queue"] == "ttlq"
    finally:
        b.stop()


def test_disk_free_limit_blocks_publishers(data_dir: str) -> None:
    import threading

    from leveret.broker import Config
    from leveret.testing import BrokerThread

    with BrokerThread(Config(port=0, data_dir=data_dir, disk_free_limit=1 << 62)) as b:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        blocked, unblocked = threading.Event(), threading.Event()
        conn.add_on_connection_blocked_callback(lambda *_: blocked.set())
        conn.add_on_connection_unblocked_callback(lambda *_: unblocked.set())
        ch = conn.channel()
        ch.queue_declare("dq", durable=True)
        ch.basic_publish("", "dq", b"x", pika.BasicProperties(delivery_mode=2))
        for _ in range(40):
            conn.process_data_events(0.05)
            if blocked.is_set():
                break
        assert blocked.is_set()
        assert b.broker is not None
        b.broker.config.disk_free_limit = 0  # space is back
        for _ in range(60):
            conn.process_data_events(0.05)
            if unblocked.is_set():
                break
        assert unblocked.is_set()
        conn.close()


async def test_write_error_nacks_and_keeps_what_was_stored(data_dir: str) -> None:
    import errno

    from leveret.broker import Config
    from leveret.testing import broker_url, running_broker

    async with running_broker(Config(port=0, data_dir=data_dir)) as broker:
        url = broker_url(broker)
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel(publisher_confirms=True)
            await ch.declare_queue("dq", durable=True)
            await ch.default_exchange.publish(Message(b"kept", delivery_mode=DeliveryMode.PERSISTENT), "dq")
            qlog = broker.vhosts["/"].queues["dq"].log

            def full(payload: bytes) -> int:
                raise OSError(errno.ENOSPC, "No space left on device")

            qlog.append = full
            with pytest.raises(aio_pika.exceptions.DeliveryError):
                await ch.default_exchange.publish(Message(b"lost", delivery_mode=DeliveryMode.PERSISTENT), "dq")
            assert broker.disk_alarm
            del qlog.append
            q = await ch.declare_queue("dq", passive=True)
            assert (await q.get(timeout=2)).body == b"kept"


async def test_old_unacked_message_does_not_pin_disk_use(tmp_path: Path) -> None:
    from leveret.broker import Config
    from leveret.testing import broker_url, running_broker

    data = str(tmp_path / "d")
    async with running_broker(Config(port=0, data_dir=data, segment_size=64 * 1024, fsync_interval=0.02)) as broker:
        url = broker_url(broker)
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue("pin", durable=True)
            await ch.default_exchange.publish(Message(b"old", delivery_mode=DeliveryMode.PERSISTENT), "pin")
            held = await q.get()  # delivered, never acked during the test
            qlog = broker.vhosts["/"].queues["pin"].log
            body = b"z" * 1000
            for _round in range(12):
                for _ in range(100):
                    await ch.default_exchange.publish(Message(body, delivery_mode=DeliveryMode.PERSISTENT), "pin")
                while (m := await q.get(fail=False)) is not None:
                    await m.ack()
                await asyncio.sleep(0.05)  # the periodic tick compacts
            # ~1.2 MB went through; disk holds the live data, a segment, and slack
            assert qlog.disk_bytes <= 2 * qlog.live_bytes + 3 * 64 * 1024
            await held.ack()  # the moved record is acked at its new place
            await asyncio.sleep(0.1)
            assert qlog.live_count == 0


async def test_priority_queue_order_after_recovery(tmp_path: Path) -> None:
    from leveret.broker import Config
    from leveret.testing import broker_url, running_broker

    data = str(tmp_path / "d")
    args = {"x-max-priority": 3}
    async with running_broker(Config(port=0, data_dir=data)) as broker:
        async with await aio_pika.connect(broker_url(broker)) as conn:
            ch = await conn.channel()
            await ch.declare_queue("pq", durable=True, arguments=args)
            await asyncio.gather(*(
                ch.default_exchange.publish(
                    Message(b"%d" % i, priority=i % 4, delivery_mode=DeliveryMode.PERSISTENT), "pq")
                for i in range(3000)
            ))
    async with running_broker(Config(port=0, data_dir=data)) as broker:
        async with await aio_pika.connect(broker_url(broker)) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue("pq", durable=True, arguments=args)
            got = []
            while (m := await q.get(fail=False, no_ack=True)) is not None:
                got.append(int(m.body))
    expected = sorted(range(3000), key=lambda i: (-(i % 4), i))
    assert got == expected


async def test_real_disk_full_nacks_keeps_stored_messages_and_recovers(tmp_path: Path) -> None:
    """A real ENOSPC: the data directory on a 3 MiB tmpfs."""
    import subprocess as sp

    from leveret.broker import Config
    from leveret.testing import broker_url, running_broker

    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or sp.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("needs root and tmpfs mounts")
    try:
        cfg = Config(port=0, data_dir=str(mnt / "d"), segment_size=256 * 1024, fsync_interval=0.05, disk_free_limit=0)
        body = b"b" * 32 * 1024
        async with running_broker(cfg) as broker:
            url = broker_url(broker)
            pub = await aio_pika.connect(url)
            ch = await pub.channel(publisher_confirms=True)
            await ch.declare_queue("full", durable=True)
            confirmed: list[int] = []
            nacked: list[int] = []
            pending = []
            for i in range(200):  # 6.4 MiB > 3 MiB
                fut = asyncio.ensure_future(
                    ch.default_exchange.publish(Message(b"%04d" % i + body, delivery_mode=DeliveryMode.PERSISTENT), "full"))
                try:
                    await asyncio.wait_for(asyncio.shield(fut), 1.0)
                except aio_pika.exceptions.DeliveryError:
                    nacked.append(i)
                    break
                except TimeoutError:
                    pending.append((i, fut))  # not confirmed: the disk is full, we are blocked
                    break
                confirmed.append(i)
            assert len(confirmed) > 20 and (nacked or pending)
            assert broker.disk_alarm
            # consumers are still served, from another connection: every confirmed message,
            # never a nacked one (an unconfirmed one may be there)
            async with await aio_pika.connect(url) as cons:
                cch = await cons.channel()
                q = await cch.declare_queue("full", passive=True)
                got = []
                while (m := await q.get(fail=False)) is not None:
                    got.append(int(m.body[:4]))
                    await m.ack()
                assert got[: len(confirmed)] == confirmed
                assert not set(got) & set(nacked)
                assert set(got[len(confirmed):]) <= {i for i, _ in pending}
            # the acked segments are deleted, space returns, the publisher is unblocked
            for _ in range(50):
                await asyncio.sleep(0.1)
                if not broker.alarm:
                    break
            assert not broker.alarm
            for _, fut in pending:  # confirmed once the disk took it
                await asyncio.wait_for(fut, 5)
            await asyncio.wait_for(
                ch.default_exchange.publish(Message(b"9999" + body, delivery_mode=DeliveryMode.PERSISTENT), "full"), 5)
            await pub.close()
        async with running_broker(cfg) as broker:  # nothing stored was corrupted
            async with await aio_pika.connect(broker_url(broker)) as conn:
                q = await (await conn.channel()).declare_queue("full", passive=True)
                m = await q.get()
                assert int(m.body[:4]) == 9999 and await q.get(fail=False) is None
    finally:
        sp.run(["umount", "-l", str(mnt)])


async def test_deleted_vhost_does_not_come_back(tmp_path: Path) -> None:
    from leveret.broker import Config
    from leveret.testing import broker_url, running_broker

    data = str(tmp_path / "d")
    async with running_broker(Config(port=0, data_dir=data)) as broker:
        broker.add_vhost("gone")
        async with await aio_pika.connect(broker_url(broker, "gone")) as conn:
            ch = await conn.channel()
            await ch.declare_exchange("only-an-exchange", ExchangeType.DIRECT, durable=True)
        broker.delete_vhost("gone")
    async with running_broker(Config(port=0, data_dir=data)) as broker:
        assert "gone" not in broker.vhosts
