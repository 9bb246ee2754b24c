"""Durability end to end: a subprocess broker with a data directory, restarted cleanly
and killed with SIGKILL, checked through real clients."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import pika
import pytest
from aio_pika import DeliveryMode, ExchangeType, Message
from pamqp import commands as C

import leveret.broker.core.backing as broker_queue
from leveret.broker import Config
from leveret.broker.core.persistence import decode_table, encode_table
from leveret.storage import DataDirLocked
from leveret.testing import BrokerProcess, BrokerThread, broker_url, free_port, running_broker
from tests.helpers import confirmed_publisher, leveret_command, ready_count, start_durable
from tests.polling import async_wait_until
from tests.rawamqp import RawClient, build_frame, still_works
from tests.reference import leveret_only


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    return str(tmp_path / "data")




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
    b = start_durable(data_dir)
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
        b = start_durable(data_dir, b.port)
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
    b = start_durable(data_dir)
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
        b = start_durable(data_dir, b.port)
        got = await drain(b.url, "q")
        assert [m for m, _ in got] == [b"5", b"6", b"7", b"8", b"9"]
        assert [r for _, r in got] == [True, True, False, False, False]
    finally:
        b.stop()




@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_under_load_loses_no_confirmed_message(data_dir: str, seed: int, tmp_path: Path) -> None:
    rnd = random.Random(seed)
    b = start_durable(data_dir)
    try:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        conn.channel().queue_declare("crash", durable=True)
        conn.close()
        script = tmp_path / "pub.py"
        script.write_text(confirmed_publisher('crash', 2))
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
        b = start_durable(data_dir, b.port)
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


@pytest.mark.slow
async def test_ttl_counts_from_publish_across_restart_and_dead_letters_stay_persistent(data_dir: str) -> None:
    b = start_durable(data_dir)
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
        b = start_durable(data_dir, b.port)
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
        b = start_durable(data_dir, b.port)
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
            await async_wait_until(lambda: not broker.alarm, what="the disk alarm to clear", interval=0.1)
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


# ---------------------------------------------------------------------- paged-out messages, recovery, persisted argument tables, the data directory lock


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


@pytest.mark.slow
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


ALL_TYPES = {
    "s": "text",
    "b": bytearray(b"\x00\xffbytes"),
    "i": 7,
    "big": 2**40,
    "neg": -5,
    "f": 1.5,
    "t": True,
    "v": None,
    "d": decimal.Decimal("3.14"),
    "ts": datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    "tbl": {"nested": {"deeper": [1, "two", bytearray(b"3")]}},
    "arr": [1, [2, 3], {"k": "v"}],
}


async def test_server_named_durable_queue_and_argument_tables_survive_restart(tmp_path: Path) -> None:
    cfg = Config(port=0, data_dir=str(tmp_path / "data"), fsync_interval=0.05)
    async with running_broker(cfg) as b:
        async with await aio_pika.connect(broker_url(b)) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue("", durable=True)
            name = q.name
            assert name.startswith("amq.gen-")
            x = await ch.declare_exchange("r2.dh", ExchangeType.HEADERS, durable=True)
            dq = await ch.declare_queue("r2.dhq", durable=True)
            await dq.bind(x, arguments={"x-match": "any", **ALL_TYPES})
            await ch.default_exchange.publish(Message(b"kept", delivery_mode=2), name)
    async with running_broker(cfg) as b:
        async with await aio_pika.connect(broker_url(b)) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue(name, passive=True)
            m = await q.get(timeout=2)
            assert m.body == b"kept"
            await m.ack()
            dq = await ch.declare_queue("r2.dhq", passive=True)
            # the binding is still there, with the same arguments: unbinding with them
            # removes it, so a matching message no longer arrives
            x = await ch.get_exchange("r2.dh")
            await x.publish(Message(b"1", headers={"d": decimal.Decimal("3.14")}), "")
            await asyncio.sleep(0.05)
            assert await ready_count(ch, "r2.dhq") == 1
            await dq.unbind(x, arguments={"x-match": "any", **ALL_TYPES})
            await x.publish(Message(b"2", headers={"d": decimal.Decimal("3.14")}), "")
            await asyncio.sleep(0.05)
            assert await ready_count(ch, "r2.dhq") == 1


def test_persisted_argument_tables_keep_doubles_and_non_utf8_strings() -> None:
    # pamqp decodes a longstr that is not UTF-8 to bytes (which it cannot encode) and
    # encodes every float as a 32-bit 'f': both broke the definitions file
    table = {"d": 0.1, "s": b"\xff\xfe", "n": {"a": [0.3, b"\x80"]}, "x": bytearray(b"\x00")}
    assert decode_table(encode_table(table)) == table


def test_durable_queue_with_non_utf8_string_argument_is_saved(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    raw_s = b"\xff\xfe"
    table = struct.pack(">B", 5) + b"x-str" + b"S" + struct.pack(">I", len(raw_s)) + raw_s
    payload = (
        struct.pack(">HHH", 50, 10, 0)
        + struct.pack(">B", 7) + b"r2.utf8"
        + bytes((0b0010,))  # durable
        + struct.pack(">I", len(table)) + table
    )
    with BrokerThread(Config(port=0, data_dir=data)) as b:
        with RawClient.connect(b.port) as c:
            c.handshake()
            c.open_channel(1)
            c.send(build_frame(1, 1, payload))
            c.expect(C.Queue.DeclareOk, 1)
    with BrokerThread(Config(port=0, data_dir=data)) as b:
        with RawClient.connect(b.port) as c:
            c.handshake()
            c.open_channel(1)
            c.declare_queue(1, "r2.utf8", passive=True)


async def test_priority_queue_recovered_messages_come_before_ones_published_after_restart(tmp_path: Path) -> None:
    # a durable priority queue recovers its messages as a paged-out tail; one published
    # after the restart (before any consumer) must not jump ahead of older messages of
    # the same or a higher priority
    data = str(tmp_path / "d")
    args = {"x-max-priority": 3}
    async with running_broker(Config(port=0, data_dir=data)) as broker:
        async with await aio_pika.connect(broker_url(broker)) as conn:
            ch = await conn.channel(publisher_confirms=True)
            await ch.declare_queue("r3.pq", durable=True, arguments=args)
            for i in range(6):
                await ch.default_exchange.publish(
                    Message(b"old%d" % i, priority=3 if i % 2 else 0, delivery_mode=DeliveryMode.PERSISTENT), "r3.pq")
    async with running_broker(Config(port=0, data_dir=data)) as broker:
        async with await aio_pika.connect(broker_url(broker)) as conn:
            ch = await conn.channel(publisher_confirms=True)
            q = await ch.declare_queue("r3.pq", durable=True, arguments=args)
            await ch.default_exchange.publish(Message(b"new-p0", priority=0), "r3.pq")
            await ch.default_exchange.publish(Message(b"new-p3", priority=3), "r3.pq")
            got = []
            while (m := await q.get(fail=False, no_ack=True)) is not None:
                got.append(m.body)
    assert got == [b"old1", b"old3", b"old5", b"new-p3", b"old0", b"old2", b"old4", b"new-p0"]


@pytest.mark.slow
def test_expired_messages_recovered_past_the_first_page_batch_are_not_delivered(tmp_path: Path) -> None:
    """A durable queue without x-message-ttl, recovered after a restart: its messages are
    all paged out, and nothing tells the queue yet that some carry an expiration.  Those
    past the first PAGE_BATCH are read back by the one consumer's dispatch loop; expired,
    they must be dropped (RabbitMQ never delivers an expired message), not delivered."""
    data_dir = str(tmp_path / "data")
    plain, expiring = 2500, 20
    with BrokerThread(Config(port=0, data_dir=data_dir)) as b:
        with pika.BlockingConnection(pika.URLParameters(b.url)) as c:
            ch = c.channel()
            ch.queue_declare("dq", durable=True)
            persistent = pika.BasicProperties(delivery_mode=2)
            for i in range(plain):
                ch.basic_publish("", "dq", b"keep-%d" % i, persistent)
            short = pika.BasicProperties(delivery_mode=2, expiration="200")
            for i in range(expiring):
                ch.basic_publish("", "dq", b"gone-%d" % i, short)
            ch.queue_declare("dq", durable=True, passive=True)  # (a round trip)
    time.sleep(0.5)  # the last ones have expired (their TTL counts from the publish)
    with BrokerThread(Config(port=0, data_dir=data_dir)) as b:
        with pika.BlockingConnection(pika.URLParameters(b.url)) as c:
            ch = c.channel()
            got: list[bytes] = []
            for _method, _props, body in ch.consume("dq", auto_ack=True, inactivity_timeout=1.0):
                if body is None:
                    break
                got.append(body)
            ch.cancel()
            left = ch.queue_declare("dq", durable=True, passive=True).method.message_count
    gone = [m for m in got if m.startswith(b"gone-")]
    assert not gone, f"{len(gone)} expired messages were delivered"
    assert len(got) == plain and left == 0


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@leveret_only
def test_a_second_broker_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    with BrokerProcess(args=["--data-dir", data]) as first:
        assert first.proc is not None
        r = subprocess.run(
            leveret_command(free_port(), "--host", "127.0.0.1", "--data-dir", data),
            capture_output=True, text=True, timeout=30, cwd=ROOT,
        )
        assert r.returncode != 0
        assert f"data directory {data} is in use by another Leveret broker (PID {first.proc.pid}" in r.stderr, r.stderr
        assert "listening on" not in r.stdout + r.stderr
        # in-process too
        with pytest.raises(DataDirLocked) as exc:
            BrokerThread(Config(port=0, data_dir=data)).start()
        assert exc.value.pid == first.proc.pid
        still_works(first.port)  # the first one carries on
    # stopped: the directory is free again, for a restart in the same directory
    with BrokerProcess(args=["--data-dir", data]) as again:
        still_works(again.port)
        again.kill()  # kill -9 leaves no stale lock
    with BrokerThread(Config(port=0, data_dir=data)) as b:
        still_works(b.port)
        with pytest.raises(DataDirLocked):
            BrokerThread(Config(port=0, data_dir=data)).start()
    with BrokerThread(Config(port=0, data_dir=data)) as b:
        still_works(b.port)


@leveret_only
def test_a_broker_that_fails_to_listen_frees_its_data_dir(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            BrokerThread(Config(port=taken.getsockname()[1], data_dir=data)).start()
    with BrokerThread(Config(port=0, data_dir=data)) as b:
        still_works(b.port)

