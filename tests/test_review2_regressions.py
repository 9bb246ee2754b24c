"""Regression tests for bugs found in the second review (each failed before its fix;
expected behaviour checked against RabbitMQ 3.10)."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import struct
import time
from pathlib import Path

import aio_pika
from aio_pika import ExchangeType, Message
from pamqp import commands as C

from leveret.broker import Config
from leveret.broker.core.persistence import decode_table, encode_table
from leveret.testing import BrokerThread, broker_url, running_broker
from tests.rawamqp import RawClient, build_frame, method_frame


async def _count(ch: aio_pika.abc.AbstractChannel, name: str) -> int:
    q = await ch.declare_queue(name, passive=True)
    assert q.declaration_result.message_count is not None
    return q.declaration_result.message_count


async def test_alternate_exchange_not_used_when_exchange_routes_to_an_exchange(url: str) -> None:
    # RabbitMQ uses an exchange's AE only when the exchange itself matched no binding at
    # all; a match to an exchange that then routes nowhere leaves the message unroutable
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        ae = await ch.declare_exchange("r2.ae", ExchangeType.FANOUT, auto_delete=True)
        aeq = await ch.declare_queue("r2.aeq", exclusive=True)
        await aeq.bind(ae)
        x = await ch.declare_exchange("r2.x", auto_delete=True, arguments={"alternate-exchange": "r2.ae"})
        y = await ch.declare_exchange("r2.y", auto_delete=True)
        await y.bind(x, "k")
        await x.publish(Message(b"1"), "k")
        await asyncio.sleep(0.1)
        assert await _count(ch, "r2.aeq") == 0
        await x.publish(Message(b"2"), "other")  # no binding at all: the AE takes it
        await asyncio.sleep(0.1)
        assert await _count(ch, "r2.aeq") == 1
        await y.unbind(x, "k")


async def test_topic_empty_routing_key_has_no_words(url: str) -> None:
    # RabbitMQ splits "" into zero words: "*" and "#.*" do not match it, "" and "#" do
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        x = await ch.declare_exchange("r2.t", ExchangeType.TOPIC, auto_delete=True)
        names = {"star": "*", "hashstar": "#.*", "empty": "", "hash": "#", "emptyword": "*.a"}
        for n, key in names.items():
            q = await ch.declare_queue(f"r2.t.{n}", exclusive=True)
            await q.bind(x, key)
        await x.publish(Message(b"1"), "")
        await x.publish(Message(b"2"), ".a")  # an empty first word is a word
        await asyncio.sleep(0.1)
        counts = {n: await _count(ch, f"r2.t.{n}") for n in names}
        assert counts == {"star": 0, "hashstar": 1, "empty": 1, "hash": 2, "emptyword": 1}


async def test_dead_letter_routing_key_removes_cc_header(url: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        await ch.declare_queue("r2.cc2", exclusive=True)
        q1 = await ch.declare_queue(
            "r2.cc1",
            exclusive=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "r2.cc2"},
        )
        await ch.default_exchange.publish(Message(b"1", headers={"CC": ["nowhere"]}), "r2.cc1")
        m = await q1.get(timeout=2)
        await m.reject()
        await asyncio.sleep(0.1)
        q2 = await ch.declare_queue("r2.cc2", passive=True)
        m2 = await q2.get(timeout=2)
        assert "CC" not in m2.headers
        death = m2.headers["x-death"][0]
        assert death["routing-keys"] == ["r2.cc1", "nowhere"]
        await m2.ack()


async def test_dead_lettered_message_gets_a_fresh_ttl_in_the_target_queue(url: str) -> None:
    # the message TTL of the dead-letter queue counts from when the message entered it
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        await ch.declare_queue("r2.ttl2", exclusive=True, arguments={"x-message-ttl": 600})
        q1 = await ch.declare_queue(
            "r2.ttl1",
            exclusive=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "r2.ttl2", "x-message-ttl": 60000},
        )
        await ch.default_exchange.publish(Message(b"1"), "r2.ttl1")
        await asyncio.sleep(0.8)  # older than r2.ttl2's TTL when it is dead-lettered
        m = await q1.get(timeout=2)
        await m.reject()
        await asyncio.sleep(0.1)
        assert await _count(ch, "r2.ttl2") == 1


async def test_dead_letter_cycle_detection_only_looks_up_to_the_target(url: str) -> None:
    # x-death [r2.cy2 expired, r2.cy1 rejected]: going back to r2.cy2 is a fully
    # automatic cycle (the rejection happened before it), so RabbitMQ drops the message
    # (before the fix this looped forever, blocking the event loop)
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        await ch.declare_queue(
            "r2.cy2",
            exclusive=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "r2.cy2", "x-message-ttl": 50},
        )
        q1 = await ch.declare_queue(
            "r2.cy1",
            exclusive=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "r2.cy2", "x-message-ttl": 60000},
        )
        await ch.default_exchange.publish(Message(b"1"), "r2.cy1")
        m = await q1.get(timeout=2)
        started = time.monotonic()
        await m.reject()
        await asyncio.sleep(0.4)
        assert await _count(ch, "r2.cy2") == 0
        assert time.monotonic() - started < 2


async def test_x_death_count_increment_keeps_the_first_entry_fields(url: str) -> None:
    # RabbitMQ 3.10 only increments "count" of an existing (queue, reason) entry (moving
    # it to the front); its time, exchange and routing-keys stay those of the first death
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        q1 = await ch.declare_queue(
            "r2.xd1",
            exclusive=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "r2.xd2"},
        )
        await ch.declare_queue(
            "r2.xd2",
            exclusive=True,
            arguments={"x-dead-letter-exchange": "amq.direct", "x-message-ttl": 50},
        )
        await q1.bind("amq.direct", "r2.xd2")
        await ch.default_exchange.publish(Message(b"1"), "r2.xd1")
        m = await q1.get(timeout=2)
        await m.reject()
        await asyncio.sleep(0.3)  # expires in r2.xd2, back to r2.xd1 through amq.direct
        m = await q1.get(timeout=2)
        deaths = m.headers["x-death"]
        assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
            ("r2.xd2", "expired", 1),
            ("r2.xd1", "rejected", 1),
        ]
        await m.reject()
        await asyncio.sleep(0.3)
        m = await q1.get(timeout=2)
        deaths = m.headers["x-death"]
        assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
            ("r2.xd2", "expired", 2),
            ("r2.xd1", "rejected", 2),
        ]
        # the second rejection in r2.xd1 was of a message from amq.direct / "r2.xd2"
        rejected = deaths[1]
        assert rejected["exchange"] == "" and rejected["routing-keys"] == ["r2.xd1"]
        await m.ack()
        await q1.unbind("amq.direct", "r2.xd2")


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
            assert await _count(ch, "r2.dhq") == 1
            await dq.unbind(x, arguments={"x-match": "any", **ALL_TYPES})
            await x.publish(Message(b"2", headers={"d": decimal.Decimal("3.14")}), "")
            await asyncio.sleep(0.05)
            assert await _count(ch, "r2.dhq") == 1


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


def test_dead_lettering_keeps_double_and_non_utf8_headers(broker_thread: BrokerThread) -> None:
    # the x-death rewrite re-encodes the headers: a 'd' header became a 32-bit 'f' and a
    # non-UTF-8 longstr made the reject fail with 541
    raw_s = b"\xff\xfe"
    entries = b"\x01d" + b"d" + struct.pack(">d", 0.1) + b"\x01s" + b"S" + struct.pack(">I", len(raw_s)) + raw_s
    table = struct.pack(">I", len(entries)) + entries
    header = struct.pack(">HHQH", 60, 0, 1, 0x2000) + table
    with RawClient.connect(broker_thread.port) as c:
        c.handshake()
        c.open_channel(1)
        c.declare_queue(1, "r2.dlh2", exclusive=True)
        c.declare_queue(
            1, "r2.dlh1", exclusive=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "r2.dlh2"},
        )
        c.send(
            method_frame(1, C.Basic.Publish(exchange="", routing_key="r2.dlh1"))
            + build_frame(2, 1, header)
            + build_frame(3, 1, b"x")
        )
        got = c.get(1, "r2.dlh1", no_ack=False)
        assert got is not None
        c.send_method(1, C.Basic.Reject(delivery_tag=got[0].delivery_tag, requeue=False))
        got = c.get(1, "r2.dlh2")
        assert got is not None
        headers = got[1].properties.headers
        assert headers["d"] == 0.1 and headers["s"] == raw_s
        assert headers["x-death"][0]["queue"] == "r2.dlh1"
