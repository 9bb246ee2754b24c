"""Streams (issue 24) through pika, against a broker with a data directory: the declare
rules and their texts, the refused operations, the consumer offsets, the x-stream-offset
header, prefetch as credit, every consumer getting every message, counts and deletion,
retention.

Every expectation here was taken from RabbitMQ 3.10.8.  With LEVERET_REFERENCE_URL set
(e.g. ``amqp://guest:guest@127.0.0.1:5672/some-vhost``), the tests that need no broker
internals run against that broker instead, to check them."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker

from leveret.broker import Config
from leveret.broker.core.policy import make_policy
from leveret.testing import BrokerThread
from tests.reference import REFERENCE as REF  # noqa: E402

S = {"x-queue-type": "stream"}
needs_leveret = pytest.mark.skipif(bool(REF), reason="looks at Leveret's internals")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerThread | None]:
    if REF:
        yield None
        return
    with BrokerThread(Config(port=0, data_dir=str(tmp_path / "data"), fsync_interval=0.05)) as b:
        yield b


@pytest.fixture
def amqp_url(broker: BrokerThread | None) -> str:
    return REF or broker.url  # type: ignore[union-attr]


@pytest.fixture
def conn(amqp_url: str) -> Iterator[pika.BlockingConnection]:
    c = pika.BlockingConnection(pika.URLParameters(amqp_url))
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def names(amqp_url: str) -> Iterator[Any]:
    """Unique stream names, deleted after the test."""
    made: list[str] = []

    def name(prefix: str = "st") -> str:
        n = f"{prefix}-{uuid.uuid4().hex[:8]}"
        made.append(n)
        return n

    yield name
    c = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = c.channel()
    for n in made:
        ch.queue_delete(n)
    c.close()


def stream(conn: pika.BlockingConnection, name: str, n: int = 0, args: dict[str, Any] | None = None,
           headers: dict[str, Any] | None = None) -> BlockingChannel:
    ch = conn.channel()
    ch.queue_declare(name, durable=True, arguments={**S, **(args or {})})
    if n:
        ch.confirm_delivery()
        for i in range(n):
            ch.basic_publish("", name, b"m%d" % i, pika.BasicProperties(headers=headers))
    return ch


def consume(conn: pika.BlockingConnection, name: str, offset: Any = None, *, prefetch: int = 100, ack: bool = True,
            wait: float = 0.5, until: int | None = None) -> list[tuple[Any, Any, bytes]]:
    """(method, properties, body) of what a consumer from ``offset`` gets within ``wait``
    seconds (or once it has ``until`` messages)."""
    ch = conn.channel()
    if until is not None:
        # exactly ``until`` deliveries, none left unacked: pika's channel.close rejects what
        # its consumer has not processed, and a reject closes the connection (540) on a stream
        prefetch, ack = until, False
    ch.basic_qos(prefetch_count=prefetch)
    got: list[tuple[Any, Any, bytes]] = []

    def cb(c: BlockingChannel, m: Any, p: Any, b: bytes) -> None:
        got.append((m, p, b))
        if ack or len(got) == until:
            c.basic_ack(m.delivery_tag, multiple=not ack)

    ch.basic_consume(name, cb, arguments={} if offset is None else {"x-stream-offset": offset})
    deadline = time.monotonic() + (wait if until is None else 10)
    while time.monotonic() < deadline and (until is None or len(got) < until):
        conn.process_data_events(0.05)
    ch.close()
    return got


def offsets(got: list[tuple[Any, Any, bytes]]) -> list[int]:
    return [p.headers["x-stream-offset"] for _, p, _ in got]


def declare_error(conn: pika.BlockingConnection, name: str, durable: bool = True, exclusive: bool = False,
                  auto_delete: bool = False, args: dict[str, Any] | None = None) -> tuple[int, str]:
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as ei:
        ch.queue_declare(name, durable=durable, exclusive=exclusive, auto_delete=auto_delete, arguments=args)
    assert conn.is_open  # a channel error
    return ei.value.reply_code, ei.value.reply_text


def vh(conn: pika.BlockingConnection) -> str:
    return conn._impl.params.virtual_host  # type: ignore[no-any-return]


# ---------------------------------------------------------------- declare


@pytest.mark.parametrize(
    "kw, prop",
    [({"durable": False}, "non-durable"), ({"exclusive": True}, "exclusive-owner"), ({"auto_delete": True}, "auto-delete")],
)
def test_a_stream_is_durable_only(conn: pika.BlockingConnection, names: Any, kw: dict[str, bool], prop: str) -> None:
    n = names()
    code, text = declare_error(conn, n, args=S, **kw)
    assert (code, text) == (406, f"PRECONDITION_FAILED - invalid property '{prop}' for queue '{n}' in vhost '{vh(conn)}'")


@pytest.mark.parametrize(
    "arg, value",
    [("x-max-priority", 5), ("x-max-length", 5), ("x-message-ttl", 5), ("x-expires", 5), ("x-dead-letter-exchange", "x"),
     ("x-overflow", "drop-head"), ("x-single-active-consumer", True), ("x-queue-mode", "lazy"), ("x-delivery-limit", 3)],
)
def test_arguments_a_stream_does_not_support_are_refused(conn: pika.BlockingConnection, names: Any, arg: str, value: Any) -> None:
    n = names()
    code, text = declare_error(conn, n, args={**S, arg: value})
    assert (code, text) == (
        406, f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{n}' in vhost '{vh(conn)}' of queue type rabbit_stream_queue"
    )


@pytest.mark.parametrize(
    "arg, value, why",
    [("x-max-length-bytes", "x", '"expected integer, got longstr"'), ("x-max-length-bytes", -1, "{value_negative,-1}"),
     ("x-max-age", "7X", "invalid_max_age"), ("x-max-age", "0D", "invalid_max_age"), ("x-max-age", "10", "invalid_max_age"),
     ("x-max-age", 70000, "{unacceptable_type,signedint}"),
     ("x-stream-max-segment-size-bytes", "x", '"expected integer, got longstr"'),
     ("x-stream-max-segment-size-bytes", -1, "{value_negative,-1}"),
     ("x-initial-cluster-size", "x", '"expected integer, got longstr"'), ("x-initial-cluster-size", 0, "{value_zero,0}")],
)
def test_ill_typed_retention_arguments_are_refused(conn: pika.BlockingConnection, names: Any, arg: str, value: Any,
                                                   why: str) -> None:
    n = names()
    code, text = declare_error(conn, n, args={**S, arg: value})
    assert (code, text) == (406, f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{n}' in vhost '{vh(conn)}': {why}")


def test_segment_size_limit(conn: pika.BlockingConnection, names: Any) -> None:
    n = names()
    assert declare_error(conn, n, args={**S, "x-stream-max-segment-size-bytes": 4_000_000_000}) == (
        406, "PRECONDITION_FAILED - Exceeded max value for x-stream-max-segment-size-bytes")
    conn.channel().queue_declare(n, durable=True, arguments={**S, "x-stream-max-segment-size-bytes": 3_000_000_000})


@pytest.mark.parametrize("age", ["7D", "1h", "1Y", "5M", "30m", "10s"])
def test_retention_arguments_are_accepted(conn: pika.BlockingConnection, names: Any, age: str) -> None:
    n = names()
    ok = conn.channel().queue_declare(n, durable=True, arguments={
        **S, "x-max-age": age, "x-max-length-bytes": 10**9, "x-stream-max-segment-size-bytes": 10**7,
        "x-initial-cluster-size": 1,
    })
    assert (ok.method.message_count, ok.method.consumer_count) == (0, 0)


def test_a_redeclare_with_another_type_or_retention_is_refused(conn: pika.BlockingConnection, names: Any) -> None:
    n = names()
    stream(conn, n)
    v = vh(conn)
    assert declare_error(conn, n) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{n}' in vhost '{v}': "
        "received none but current is the value 'stream' of type 'longstr'")
    assert declare_error(conn, n, args={"x-queue-type": "quorum"}) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{n}' in vhost '{v}': "
        "received 'quorum' but current is 'stream'")
    assert declare_error(conn, n, args={**S, "x-max-age": "1h"}) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue '{n}' in vhost '{v}': "
        "received the value '1h' of type 'longstr' but current is none")
    conn.channel().queue_declare(n, durable=True, arguments=S)  # the same declaration is fine


# ---------------------------------------------------------------- refused operations


def conn_error(amqp_url: str, fn: Any) -> tuple[int, str]:
    c = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = c.channel()
        with pytest.raises((ConnectionClosedByBroker, ChannelClosedByBroker)) as ei:
            fn(c, ch)
            ch.queue_declare("", exclusive=True)  # (a round trip: an error arrives before its answer)
        kind = "connection" if isinstance(ei.value, ConnectionClosedByBroker) else "channel"
        assert (kind == "connection") == (not c.is_open)
        return ei.value.reply_code, ei.value.reply_text  # type: ignore[union-attr]
    finally:
        if c.is_open:
            c.close()


def test_refused_operations(conn: pika.BlockingConnection, amqp_url: str, names: Any) -> None:
    n = names()
    stream(conn, n, 3)
    where = f"queue '{n}' in vhost '{vh(conn)}'"

    def qos(ch: BlockingChannel, g: bool = False) -> None:
        ch.basic_qos(prefetch_count=10, global_qos=g)

    noop = lambda *a: None  # noqa: E731
    assert conn_error(amqp_url, lambda c, ch: ch.basic_get(n)) == (540, f"NOT_IMPLEMENTED - basic.get not supported by stream queues {where}")
    assert conn_error(amqp_url, lambda c, ch: ch.queue_purge(n)) == (540, f"NOT_IMPLEMENTED - queue.purge not supported by stream queues {where}")
    assert conn_error(amqp_url, lambda c, ch: ch.basic_consume(n, noop)) == (
        406, f"PRECONDITION_FAILED - consumer prefetch count is not set for '{where}'")
    assert conn_error(amqp_url, lambda c, ch: (qos(ch, True), ch.basic_consume(n, noop))) == (
        406, f"PRECONDITION_FAILED - consumer prefetch count is not set for '{where}'")
    assert conn_error(amqp_url, lambda c, ch: (qos(ch), ch.basic_consume(n, noop, auto_ack=True))) == (
        540, f"NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues {where}")
    assert conn_error(amqp_url, lambda c, ch: (qos(ch), qos(ch, True), ch.basic_consume(n, noop))) == (
        540, f"NOT_IMPLEMENTED - {where} does not support global qos")
    def offset(value: Any) -> Any:
        return lambda c, ch: (qos(ch), ch.basic_consume(n, noop, arguments={"x-stream-offset": value}))

    for bad in ("bogus", "h", "", True, {"a": 1}, [1], b"1h"):
        assert conn_error(amqp_url, offset(bad)) == (541, "INTERNAL_ERROR")
    for bad in ("5", "7X", "0D", "1h "):
        assert conn_error(amqp_url, offset(bad)) == (
            406, f"PRECONDITION_FAILED - invalid arg 'x-stream-offset' for {where}: "
            f'{{invalid_stream_offset_arg,{{longstr,<<"{bad}">>}}}}')
    # (an invalid offset is found before the missing prefetch)
    assert conn_error(amqp_url, lambda c, ch: ch.basic_consume(n, noop, arguments={"x-stream-offset": "bogus"})) == (
        541, "INTERNAL_ERROR")
    for method in ("basic_nack", "basic_reject"):
        def settle(c: pika.BlockingConnection, ch: BlockingChannel, method: str = method) -> None:
            qos(ch)
            tags: list[int] = []
            ch.basic_consume(n, lambda ch_, m, p, b: tags.append(m.delivery_tag), arguments={"x-stream-offset": "first"})
            while not tags:
                c.process_data_events(0.05)
            getattr(ch, method)(tags[0])
        assert conn_error(amqp_url, settle) == (
            540, f"NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream queues {where}")
    assert conn_error(amqp_url, lambda c, ch: ch.basic_ack(99)) == (406, "PRECONDITION_FAILED - unknown delivery tag 99")
    # the stream is untouched by all of that
    assert offsets(consume(conn, n, "first", until=3)) == [0, 1, 2]


def test_exclusive_consume_is_not_exclusive_on_a_stream(conn: pika.BlockingConnection, names: Any) -> None:
    n = names()
    ch = stream(conn, n)
    ch.basic_qos(prefetch_count=5)
    ch.basic_consume(n, lambda *a: None, exclusive=True)
    ch.basic_consume(n, lambda *a: None)  # (RabbitMQ 3.10.8 accepts both)
    assert ch.is_open


# ---------------------------------------------------------------- offsets and deliveries


def test_offsets(conn: pika.BlockingConnection, names: Any) -> None:
    n = names()
    stream(conn, n, 10)
    assert offsets(consume(conn, n, "first", until=10)) == list(range(10))
    assert offsets(consume(conn, n, 3, until=7)) == list(range(3, 10))
    assert offsets(consume(conn, n, -5, until=10)) == list(range(10))
    assert consume(conn, n, 100) == []
    assert consume(conn, n, "next") == []
    assert consume(conn, n) == []
    # each publish with confirms was its own chunk: "last" is the last message
    assert offsets(consume(conn, n, "last", until=1)) == [9]
    past = datetime.datetime.fromtimestamp(time.time() - 60)
    assert offsets(consume(conn, n, past, until=10)) == list(range(10))
    assert consume(conn, n, datetime.datetime.fromtimestamp(time.time() + 60)) == []
    assert offsets(consume(conn, n, "1h", until=10)) == list(range(10))


def test_next_and_beyond_the_end(conn: pika.BlockingConnection, names: Any) -> None:
    n = names()
    pub = stream(conn, n, 2)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    got: dict[str, list[int]] = {"next": [], "far": [], "end": []}
    for key, off in (("next", "next"), ("far", 50), ("end", 2)):
        ch.basic_consume(n, lambda c, m, p, b, key=key: (got[key].append(p.headers["x-stream-offset"]), c.basic_ack(m.delivery_tag)),
                         arguments={"x-stream-offset": off})
    conn.process_data_events(0.2)
    for i in range(3):
        pub.basic_publish("", n, b"new%d" % i)
    deadline = time.monotonic() + 5
    while len(got["next"]) < 3 and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    conn.process_data_events(0.3)
    assert got == {"next": [2, 3, 4], "far": [], "end": [2, 3, 4]}


def test_deliveries_carry_the_offset_and_keep_every_other_property(conn: pika.BlockingConnection, names: Any) -> None:
    n = names()
    ch = stream(conn, n)
    ch.confirm_delivery()
    ch.basic_publish("", n, b"a", pika.BasicProperties(headers={"z": "x", "a": 1}, content_type="text/plain",
                                                        correlation_id="c1", delivery_mode=1))
    ch.basic_publish("", n, b"b", pika.BasicProperties(priority=3))
    got = consume(conn, n, "first", until=2)
    (m0, p0, b0), (m1, p1, b1) = got
    assert (b0, b1) == (b"a", b"b")
    assert list(p0.headers.items()) == [("a", 1), ("x-stream-offset", 0), ("z", "x")]  # sorted, as RabbitMQ
    assert (p0.content_type, p0.correlation_id, p0.delivery_mode) == ("text/plain", "c1", 1)
    assert p1.headers == {"x-stream-offset": 1} and p1.priority == 3
    assert not m0.redelivered and not m1.redelivered
    assert (m0.exchange, m0.routing_key) == ("", n)


def test_every_consumer_gets_every_message_and_replay_after_acks(conn: pika.BlockingConnection, names: Any) -> None:
    n = names()
    pub = stream(conn, n)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=50)
    got: list[list[bytes]] = [[], []]
    for i in range(2):
        ch.basic_consume(n, lambda c, m, p, b, i=i: (got[i].append(b), c.basic_ack(m.delivery_tag)))
    conn.process_data_events(0.2)
    pub.confirm_delivery()
    for i in range(20):
        pub.basic_publish("", n, b"m%d" % i)
    deadline = time.monotonic() + 5
    while (len(got[0]) < 20 or len(got[1]) < 20) and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    want = [b"m%d" % i for i in range(20)]
    assert got == [want, want]
    # a consumer from "first" after the others acked: the same messages at the same offsets
    again = consume(conn, n, "first", until=20)
    assert [b for _, _, b in again] == want and offsets(again) == list(range(20))


def test_prefetch_is_credit(conn: pika.BlockingConnection, names: Any) -> None:
    n = names()
    stream(conn, n, 10)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=3)
    got: list[Any] = []
    ch.basic_consume(n, lambda c, m, p, b: got.append(m), arguments={"x-stream-offset": "first"})
    conn.process_data_events(0.5)
    assert len(got) == 3  # no acks: no more credit
    ch.basic_ack(got[1].delivery_tag, multiple=True)
    deadline = time.monotonic() + 5
    while len(got) < 5 and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    conn.process_data_events(0.3)
    assert len(got) == 5
    for m in got[2:]:
        ch.basic_ack(m.delivery_tag)
    deadline = time.monotonic() + 5
    while len(got) < 10 and time.monotonic() < deadline:
        conn.process_data_events(0.05)
        for m in got[5:]:
            if m.delivery_tag > 0:
                ch.basic_ack(m.delivery_tag)
                m.delivery_tag = -m.delivery_tag
    assert len(got) == 10


# ---------------------------------------------------------------- counts and deletion


def test_counts_and_delete(conn: pika.BlockingConnection, names: Any) -> None:
    n = names()
    stream(conn, n, 5)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2)
    cancelled: list[Any] = []
    ch.add_on_cancel_callback(cancelled.append)
    ch.basic_consume(n, lambda *a: None, arguments={"x-stream-offset": "first"})
    ok = conn.channel().queue_declare(n, passive=True)
    assert (ok.method.message_count, ok.method.consumer_count) == (0, 0)
    deleted = conn.channel().queue_delete(n, if_empty=True)
    assert deleted.method.message_count == 0
    deadline = time.monotonic() + 5
    while not cancelled and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    assert len(cancelled) == 1
    with pytest.raises(ChannelClosedByBroker) as ei:
        conn.channel().queue_declare(n, passive=True)
    assert ei.value.reply_code == 404


# ---------------------------------------------------------------- retention


@needs_leveret
def test_max_length_bytes_removes_whole_segments_from_the_old_end(conn: pika.BlockingConnection, names: Any,
                                                                  broker: BrokerThread) -> None:
    n = names()
    body = b"x" * 1000
    ch = stream(conn, n, args={"x-max-length-bytes": 20_000, "x-stream-max-segment-size-bytes": 5_000})
    # a consumer positioned at the start, holding its credit (no acks)
    slow = conn.channel()
    slow.basic_qos(prefetch_count=1)
    held: list[Any] = []
    slow.basic_consume(n, lambda c, m, p, b: held.append(p.headers["x-stream-offset"]), arguments={"x-stream-offset": "first"})
    ch.confirm_delivery()
    for _ in range(100):
        ch.basic_publish("", n, body)
    conn.sleep(0.3)  # (retention runs when a segment fills up and on the 50 ms tick)
    q = broker.broker.vhosts["/"].queues[n]
    first = q.slog.first_offset
    assert 0 < first and q.slog.next_offset == 100
    assert q.slog.bytes <= 20_000
    assert held == [0]
    got = consume(conn, n, "first", until=100 - first)
    assert offsets(got) == list(range(first, 100))
    # the slow consumer continues from the new first offset
    slow.basic_ack(1)
    deadline = time.monotonic() + 5
    while len(held) < 2 and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    assert held == [0, first]
    slow.close()  # (processed, unacked: nothing for pika to reject)


@needs_leveret
def test_max_age_by_policy(conn: pika.BlockingConnection, names: Any, broker: BrokerThread) -> None:
    n = names()
    ch = stream(conn, n, args={"x-stream-max-segment-size-bytes": 4096})
    ch.confirm_delivery()
    for _ in range(20):
        ch.basic_publish("", n, b"y" * 1000)
    q = broker.broker.vhosts["/"].queues[n]
    assert q.slog.first_offset == 0
    time.sleep(1.1)
    ch.basic_publish("", n, b"y" * 1000)
    policy = make_policy("/", "ages", {"pattern": n, "definition": {"max-age": "1s"}, "apply-to": "queues"}, False)
    broker.call(lambda: q.vhost.set_policy(policy))
    deadline = time.monotonic() + 5
    while q.slog.first_offset < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 16 <= q.slog.first_offset <= 20  # only the active segment is left


# ---------------------------------------------------------------- raw frames: every integer type


@pytest.mark.parametrize("code, raw", [(b"b", b"\x02"), (b"B", b"\x02"), (b"s", b"\x00\x02"), (b"u", b"\x00\x02"),
                                       (b"I", b"\x00\x00\x00\x02"), (b"i", b"\x00\x00\x00\x02"),
                                       (b"l", b"\x00" * 7 + b"\x02")])
def test_an_integer_offset_of_any_integer_type(amqp_url: str, conn: pika.BlockingConnection, names: Any, code: bytes,
                                               raw: bytes) -> None:
    """A client library picks the integer type; the offset is read from any of them (raw
    frames: pika always sends 'I' or 'l')."""
    import struct
    from urllib.parse import unquote, urlparse

    from pamqp import commands as C

    from tests.rawamqp import RawClient, build_frame

    n = names()
    stream(conn, n, 5)
    u = urlparse(amqp_url)
    with RawClient.connect(u.port or 5672, u.hostname or "127.0.0.1") as raw_client:
        raw_client.handshake(vhost=unquote(u.path[1:]) or "/")
        raw_client.open_channel(1)
        raw_client.rpc(1, C.Basic.Qos(prefetch_count=10), C.Basic.QosOk)
        table = b"\x0fx-stream-offset" + code + raw
        payload = (struct.pack(">HHH", 60, 20, 0) + bytes([len(n)]) + n.encode() + b"\x03tag" + b"\x00"
                   + struct.pack(">I", len(table)) + table)
        raw_client.send(build_frame(1, 1, payload))
        raw_client.expect(C.Basic.ConsumeOk, 1)
        deliver = raw_client.expect(C.Basic.Deliver, 1)
        header, _, body = raw_client.read_content(1)
        assert (body, header.properties.headers["x-stream-offset"], deliver.redelivered) == (b"m2", 2, False)


# ---------------------------------------------------------------- aio-pika (FastStream's client)


async def test_aio_pika_replays_a_stream(amqp_url: str, names: Any) -> None:
    import asyncio

    import aio_pika

    n = names()
    conn = await aio_pika.connect(amqp_url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        q = await ch.declare_queue(n, durable=True, arguments={"x-queue-type": "stream", "x-max-age": "1D"})
        for i in range(5):
            await ch.default_exchange.publish(aio_pika.Message(b"e%d" % i, headers={"k": i}), routing_key=n)
        readers = []
        for _ in range(2):  # two consumers: each gets everything
            c = await conn.channel()
            await c.set_qos(prefetch_count=10)
            readers.append(await c.get_queue(n, ensure=False))
        got: list[list[tuple[int, int, bytes]]] = [[], []]
        for i, rq in enumerate(readers):
            async def on(m: aio_pika.abc.AbstractIncomingMessage, i: int = i) -> None:
                got[i].append((m.headers["x-stream-offset"], m.headers["k"], m.body))
                await m.ack()
            await rq.consume(on, arguments={"x-stream-offset": "first"})
        for _ in range(100):
            if all(len(g) == 5 for g in got):
                break
            await asyncio.sleep(0.05)
        want = [(i, i, b"e%d" % i) for i in range(5)]
        assert got == [want, want]
        assert q.declaration_result.message_count == 0
    finally:
        await conn.close()


def test_large_messages_span_frames(conn: pika.BlockingConnection, names: Any) -> None:
    n = names()
    ch = stream(conn, n)
    ch.confirm_delivery()
    bodies = [bytes([i]) * size for i, size in enumerate((300_000, 10, 131_064, 131_065, 0, 1_000_000))]
    for b in bodies:
        ch.basic_publish("", n, b)
    got = consume(conn, n, "first", until=len(bodies))
    assert [b for _, _, b in got] == bodies and offsets(got) == list(range(len(bodies)))
