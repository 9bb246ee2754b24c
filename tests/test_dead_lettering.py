"""Dead lettering as RabbitMQ 3.10 does it: the x-death header (its entries, their order
and field types, counts), CC/BCC and routing keys, TTL in the target queue, cycles, and
the publisher's headers kept as published.  More dead-letter cases (with the queue
features that cause them) are in tests/test_features.py."""

from __future__ import annotations

import asyncio
import struct
import time

import aio_pika
from aio_pika import Message
from pamqp import commands as C

from leveret.testing import BrokerThread
from tests.helpers import ready_count
from tests.rawamqp import (
    RawClient,
    build_frame,
    get_raw,
    header_table,
    longstr_array,
    method_frame,
    publish_raw_headers,
)


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
        assert await ready_count(ch, "r2.ttl2") == 1


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
        assert await ready_count(ch, "r2.cy2") == 0
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



# unsorted, with field types pamqp would not choose: they must come back as they are
_CLIENT_TABLE = (
    b"\x02zz" + b"l" + struct.pack(">q", 5)
    + b"\x02CC" + longstr_array(b"cc-key")
    + b"\x02aa" + b"S" + struct.pack(">I", 1) + b"x"
    + b"\x02mm" + b"I" + struct.pack(">i", 7)
)


def _dl_pair(c: RawClient, stamp: str) -> tuple[str, str]:
    """Queues a and b, each dead-lettering into the other."""
    a, b = f"issue11.dl.{stamp}.a", f"issue11.dl.{stamp}.b"
    c.declare_queue(1, a, exclusive=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": b})
    c.declare_queue(1, b, exclusive=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": a})
    return a, b


def test_x_death_field_types_and_the_first_death_headers(client: RawClient) -> None:
    a, b = _dl_pair(client, str(time.monotonic_ns()))
    t0 = int(time.time())
    publish_raw_headers(client, a, _CLIENT_TABLE, expiration="1")
    _, raw = get_raw(client, b)
    table = header_table(raw)
    # the whole table sorted by key (RabbitMQ's set_table_value); CC gone (dead-letter
    # routing key given); the publisher's fields with their own types
    assert [k for k, _ in table] == [
        "aa", "mm", "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason", "zz",
    ]
    t = dict(table)
    assert t["aa"] == ("S", b"x") and t["mm"] == ("I", 7) and t["zz"] == ("l", 5)
    assert t["x-first-death-exchange"] == ("S", b"")
    assert t["x-first-death-queue"] == ("S", a.encode())
    assert t["x-first-death-reason"] == ("S", b"expired")
    kind, deaths = t["x-death"]
    assert kind == "A" and len(deaths) == 1 and deaths[0][0] == "F"
    entry = deaths[0][1]
    # the first entry in RabbitMQ's own order, not sorted
    assert [k for k, _ in entry] == ["count", "reason", "queue", "time", "exchange", "routing-keys", "original-expiration"]
    e = dict(entry)
    assert e["count"] == ("l", 1)
    assert e["reason"] == ("S", b"expired")
    assert e["queue"] == ("S", a.encode())
    assert e["time"][0] == "T" and t0 - 1 <= e["time"][1] <= time.time() + 1
    assert e["exchange"] == ("S", b"")
    assert e["routing-keys"] == ("A", [("S", a.encode()), ("S", b"cc-key")])
    assert e["original-expiration"] == ("S", b"1")
    assert raw[12] & 0x01 == 0  # the expiration property is gone


def test_x_death_repeated_deaths_count_as_long_in_rabbitmqs_order(client: RawClient) -> None:
    """Expired from a, then rejected back and forth between b and a: count is an ``l``
    each time, an updated or added entry has its keys sorted, and (RabbitMQ 3.10's
    regrouping of an array of two or more entries by queue and reason) the entries
    other than the updated one come out in reverse order."""
    a, b = _dl_pair(client, str(time.monotonic_ns()))
    client.publish(1, "", a, b"hello", expiration="1")
    seen = []
    queue = b
    for _ in range(5):
        ok, raw = get_raw(client, queue, no_ack=False)
        deaths = dict(header_table(raw))["x-death"]
        assert deaths[0] == "A"
        summary = []
        for kind, entry in deaths[1]:
            assert kind == "F"
            e = dict(entry)
            summary.append((e["queue"][1][-1:].decode() + "-" + e["reason"][1].decode(), e["count"]))
            if len(seen) > 0 and e["reason"] == ("S", b"rejected"):
                assert [k for k, _ in entry] == sorted(k for k, _ in entry)
        seen.append(summary)
        client.send_method(1, C.Basic.Reject(delivery_tag=ok.delivery_tag, requeue=False))
        queue = b if queue == a else a
    one, two = ("l", 1), ("l", 2)
    assert seen == [
        [("a-expired", one)],
        [("b-rejected", one), ("a-expired", one)],
        [("a-rejected", one), ("a-expired", one), ("b-rejected", one)],
        [("b-rejected", two), ("a-expired", one), ("a-rejected", one)],
        [("a-rejected", two), ("a-expired", one), ("b-rejected", two)],
    ]

