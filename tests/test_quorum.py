"""Quorum queues (issue 22) through pika, against a broker with a data directory: the
declare rules and their texts, the delivery count and limit, where returns go,
reject-publish, global qos and queue.delete flags, persistence.

Every expectation here was taken from RabbitMQ 3.10.8.  With LEVERET_REFERENCE_URL set
(e.g. ``amqp://guest:guest@127.0.0.1:5672/some-vhost``), the tests that need no broker
restart run against that broker instead, to check them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker, NackError

from leveret.broker import Config
from leveret.testing import BrokerThread
from tests.reference import REFERENCE as REF  # noqa: E402

Q = {"x-queue-type": "quorum"}


@pytest.fixture
def amqp_url(tmp_path: Path) -> Iterator[str]:
    if REF:
        yield REF
        return
    with BrokerThread(Config(port=0, data_dir=str(tmp_path / "data"), fsync_interval=0.05)) as b:
        yield b.url


@pytest.fixture
def conn(amqp_url: str) -> Iterator[pika.BlockingConnection]:
    c = pika.BlockingConnection(pika.URLParameters(amqp_url))
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def names(amqp_url: str) -> Iterator[Any]:
    """Unique queue names, deleted after the test."""
    made: list[str] = []

    def name(prefix: str = "qq") -> str:
        n = f"{prefix}-{uuid.uuid4().hex[:8]}"
        made.append(n)
        return n

    yield name
    c = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = c.channel()
    for n in made:
        ch.queue_delete(n)
    c.close()


def declare_error(conn: pika.BlockingConnection, name: str, durable: bool = True, exclusive: bool = False,
                  auto_delete: bool = False, args: dict[str, Any] | None = None) -> tuple[int, str]:
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as ei:
        ch.queue_declare(name, durable=durable, exclusive=exclusive, auto_delete=auto_delete, arguments=args)
    assert conn.is_open  # a channel error
    return ei.value.reply_code, ei.value.reply_text


def wait_count(ch: BlockingChannel, q: str, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while ch.queue_declare(q, passive=True).method.message_count != n:
        assert time.monotonic() < deadline, f"{q} never reached {n} messages"
        ch.connection.sleep(0.02)


def vh(url: str) -> str:
    return pika.URLParameters(url).virtual_host


# ---------------------------------------------------------------------------- declare


def test_declare_properties_refused(conn: pika.BlockingConnection, amqp_url: str) -> None:
    v = vh(amqp_url)
    where = f"queue 'qp' in vhost '{v}'"
    assert declare_error(conn, "qp", durable=False, args=Q) == (406, f"PRECONDITION_FAILED - invalid property 'non-durable' for {where}")
    assert declare_error(conn, "qp", exclusive=True, args=Q) == (406, f"PRECONDITION_FAILED - invalid property 'exclusive-owner' for {where}")
    assert declare_error(conn, "qp", auto_delete=True, args=Q) == (406, f"PRECONDITION_FAILED - invalid property 'auto-delete' for {where}")
    assert declare_error(conn, "qp", durable=False, exclusive=True, auto_delete=True, args=Q) == (
        406, f"PRECONDITION_FAILED - invalid property 'auto-delete' for {where}")
    assert declare_error(conn, "", args=Q) == (
        406, "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue")


@pytest.mark.parametrize("arg,value", [
    ("x-max-priority", 5), ("x-max-priority", "a"), ("x-queue-mode", "lazy"), ("x-queue-master-locator", "min-masters"),
    ("x-queue-version", 2), ("x-max-age", "1D"), ("x-stream-max-segment-size-bytes", 5), ("x-initial-cluster-size", 3),
])
def test_declare_unsupported_arguments(conn: pika.BlockingConnection, amqp_url: str, arg: str, value: Any) -> None:
    # refused as unsupported whatever the value, and before the durability rules
    assert declare_error(conn, "qa", durable=False, args={**Q, arg: value}) == (
        406, f"PRECONDITION_FAILED - invalid arg '{arg}' for queue 'qa' in vhost '{vh(amqp_url)}' of queue type rabbit_quorum_queue")


def test_declare_argument_values(conn: pika.BlockingConnection, amqp_url: str, names: Any) -> None:
    where = f"queue 'qv' in vhost '{vh(amqp_url)}'"
    assert declare_error(conn, "qv", args={**Q, "x-dead-letter-strategy": "foo"}) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-dead-letter-strategy' for {where}: invalid_dlx_strategy")
    assert declare_error(conn, "qv", args={**Q, "x-dead-letter-strategy": True}) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-dead-letter-strategy' for {where}: {{unacceptable_type,bool}}")
    assert declare_error(conn, "qv", args={**Q, "x-overflow": "foo", "x-max-priority": 1}) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-overflow' for {where}: invalid_overflow")
    assert declare_error(conn, "qv", args={**Q, "x-max-in-memory-length": "a"}) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-max-in-memory-length' for {where}: \"expected integer, got longstr\"")
    for arg, value, why in (
        ("x-quorum-initial-group-size", "a", '"expected integer, got longstr"'),
        ("x-quorum-initial-group-size", -1, "{value_negative,-1}"),
        ("x-quorum-initial-group-size", 0, "{value_zero,0}"),
        ("x-queue-leader-locator", "min-masters", "invalid_queue_locator_arg"),
        ("x-queue-leader-locator", True, "{unacceptable_type,bool}"),
        ("x-max-in-memory-bytes", -1, "{value_negative,-1}"),
    ):
        assert declare_error(conn, "qv", args={**Q, arg: value}) == (
            406, f"PRECONDITION_FAILED - invalid arg '{arg}' for {where}: {why}")
    ch = conn.channel()
    for args in ({"x-dead-letter-strategy": "at-least-once", "x-dead-letter-exchange": "dlx"},
                 {"x-dead-letter-strategy": "at-most-once"}, {"x-overflow": "reject-publish-dlx", "x-max-length": 1},
                 {"x-delivery-limit": 3}, {"x-max-in-memory-length": 5, "x-max-in-memory-bytes": 5},
                 {"x-quorum-initial-group-size": 3}, {"x-queue-leader-locator": "random"},
                 {"x-queue-leader-locator": "least-leaders"}, {"x-single-active-consumer": True, "x-message-ttl": 1000,
                 "x-expires": 100000, "x-max-length-bytes": 10}, {"x-queue-leader-locator": "balanced"},
                 {"x-unknown": 1}):
        ch.queue_declare(names(), durable=True, arguments={**Q, **args})


def test_redeclare_equivalence(conn: pika.BlockingConnection, amqp_url: str, names: Any) -> None:
    ch = conn.channel()
    q, c = names(), names()
    ch.queue_declare(q, durable=True, arguments={**Q, "x-delivery-limit": 3, "x-dead-letter-strategy": "at-most-once"})
    ch.queue_declare(c, durable=True)
    where = f"queue '{q}' in vhost '{vh(amqp_url)}'"
    base = {**Q, "x-delivery-limit": 3, "x-dead-letter-strategy": "at-most-once"}
    assert declare_error(conn, q, args={"x-delivery-limit": 3, "x-dead-letter-strategy": "at-most-once"}) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for {where}: received none but current is the value 'quorum' of type 'longstr'")
    assert declare_error(conn, q, args={**base, "x-queue-type": "classic"}) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for {where}: received 'classic' but current is 'quorum'")
    assert declare_error(conn, q, args={**base, "x-delivery-limit": 4}) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for {where}: received '4' but current is '3'")
    assert declare_error(conn, q, args={**base, "x-dead-letter-strategy": "at-least-once"}) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-strategy' for {where}: received 'at-least-once' but current is 'at-most-once'")
    assert declare_error(conn, c, args=Q) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{c}' in vhost '{vh(amqp_url)}': received the value 'quorum' of type 'longstr' but current is none")
    ch = conn.channel()
    ch.queue_declare(q, durable=True, arguments={**base, "x-unknown": 7})  # an unknown argument is not compared


# ---------------------------------------------------------------------------- delivery count


def publish(ch: BlockingChannel, q: str, n: int, headers: dict[str, Any] | None = None) -> None:
    for i in range(n):
        ch.basic_publish("", q, f"m{i}".encode(), pika.BasicProperties(headers=headers))
    wait_count(ch, q, n)


def test_get_sets_delivery_count_and_returns_go_to_the_tail(conn: pika.BlockingConnection, names: Any) -> None:
    ch = conn.channel()
    q = names()
    ch.queue_declare(q, durable=True, arguments=Q)
    publish(ch, q, 4, {"z": 1, "a": 2})
    got = [ch.basic_get(q) for _ in range(3)]
    assert [b for _, _, b in got] == [b"m0", b"m1", b"m2"]
    assert all(list(p.headers.items()) == [("a", 2), ("x-delivery-count", 0), ("z", 1)] for _, p, _ in got)
    assert [m.redelivered for m, _, _ in got] == [False] * 3
    for i in (2, 0, 1):  # returned in this order: behind m3, in the order returned
        ch.basic_nack(got[i][0].delivery_tag, requeue=True)
    wait_count(ch, q, 4)
    out = []
    for _ in range(4):
        m, p, b = ch.basic_get(q)
        out.append((b.decode(), m.redelivered, p.headers["x-delivery-count"], m.message_count))
    assert out == [("m3", False, 0, 3), ("m2", True, 1, 2), ("m0", True, 1, 1), ("m1", True, 1, 0)]
    # the channel closing returns its 4 unacked messages: each counts one more
    ch.close()
    ch = conn.channel()
    wait_count(ch, q, 4)
    m, p, b = ch.basic_get(q, auto_ack=True)
    assert (b, m.redelivered, p.headers["x-delivery-count"]) == (b"m3", True, 1)


def test_with_a_delivery_limit_returns_go_ahead_and_die_with_reason_delivery_limit(
    conn: pika.BlockingConnection, names: Any
) -> None:
    ch = conn.channel()
    q, dlq, dlx = names(), names(), names("dlx")
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    ch.queue_declare(dlq, durable=True)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, durable=True, arguments={**Q, "x-delivery-limit": 2, "x-dead-letter-exchange": dlx})
    publish(ch, q, 3, {"h": 1})
    seen = []
    for _ in range(8):
        m, p, b = ch.basic_get(q)
        if m is None:
            break
        seen.append((b.decode(), m.redelivered, p.headers["x-delivery-count"]))
        ch.basic_nack(m.delivery_tag, requeue=True)
    assert seen == [("m0", False, 0), ("m0", True, 1), ("m0", True, 2), ("m1", False, 0), ("m1", True, 1),
                    ("m1", True, 2), ("m2", False, 0), ("m2", True, 1)]
    wait_count(ch, dlq, 2)
    wait_count(ch, q, 1)
    for body in (b"m0", b"m1"):
        m, p, b = ch.basic_get(dlq, auto_ack=True)
        assert b == body
        assert "x-delivery-count" not in p.headers
        assert p.headers["h"] == 1
        assert p.headers["x-first-death-reason"] == "delivery_limit"
        assert p.headers["x-first-death-queue"] == q
        death = p.headers["x-death"][0]
        assert (death["reason"], death["queue"], death["count"], death["routing-keys"]) == ("delivery_limit", q, 1, [q])


def test_consumer_first_delivery_has_no_count_and_limit_drops(conn: pika.BlockingConnection, names: Any) -> None:
    ch = conn.channel()
    q, q2 = names(), names()
    ch.queue_declare(q, durable=True, arguments={**Q, "x-delivery-limit": 1})
    ch.queue_declare(q2, durable=True, arguments=Q)
    for body in (b"a", b"b"):
        ch.basic_publish("", q, body)
        ch.basic_publish("", q2, body)
    wait_count(ch, q, 2)
    wait_count(ch, q2, 2)
    for queue, n_seen, expected in (
        # with a delivery limit: the return comes back first; past the limit it is dropped
        (q, 6, [(b"a", False, None), (b"a", True, 1), (b"b", False, None), (b"b", True, 1)]),
        # without: behind the other message
        (q2, 5, [(b"a", False, None), (b"b", False, None), (b"a", True, 1), (b"b", True, 1), (b"a", True, 2)]),
    ):
        seen: list[Any] = []

        def cb(c: BlockingChannel, m: Any, p: Any, b: bytes, seen: list[Any] = seen, n: int = n_seen) -> None:
            seen.append((b, m.redelivered, (p.headers or {}).get("x-delivery-count")))
            if len(seen) < n:
                c.basic_reject(m.delivery_tag, requeue=True)

        cch = conn.channel()
        cch.basic_qos(prefetch_count=1)
        cch.basic_consume(queue, cb)
        deadline = time.monotonic() + 5
        while len(seen) < len(expected) and time.monotonic() < deadline:
            conn.process_data_events(0.05)
        conn.process_data_events(0.2)
        assert seen == expected
        cch.close()
    assert ch.queue_declare(q, passive=True).method.message_count == 0


# ---------------------------------------------------------------------------- limits, qos, delete


@pytest.mark.parametrize("args,acks,left,dead", [
    ({"x-max-length": 2, "x-overflow": "reject-publish"}, 3, ["m0", "m1", "m2"], []),
    ({"x-max-length-bytes": 4, "x-overflow": "reject-publish"}, 3, ["m0", "m1", "m2"], []),
    ({"x-max-length": 0, "x-overflow": "reject-publish"}, 1, ["m0"], []),
    ({"x-max-length": 2, "x-overflow": "reject-publish-dlx"}, 5, ["m3", "m4"], ["m0", "m1", "m2"]),
    ({"x-max-length": 2}, 5, ["m3", "m4"], ["m0", "m1", "m2"]),
])
def test_overflow(conn: pika.BlockingConnection, names: Any, args: dict[str, Any], acks: int, left: list[str],
                  dead: list[str]) -> None:
    ch = conn.channel()
    q, dlq, dlx = names(), names(), names("dlx")
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    ch.queue_declare(dlq, durable=True)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, durable=True, arguments={**Q, "x-dead-letter-exchange": dlx, **args})
    ch.confirm_delivery()
    res = []
    for i in range(5):
        try:
            ch.basic_publish("", q, f"m{i}".encode())
            res.append(True)
        except NackError:
            res.append(False)
    assert res == [True] * acks + [False] * (5 - acks)
    wait_count(ch, dlq, len(dead))
    out = []
    while (g := ch.basic_get(q, auto_ack=True))[0] is not None:
        out.append(g[2].decode())
    assert out == left
    dl = []
    while (g := ch.basic_get(dlq, auto_ack=True))[0] is not None:
        dl.append((g[2].decode(), g[1].headers["x-death"][0]["reason"]))
    assert dl == [(d, "maxlen") for d in dead]


def test_global_qos_consume_closes_the_connection(amqp_url: str, names: Any) -> None:
    q = names()
    c = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = c.channel()
    ch.queue_declare(q, durable=True, arguments=Q)
    ch.basic_qos(prefetch_count=0, global_qos=True)  # no limit: allowed
    ch.basic_cancel(ch.basic_consume(q, lambda *a: None))
    ch.basic_qos(prefetch_count=5, global_qos=True)
    ch.basic_get(q)  # basic.get is fine
    with pytest.raises(ConnectionClosedByBroker) as ei:
        ch.basic_consume(q, lambda *a: None)
        c.process_data_events(1)
    assert (ei.value.reply_code, ei.value.reply_text) == (
        540, f"NOT_IMPLEMENTED - queue '{q}' in vhost '{vh(amqp_url)}' does not support global qos")


@pytest.mark.parametrize("flag", ["if_unused", "if_empty"])
def test_delete_flags_close_the_connection(amqp_url: str, names: Any, flag: str) -> None:
    q = names()
    c = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = c.channel()
    ch.queue_declare(q, durable=True, arguments=Q)
    with pytest.raises(ConnectionClosedByBroker) as ei:
        ch.queue_delete(q, **{flag: True})
    text = flag.replace("_", "-")
    assert (ei.value.reply_code, ei.value.reply_text) == (
        540, f"NOT_IMPLEMENTED - cannot delete queue '{q}' in vhost '{vh(amqp_url)}'. queue.delete operations with "
             f"{text} flag set are not supported by quorum queues")


def test_purge_and_delete_counts(conn: pika.BlockingConnection, names: Any) -> None:
    ch = conn.channel()
    q = names()
    ch.queue_declare(q, durable=True, arguments=Q)
    publish(ch, q, 4)
    m, _, _ = ch.basic_get(q)
    assert ch.queue_declare(q, passive=True).method.message_count == 3  # ready only
    assert ch.queue_purge(q).method.message_count == 3
    ch.basic_nack(m.delivery_tag, requeue=True)
    wait_count(ch, q, 1)
    m, p, b = ch.basic_get(q, auto_ack=True)
    assert (b, p.headers["x-delivery-count"]) == (b"m0", 1)
    publish(ch, q, 3)
    assert ch.queue_delete(q).method.message_count == 3


# ---------------------------------------------------------------------------- persistence


@pytest.mark.skipif(bool(REF), reason="restarts the broker")
def test_transient_messages_and_delivery_counts_survive_a_restart(tmp_path: Path) -> None:
    cfg = Config(port=0, data_dir=str(tmp_path / "data"), fsync_interval=0.05)
    with BrokerThread(cfg) as b:
        c = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = c.channel()
        ch.queue_declare("qr", durable=True, arguments={**Q, "x-delivery-limit": 5})
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", "qr", f"m{i}".encode())  # delivery mode 1: persisted all the same
        for _ in range(2):
            m, _, _ = ch.basic_get("qr")
            ch.basic_nack(m.delivery_tag, requeue=True)  # m0 returned twice
        c.close()
    with BrokerThread(cfg) as b:  # a new broker on the same data directory
        c = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = c.channel()
        wait_count(ch, "qr", 3)
        got = []
        while (g := ch.basic_get("qr", auto_ack=True))[0] is not None:
            got.append((g[2], g[1].headers["x-delivery-count"]))
        assert sorted(got) == [(b"m0", 2), (b"m1", 0), (b"m2", 0)]
        ch.queue_delete("qr")
        c.close()


@pytest.mark.skipif(bool(REF), reason="looks inside the broker")
def test_a_return_goes_behind_the_messages_paged_out(tmp_path: Path) -> None:
    n = 25_000  # past the 20,000 ready messages a queue keeps in RAM
    with BrokerThread(Config(port=0, data_dir=str(tmp_path / "data"))) as b:
        c = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = c.channel()
        ch.queue_declare("qpage", durable=True, arguments=Q)
        for i in range(n):
            ch.basic_publish("", "qpage", b"%d" % i)
        wait_count(ch, "qpage", n, timeout=30)
        assert b.broker is not None
        store = b.broker.vhosts["/"].queues["qpage"].store
        assert len(store.tail) > store.tail_start  # some are paged out
        m, _, _ = ch.basic_get("qpage")
        ch.basic_nack(m.delivery_tag, requeue=True)
        wait_count(ch, "qpage", n)
        out = []
        while (g := ch.basic_get("qpage", auto_ack=True))[0] is not None:
            out.append((int(g[2]), g[0].redelivered, g[1].headers["x-delivery-count"]))
        assert [x[0] for x in out] == [*range(1, n), 0]
        assert out[-1] == (0, True, 1) and out[-2] == (n - 1, False, 0)
        c.close()


def test_rejected_and_expired_copies_carry_no_count_recover_and_connection_close_count(
    conn: pika.BlockingConnection, amqp_url: str, names: Any
) -> None:
    ch = conn.channel()
    q, qt, qn, qc, dlq, dlx = names(), names(), names(), names(), names(), names("dlx")
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    ch.queue_declare(dlq, durable=True)
    ch.queue_bind(dlq, dlx)
    dead = ["x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason"]
    # rejected after a return: dead-lettered without x-delivery-count
    ch.queue_declare(q, durable=True, arguments={**Q, "x-dead-letter-exchange": dlx})
    publish(ch, q, 1)
    m, _, _ = ch.basic_get(q)
    ch.basic_nack(m.delivery_tag, requeue=True)
    wait_count(ch, q, 1)
    m, p, _ = ch.basic_get(q)
    assert p.headers == {"x-delivery-count": 1}
    ch.basic_reject(m.delivery_tag, requeue=False)
    wait_count(ch, dlq, 1)
    m, p, _ = ch.basic_get(dlq, auto_ack=True)
    assert (sorted(p.headers), p.headers["x-death"][0]["reason"]) == (dead, "rejected")
    # basic.recover returns (and counts)
    publish(ch, q, 1)
    ch.basic_get(q)
    ch.basic_recover(requeue=True)
    wait_count(ch, q, 1)
    m, p, _ = ch.basic_get(q, auto_ack=True)
    assert (m.redelivered, p.headers) == (True, {"x-delivery-count": 1})
    # a returned message expiring: dead-lettered without x-delivery-count
    ch.queue_declare(qt, durable=True, arguments={**Q, "x-dead-letter-exchange": dlx, "x-message-ttl": 300})
    ch.basic_publish("", qt, b"t")
    wait_count(ch, qt, 1)
    m, _, _ = ch.basic_get(qt)
    ch.basic_nack(m.delivery_tag, requeue=True)
    wait_count(ch, dlq, 1)
    m, p, _ = ch.basic_get(dlq, auto_ack=True)
    assert (sorted(p.headers), p.headers["x-death"][0]["reason"]) == (dead, "expired")
    # a negative delivery limit: the first return goes
    ch.queue_declare(qn, durable=True, arguments={**Q, "x-dead-letter-exchange": dlx, "x-delivery-limit": -1})
    publish(ch, qn, 1)
    m, _, _ = ch.basic_get(qn)
    ch.basic_nack(m.delivery_tag, requeue=True)
    wait_count(ch, dlq, 1)
    assert ch.queue_declare(qn, passive=True).method.message_count == 0
    ch.queue_purge(dlq)
    # a consumer's connection closing returns its delivery: counted
    ch.queue_declare(qc, durable=True, arguments=Q)
    publish(ch, qc, 1)
    c2 = pika.BlockingConnection(pika.URLParameters(amqp_url))
    got: list[int] = []
    c2.channel().basic_consume(qc, lambda *a: got.append(1))
    while not got:
        c2.process_data_events(0.05)
    c2.close()
    wait_count(ch, qc, 1)
    m, p, _ = ch.basic_get(qc, auto_ack=True)
    assert (m.redelivered, p.headers) == (True, {"x-delivery-count": 1})


@pytest.mark.parametrize("args,first,then", [
    ({}, ["m3", "m2", "m0", "m1"], ["m4", "m3", "m2", "m0", "m1"]),
    ({"x-delivery-limit": 5}, ["m2", "m0", "m1", "m3"], ["m4", "m2", "m0", "m1", "m3"]),
])
def test_where_returns_go(conn: pika.BlockingConnection, names: Any, args: dict[str, Any], first: list[str],
                          then: list[str]) -> None:
    ch = conn.channel()
    q = names()
    ch.queue_declare(q, durable=True, arguments={**Q, **args})
    publish(ch, q, 4)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    for i in (2, 0, 1):
        ch.basic_nack(tags[i], requeue=True)
    wait_count(ch, q, 4)
    got = []
    for _ in range(4):
        m, _, b = ch.basic_get(q)
        got.append((m.delivery_tag, b.decode()))
    # m3 is taken back with the others in one multiple nack: behind, or after the returns
    # still waiting (m4 is one of those: returned alone, before)
    ch.basic_publish("", q, b"m4")
    wait_count(ch, q, 1)
    m4, _, _ = ch.basic_get(q)
    ch.basic_nack(m4.delivery_tag, requeue=True)
    wait_count(ch, q, 1)
    ch.basic_nack(got[-1][0], multiple=True, requeue=True)
    wait_count(ch, q, 5)
    out = []
    while (g := ch.basic_get(q, auto_ack=True))[0] is not None:
        out.append(g[2].decode())
    assert [b for _, b in got] == first
    assert out == then


def test_consumer_count_as_rabbit_fifo_counts(conn: pika.BlockingConnection, names: Any) -> None:
    ch = conn.channel()
    q = names()
    ch.queue_declare(q, durable=True, arguments=Q)
    publish(ch, q, 5)

    def count() -> int:
        return ch.queue_declare(q, passive=True).method.consumer_count

    ch2 = conn.channel()
    ch2.basic_qos(prefetch_count=2)
    got: list[int] = []
    tag = ch2.basic_consume(q, lambda c, m, p, b: got.append(m.delivery_tag))
    while len(got) < 2:
        conn.process_data_events(0.05)
    assert count() == 1
    ch2.basic_cancel(tag)
    conn.sleep(0.1)
    assert count() == 1  # cancelled, still holding two deliveries
    ch.basic_get(q, auto_ack=True)
    assert count() == 1  # a no-ack get is no consumer
    m1, _, _ = ch.basic_get(q)
    ch.basic_get(q)
    conn.sleep(0.1)
    assert count() == 3  # one per unacknowledged get
    ch.basic_ack(m1.delivery_tag)
    conn.sleep(0.1)
    assert count() == 2
    ch2.basic_ack(got[0])
    conn.sleep(0.1)
    assert count() == 2
    ch2.basic_ack(got[1])
    conn.sleep(0.1)
    assert count() == 1


def test_a_delivery_limit_policy_applies_to_a_quorum_queue(tmp_path: Path) -> None:
    """A ``delivery-limit`` policy (no x-delivery-limit argument) limits returns as the
    argument does, on a queue that exists before the policy (NServiceBus sets one at
    startup); the lower of argument and policy wins; deleting the policy lifts it."""
    from tests.httpapi import Api

    cfg = Config(port=0, http_port=0, data_dir=str(tmp_path / "data"), fsync_interval=0.05)
    with BrokerThread(cfg) as b:
        assert b.broker is not None and b.broker.http_port
        api = Api("127.0.0.1", b.broker.http_port)
        c = pika.BlockingConnection(pika.URLParameters(b.url))
        try:
            ch = c.channel()
            ch.exchange_declare("qq.dlx", "fanout")
            ch.queue_declare("qq.dead")
            ch.queue_bind("qq.dead", "qq.dlx")
            ch.queue_declare("qq.jobs", durable=True, arguments={**Q, "x-dead-letter-exchange": "qq.dlx"})
            body = {"pattern": r"^qq\.jobs$", "definition": {"delivery-limit": 1}, "apply-to": "queues"}
            assert api.call("PUT", "/policies/%2F/limit", body)[0] == 201
            assert api.get("/queues/%2F/qq.jobs")["effective_policy_definition"] == {"delivery-limit": 1}
            ch.basic_publish("", "qq.jobs", b"poison")
            counts = []
            for _ in range(3):  # delivered, returned once (count 1), returned again: over the limit
                m, p, _body = ch.basic_get("qq.jobs")
                if m is None:
                    break
                counts.append((p.headers or {}).get("x-delivery-count"))
                ch.basic_reject(m.delivery_tag, requeue=True)
            assert counts == [0, 1]
            wait_count(ch, "qq.dead", 1)
            m, p, dead = ch.basic_get("qq.dead", auto_ack=True)
            assert dead == b"poison" and p.headers["x-death"][0]["reason"] == "delivery_limit"
            # without the policy: no limit
            assert api.call("DELETE", "/policies/%2F/limit")[0] == 204
            ch.basic_publish("", "qq.jobs", b"again")
            for _ in range(4):
                m, p, _body = ch.basic_get("qq.jobs")
                assert m is not None
                ch.basic_reject(m.delivery_tag, requeue=True)
            assert ch.queue_declare("qq.dead", passive=True).method.message_count == 0
        finally:
            c.close()
