"""AMQP semantics through pika's BlockingConnection (broker in a background thread).

Every expectation was checked against RabbitMQ 3.10:
``LEVERET_REFERENCE_URL=amqp://guest:guest@127.0.0.1:5672/`` runs these tests against a
real RabbitMQ instead (the ones that need a Leveret of their own are skipped; see
tests/conftest.py).
"""

from __future__ import annotations

import os
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import pika
import pytest
from pamqp import commands as C
from pamqp import encode
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker, UnroutableError

from leveret.broker import Config
from leveret.testing import BrokerThread
from tests.polling import pump_until
from tests.rawamqp import RawClient, build_frame, method_frame, publish_frames
from tests.reference import REFERENCE, leveret_only


@pytest.fixture
def target_url(request: pytest.FixtureRequest) -> str:
    if REFERENCE:
        return REFERENCE
    return request.getfixturevalue("broker_thread").url


@pytest.fixture
def connect(target_url: str) -> Iterator[Callable[[], pika.BlockingConnection]]:
    """Open pika connections; every one still open is closed after the test."""
    conns: list[pika.BlockingConnection] = []

    def _connect() -> pika.BlockingConnection:
        conns.append(pika.BlockingConnection(pika.URLParameters(target_url)))
        return conns[-1]

    yield _connect
    for c in conns:
        if c.is_open:
            c.close()


@pytest.fixture
def conn(connect: Callable[[], pika.BlockingConnection]) -> pika.BlockingConnection:
    return connect()


@pytest.fixture
def ch(conn: pika.BlockingConnection) -> BlockingChannel:
    channel = conn.channel()
    channel.confirm_delivery()  # publishes are on the queue when basic_publish returns
    return channel


def unique(prefix: str) -> str:
    return f"test-{prefix}-{uuid.uuid4().hex[:10]}"


def closed_code(exc: pytest.ExceptionInfo[Any]) -> int:
    return exc.value.reply_code


def drain(channel: BlockingChannel, queue: str) -> list[bytes]:
    out = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def settle(conn: pika.BlockingConnection, seconds: float = 0.15) -> None:
    """Give the broker a moment to send anything more (it must not)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        conn.process_data_events(time_limit=left)


# ---------------------------------------------------------------------- exchanges


def test_exchange_declare_passive_and_flags(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    name = unique("x")
    ch.exchange_declare(name, "topic", durable=False, auto_delete=False)
    ch.exchange_declare(name, "topic", passive=True)
    ch.exchange_declare(name, "topic")  # same arguments: fine
    with pytest.raises(ChannelClosedByBroker) as ei:
        conn.channel().exchange_declare(unique("missing"), "topic", passive=True)
    assert closed_code(ei) == 404 and "NOT_FOUND - no exchange" in ei.value.reply_text
    ch.exchange_delete(name)


@pytest.mark.parametrize(
    "first,second,arg",
    [({"durable": False}, {"durable": True}, "durable"),
     ({"auto_delete": True}, {"auto_delete": False}, "auto_delete"),
     ({"internal": True}, {"internal": False}, "internal"),
     ({"arguments": {"alternate-exchange": "a"}}, {"arguments": {"alternate-exchange": "b"}}, "alternate-exchange")],
    ids=["durable", "auto_delete", "internal", "alternate-exchange"],
)
def test_exchange_equivalence_406(conn: pika.BlockingConnection, first: dict, second: dict, arg: str) -> None:
    name = unique("xeq")
    c1 = conn.channel()
    c1.exchange_declare(name, "direct", **first)
    with pytest.raises(ChannelClosedByBroker) as ei:
        conn.channel().exchange_declare(name, "direct", **second)
    assert closed_code(ei) == 406
    assert f"inequivalent arg '{arg}' for exchange '{name}'" in ei.value.reply_text
    c1.exchange_delete(name)


def test_amq_prefix_reserved_but_builtins_redeclarable(conn: pika.BlockingConnection) -> None:
    c = conn.channel()
    c.exchange_declare("amq.direct", "direct", durable=True)
    c.exchange_declare("amq.topic", "topic", passive=True)
    with pytest.raises(ChannelClosedByBroker) as ei:
        c.exchange_declare("amq.custom", "direct")
    assert closed_code(ei) == 403
    assert "exchange name 'amq.custom' contains reserved prefix 'amq.*'" in ei.value.reply_text
    with pytest.raises(ChannelClosedByBroker) as ei:
        conn.channel().exchange_delete("amq.fanout")
    assert closed_code(ei) == 403
    with pytest.raises(ChannelClosedByBroker) as ei:
        conn.channel().queue_declare("amq.q")
    assert closed_code(ei) == 403


def test_unknown_exchange_type_closes_the_connection_503(conn: pika.BlockingConnection) -> None:
    with pytest.raises(ConnectionClosedByBroker) as ei:
        conn.channel().exchange_declare(unique("x"), "no-such-type")
    assert closed_code(ei) == 503
    assert ei.value.reply_text == "COMMAND_INVALID - unknown exchange type 'no-such-type'"
    assert not conn.is_open


@pytest.mark.parametrize("op", ["declare", "declare-passive", "delete", "bind", "unbind"])
def test_default_exchange_is_off_limits_403(conn: pika.BlockingConnection, op: str) -> None:
    c = conn.channel()
    q = c.queue_declare("", exclusive=True).method.queue
    with pytest.raises(ChannelClosedByBroker) as ei:
        if op == "declare":
            c.exchange_declare("", "direct")
        elif op == "declare-passive":
            c.exchange_declare("", "direct", passive=True)
        elif op == "delete":
            c.exchange_delete("")
        elif op == "bind":
            c.queue_bind(q, "", routing_key="k")
        else:
            c.queue_unbind(q, "", routing_key="k")
    assert closed_code(ei) == 403
    assert ei.value.reply_text == "ACCESS_REFUSED - operation not permitted on the default exchange"


def test_publish_to_internal_exchange_403(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    internal, front = unique("internal"), unique("front")
    ch.exchange_declare(internal, "fanout", internal=True, auto_delete=True)
    ch.exchange_declare(front, "fanout", auto_delete=True)
    ch.exchange_bind(internal, front)  # reachable through an e2e binding
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, internal)
    ch.basic_publish(front, "", b"via front")
    assert drain(ch, q) == [b"via front"]
    with pytest.raises(ChannelClosedByBroker) as ei:
        ch.basic_publish(internal, "", b"direct")
    assert closed_code(ei) == 403
    assert f"cannot publish to internal exchange '{internal}'" in ei.value.reply_text


def test_exchange_delete_if_unused_and_missing(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    x = unique("xdel")
    ch.exchange_declare(x, "direct")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, x, routing_key="k")
    with pytest.raises(ChannelClosedByBroker) as ei:
        conn.channel().exchange_delete(x, if_unused=True)
    assert closed_code(ei) == 406 and f"exchange '{x}' in vhost '/' in use" in ei.value.reply_text
    ch.queue_unbind(q, x, routing_key="k")
    ch.exchange_delete(x, if_unused=True)
    ch.exchange_delete(x)  # missing: still delete-ok
    ch.queue_unbind(q, x, routing_key="k")  # missing exchange: unbind-ok
    ch.queue_unbind(unique("noq"), "amq.direct", routing_key="k")  # missing queue too
    with pytest.raises(ChannelClosedByBroker) as ei:
        ch.exchange_declare(x, "direct", passive=True)
    assert closed_code(ei) == 404


def test_auto_delete_exchange_goes_with_its_last_binding(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    x = unique("xauto")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    ch.exchange_declare(x, "fanout", passive=True)  # no binding yet: still there
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q1, x)
    ch.queue_bind(q2, x)
    ch.queue_unbind(q1, x)
    ch.exchange_declare(x, "fanout", passive=True)  # one binding left
    ch.queue_unbind(q2, x)
    with pytest.raises(ChannelClosedByBroker) as ei:
        ch.exchange_declare(x, "fanout", passive=True)
    assert closed_code(ei) == 404


def test_exchange_to_exchange_bind_unbind_routing(ch: BlockingChannel) -> None:
    src, dst = unique("src"), unique("dst")
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "direct", auto_delete=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, dst, routing_key="a.b")
    ch.exchange_bind(dst, src, routing_key="a.*")
    ch.basic_publish(src, "a.b", b"1")  # src -> dst -> q
    ch.basic_publish(src, "a.c", b"2")  # src -> dst, no queue binding for a.c
    ch.basic_publish(src, "b.b", b"3")  # src: no match
    assert drain(ch, q) == [b"1"]
    ch.exchange_unbind(dst, src, routing_key="a.*")
    ch.basic_publish(src, "a.b", b"4")
    ch.basic_publish(dst, "a.b", b"5")
    assert drain(ch, q) == [b"5"]
    ch.exchange_delete(src)


def test_alternate_exchange_gets_unroutable_messages(ch: BlockingChannel) -> None:
    main, ae = unique("main"), unique("ae")
    ch.exchange_declare(ae, "fanout", auto_delete=True)
    ch.exchange_declare(main, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
    q_main = ch.queue_declare("", exclusive=True).method.queue
    q_ae = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_main, main, routing_key="known")
    ch.queue_bind(q_ae, ae)
    ch.basic_publish(main, "known", b"routed")
    ch.basic_publish(main, "unknown", b"to-ae", mandatory=True)  # the AE routes it: no return
    assert drain(ch, q_main) == [b"routed"]
    assert drain(ch, q_ae) == [b"to-ae"]


# ---------------------------------------------------------------------- queues


def test_queue_declare_server_named_and_counts(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    ok = ch.queue_declare("", exclusive=True).method
    name = ok.queue
    assert name.startswith("amq.gen-") and len(name) == len("amq.gen-") + 22
    assert (ok.message_count, ok.consumer_count) == (0, 0)
    for i in range(3):
        ch.basic_publish("", name, b"%d" % i)
    other = conn.channel()
    other.basic_qos(prefetch_count=1)
    other.basic_consume(name, lambda *a: None, consumer_tag="c1")
    pump_until(conn, lambda: ch.queue_declare(name, passive=True).method.message_count == 2)
    again = ch.queue_declare(name, passive=True).method
    # the consumer took one message (unacked): declare-ok counts ready messages only
    assert (again.message_count, again.consumer_count) == (2, 1)
    with pytest.raises(ChannelClosedByBroker) as ei:  # amq.* names cannot be declared, even ours
        conn.channel().queue_declare(name, exclusive=True)
    assert closed_code(ei) == 403


def test_queue_declare_passive_missing_404(conn: pika.BlockingConnection) -> None:
    name = unique("q")
    with pytest.raises(ChannelClosedByBroker) as ei:
        conn.channel().queue_declare(name, passive=True)
    assert closed_code(ei) == 404
    assert ei.value.reply_text == f"NOT_FOUND - no queue '{name}' in vhost '/'"


def test_exclusive_queue_locked_to_its_connection(connect: Callable[[], pika.BlockingConnection]) -> None:
    owner, other = connect(), connect()
    name = unique("excl")
    owner.channel().queue_declare(name, exclusive=True)
    for op in ("declare", "passive", "consume", "get", "purge", "delete", "bind"):
        c = other.channel()
        with pytest.raises(ChannelClosedByBroker) as ei:
            if op == "declare":
                c.queue_declare(name, exclusive=True)
            elif op == "passive":
                c.queue_declare(name, passive=True)
            elif op == "consume":
                c.basic_consume(name, lambda *a: None)
            elif op == "get":
                c.basic_get(name)
            elif op == "purge":
                c.queue_purge(name)
            elif op == "delete":
                c.queue_delete(name)
            else:
                c.queue_bind(name, "amq.fanout")
        assert closed_code(ei) == 405, op
        assert f"cannot obtain exclusive access to locked queue '{name}'" in ei.value.reply_text
    # the owner may not redeclare it as non-exclusive either
    with pytest.raises(ChannelClosedByBroker) as ei:
        owner.channel().queue_declare(name, exclusive=False)
    assert closed_code(ei) == 405
    owner.close()
    c = other.channel()
    with pytest.raises(ChannelClosedByBroker) as ei:
        c.queue_declare(name, passive=True)
    assert closed_code(ei) == 404  # deleted with its connection


def test_exclusive_redeclare_of_a_shared_queue_405(conn: pika.BlockingConnection) -> None:
    c = conn.channel()
    name = unique("shared")
    c.queue_declare(name, auto_delete=True)
    with pytest.raises(ChannelClosedByBroker) as ei:
        conn.channel().queue_declare(name, exclusive=True, auto_delete=True)
    assert closed_code(ei) == 405
    c.queue_delete(name)


def test_exclusive_queues_are_never_durable(conn: pika.BlockingConnection) -> None:
    c = conn.channel()
    name = unique("exdur")
    c.queue_declare(name, exclusive=True, durable=True)
    c.queue_declare(name, exclusive=True, durable=False)  # equivalent: durable was ignored


def test_auto_delete_queue_goes_with_its_last_consumer(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    name = unique("autoq")
    ch.queue_declare(name, auto_delete=True)
    ch.queue_declare(name, passive=True)  # never had a consumer: stays
    t1 = ch.basic_consume(name, lambda *a: None)
    t2 = ch.basic_consume(name, lambda *a: None)
    ch.basic_cancel(t1)
    assert ch.queue_declare(name, passive=True).method.consumer_count == 1
    ch.basic_cancel(t2)
    with pytest.raises(ChannelClosedByBroker) as ei:
        conn.channel().queue_declare(name, passive=True)
    assert closed_code(ei) == 404


@pytest.mark.parametrize(
    "second,arg",
    [({"durable": True}, "durable"), ({"auto_delete": True}, "auto_delete"),
     ({"arguments": {"x-max-length": 10}}, "x-max-length"), ({"arguments": {"x-message-ttl": 5}}, "x-message-ttl")],
)
def test_queue_equivalence_406(conn: pika.BlockingConnection, second: dict, arg: str) -> None:
    c = conn.channel()
    name = unique("qeq")
    c.queue_declare(name, arguments={"x-message-ttl": 60000})
    kw = dict(second)
    kw["arguments"] = {"x-message-ttl": 60000} | second.get("arguments", {})
    with pytest.raises(ChannelClosedByBroker) as ei:
        conn.channel().queue_declare(name, **kw)
    assert closed_code(ei) == 406
    assert f"inequivalent arg '{arg}' for queue '{name}' in vhost '/'" in ei.value.reply_text
    c.queue_delete(name)


def test_bind_unbind_and_purge_count(ch: BlockingChannel) -> None:
    x = unique("bx")
    ch.exchange_declare(x, "direct", auto_delete=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, x, routing_key="a")
    ch.queue_bind(q, x, routing_key="a")  # idempotent
    ch.queue_bind(q, x, routing_key="b")
    for rk in ("a", "b", "c"):
        ch.basic_publish(x, rk, rk.encode())
    ch.queue_unbind(q, x, routing_key="a")
    ch.basic_publish(x, "a", b"a2")
    ch.basic_publish(x, "b", b"b2")
    assert ch.queue_purge(q).method.message_count == 3
    assert ch.queue_purge(q).method.message_count == 0
    assert ch.basic_get(q)[0] is None


def test_queue_delete_conditions_and_count(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(4):
        ch.basic_publish("", q, b"%d" % i)
    with pytest.raises(ChannelClosedByBroker) as ei:
        conn.channel().queue_delete(q, if_empty=True)
    assert closed_code(ei) == 406 and ei.value.reply_text.endswith(f"queue '{q}' in vhost '/' not empty")
    c2 = conn.channel()
    c2.basic_consume(q, lambda *a: None, consumer_tag="holder")
    with pytest.raises(ChannelClosedByBroker) as ei:
        conn.channel().queue_delete(q, if_unused=True)
    assert closed_code(ei) == 406 and ei.value.reply_text.endswith(f"queue '{q}' in vhost '/' in use")
    c2.close()  # its unacked deliveries are requeued
    pump_until(conn, lambda: ch.queue_declare(q, passive=True).method.message_count == 4)
    assert ch.basic_get(q)[2] == b"0"  # one unacked: delete-ok counts ready messages only
    assert ch.queue_delete(q).method.message_count == 3
    assert ch.queue_delete(q).method.message_count == 0  # missing: delete-ok


# ---------------------------------------------------------------------- publishing


def test_publish_to_missing_exchange_404(ch: BlockingChannel) -> None:
    x = unique("nox")
    with pytest.raises(ChannelClosedByBroker) as ei:
        ch.basic_publish(x, "k", b"x")
    assert closed_code(ei) == 404
    assert ei.value.reply_text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"


def test_mandatory_unroutable_is_returned(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    with pytest.raises(UnroutableError) as ei:
        ch.basic_publish("amq.direct", unique("nobody"), b"lost", mandatory=True)
    (returned,) = ei.value.messages
    assert returned.method.reply_code == 312 and returned.method.reply_text == "NO_ROUTE"
    assert returned.body == b"lost"
    ch.basic_publish("amq.direct", unique("nobody"), b"dropped")  # not mandatory: just dropped


def test_return_precedes_tx_commit_ok(target_url: str) -> None:
    u = urlparse(target_url)
    with RawClient.connect(u.port or 5672, u.hostname or "127.0.0.1") as c:
        c.handshake()
        c.open_channel(1)
        c.rpc(1, C.Tx.Select(), C.Tx.SelectOk)
        c.publish(1, "", unique("nobody"), b"unroutable", mandatory=True)
        c.send_method(1, C.Tx.Commit())
        ret = c.expect(C.Basic.Return, 1)
        assert (ret.reply_code, ret.reply_text) == (312, "NO_ROUTE")
        assert c.read_content(1)[2] == b"unroutable"
        c.expect(C.Tx.CommitOk, 1)


def test_return_precedes_the_confirm_on_the_wire(target_url: str) -> None:
    u = urlparse(target_url)
    with RawClient.connect(u.port or 5672, u.hostname or "127.0.0.1") as c:
        c.handshake()
        c.open_channel(1)
        c.rpc(1, C.Confirm.Select(), C.Confirm.SelectOk)
        q = c.declare_queue(1, exclusive=True).queue
        c.publish(1, "", q, b"routed", mandatory=True)
        c.publish(1, "", unique("nobody"), b"unroutable", mandatory=True)
        c.publish(1, "", q, b"routed again", mandatory=True)
        seen: list[Any] = []
        while not (seen and isinstance(seen[-1], C.Basic.Ack) and seen[-1].delivery_tag == 3):
            seen.append(c.read_until(lambda ch, o: isinstance(o, C.Basic.Ack | C.Basic.Return | C.Basic.Nack))[1])
        kinds = [type(o).__name__ for o in seen]
        ret = kinds.index("Return")
        assert seen[ret].reply_code == 312
        acked_before = [o.delivery_tag for o in seen[:ret] if isinstance(o, C.Basic.Ack)]
        assert all(t < 2 for t in acked_before)  # publish 2's confirm comes after its return
        assert not any(isinstance(o, C.Basic.Nack) for o in seen)


# ---------------------------------------------------------------------- consuming


def test_consume_and_cancel(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    q = ch.queue_declare("", exclusive=True).method.queue
    got: list[bytes] = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"m")
    pump_until(conn, lambda: got == [b"m"])
    ch.basic_cancel(tag)
    ch.basic_publish("", q, b"after cancel")
    settle(conn)
    assert got == [b"m"]
    assert ch.queue_declare(q, passive=True).method.message_count == 1


def test_server_generated_consumer_tag(target_url: str) -> None:
    u = urlparse(target_url)
    with RawClient.connect(u.port or 5672, u.hostname or "127.0.0.1") as c:
        c.handshake()
        c.open_channel(1)
        q = c.declare_queue(1, exclusive=True).queue
        tag = c.rpc(1, C.Basic.Consume(queue=q, consumer_tag=""), C.Basic.ConsumeOk).consumer_tag
        assert tag.startswith("amq.ctag-") and len(tag) == len("amq.ctag-") + 22
        assert c.rpc(1, C.Basic.Cancel(consumer_tag=tag), C.Basic.CancelOk).consumer_tag == tag
        assert c.rpc(1, C.Basic.Cancel(consumer_tag="unknown"), C.Basic.CancelOk).consumer_tag == "unknown"


def test_exclusive_consumer_403(connect: Callable[[], pika.BlockingConnection]) -> None:
    a, b = connect(), connect()
    name = unique("exc-consume")
    ca = a.channel()
    ca.queue_declare(name, auto_delete=True)
    ca.basic_consume(name, lambda *x: None, exclusive=True)
    with pytest.raises(ChannelClosedByBroker) as ei:
        b.channel().basic_consume(name, lambda *x: None)
    assert closed_code(ei) == 403
    assert ei.value.reply_text == f"ACCESS_REFUSED - queue '{name}' in vhost '/' in exclusive use"
    # and an exclusive consume on a queue that already has a consumer
    name2 = unique("exc-consume2")
    ca.queue_declare(name2, auto_delete=True)
    ca.basic_consume(name2, lambda *x: None)
    with pytest.raises(ChannelClosedByBroker) as ei:
        b.channel().basic_consume(name2, lambda *x: None, exclusive=True)
    assert closed_code(ei) == 403


def test_server_cancels_consumer_when_queue_deleted(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    name = unique("cancelq")
    ch.queue_declare(name)
    cancelled: list[str] = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(name, lambda *a: None)
    conn.channel().queue_delete(name)
    pump_until(conn, lambda: cancelled == [tag])
    assert ch.is_open  # the channel lives on
    ch.basic_publish("", unique("nobody"), b"x")


def test_get_and_get_empty_message_count(ch: BlockingChannel) -> None:
    q = ch.queue_declare("", exclusive=True).method.queue
    assert ch.basic_get(q) == (None, None, None)
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    counts = []
    for _ in range(3):
        method, _, _ = ch.basic_get(q, auto_ack=True)
        counts.append(method.message_count)
    assert counts == [2, 1, 0]
    assert ch.basic_get(q)[0] is None


# ---------------------------------------------------------------------- acknowledgements


def _consume_all(conn: pika.BlockingConnection, c: BlockingChannel, q: str, n: int) -> list[tuple[int, bytes, bool]]:
    got: list[tuple[int, bytes, bool]] = []
    c.basic_consume(q, lambda ch_, m, p, b: got.append((m.delivery_tag, b, m.redelivered)))
    pump_until(conn, lambda: len(got) >= n)
    return got


def test_ack_nack_reject_multiple_and_requeue(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(8):
        ch.basic_publish("", q, b"%d" % i)
    c = conn.channel()
    got = _consume_all(conn, c, q, 8)
    assert [b for _, b, _ in got] == [b"%d" % i for i in range(8)]
    c.basic_ack(2, multiple=True)  # 0, 1
    c.basic_nack(4, multiple=True, requeue=True)  # 2, 3 back to the queue
    c.basic_reject(5, requeue=False)  # 4 dropped
    c.basic_nack(6, requeue=False)  # 5 dropped
    c.basic_reject(7, requeue=True)  # 6 back
    # 7 still unacked; the requeued ones come back redelivered, in queue order
    pump_until(conn, lambda: len(got) == 11)
    assert [(b, r) for _, b, r in got[8:]] == [(b"2", True), (b"3", True), (b"6", True)]
    assert [t for t, _, _ in got[8:]] == [9, 10, 11]
    c.basic_ack(0, multiple=True)  # everything outstanding
    c.close()
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_requeued_message_keeps_its_place(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(4):
        ch.basic_publish("", q, b"%d" % i)
    first = ch.basic_get(q)
    second = ch.basic_get(q)
    assert (first[2], second[2]) == (b"0", b"1")
    ch.basic_nack(second[0].delivery_tag, requeue=True)
    ch.basic_reject(first[0].delivery_tag, requeue=True)
    out = []
    while (m := ch.basic_get(q, auto_ack=True))[0] is not None:
        out.append((m[2], m[0].redelivered))
    assert out == [(b"0", True), (b"1", True), (b"2", False), (b"3", False)]


def test_unacked_requeued_when_channel_closes(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    c = conn.channel()
    got = _consume_all(conn, c, q, 3)
    c.basic_ack(got[1][0])
    c.close()
    out = []
    while (m := ch.basic_get(q, auto_ack=True))[0] is not None:
        out.append((m[2], m[0].redelivered))
    assert out == [(b"0", True), (b"2", True)]


def test_unacked_requeued_when_connection_closes(connect: Callable[[], pika.BlockingConnection]) -> None:
    keeper, worker = connect(), connect()
    kc = keeper.channel()
    kc.confirm_delivery()
    name = unique("requeue-conn")
    kc.queue_declare(name, auto_delete=False)
    for i in range(3):
        kc.basic_publish("", name, b"%d" % i)
    wc = worker.channel()
    got = _consume_all(worker, wc, name, 3)
    wc.basic_ack(got[0][0])
    worker.close()
    pump_until(keeper, lambda: kc.queue_declare(name, passive=True).method.message_count == 2)
    out = [(m[2], m[0].redelivered) for m in (kc.basic_get(name, auto_ack=True) for _ in range(2))]
    assert out == [(b"1", True), (b"2", True)]
    kc.queue_delete(name)


def test_basic_recover_redelivers_unacked(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(2):
        ch.basic_publish("", q, b"%d" % i)
    c = conn.channel()
    got = _consume_all(conn, c, q, 2)
    c.basic_recover(requeue=True)
    pump_until(conn, lambda: len(got) == 4)
    assert [(b, r) for _, b, r in got[2:]] == [(b"0", True), (b"1", True)]


# ---------------------------------------------------------------------- prefetch


def _outstanding(conn: pika.BlockingConnection, c: BlockingChannel, queues: dict[str, str]) -> dict[str, int]:
    counts = dict.fromkeys(queues, 0)
    for tag, q in queues.items():
        c.basic_consume(q, lambda ch_, m, p, b, tag=tag: counts.__setitem__(tag, counts[tag] + 1), consumer_tag=tag)
    settle(conn, 0.3)
    return counts


def _filled_queues(ch: BlockingChannel, n: int, per_queue: int = 10) -> list[str]:
    qs = [ch.queue_declare("", exclusive=True).method.queue for _ in range(n)]
    for q in qs:
        for i in range(per_queue):
            ch.basic_publish("", q, b"%d" % i)
    return qs


def test_prefetch_per_consumer(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    qa, qb, qc = _filled_queues(ch, 3)
    c = conn.channel()
    c.basic_qos(prefetch_count=2)
    counts = _outstanding(conn, c, {"a": qa, "b": qb})
    c.basic_qos(prefetch_count=3)  # applies to consumers created from now on
    counts |= _outstanding(conn, c, {"c": qc})
    assert counts == {"a": 2, "b": 2, "c": 3}


def test_prefetch_global_is_shared_by_the_channel(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    qa, qb = _filled_queues(ch, 2)
    c = conn.channel()
    c.basic_qos(prefetch_count=3, global_qos=True)
    counts = _outstanding(conn, c, {"a": qa, "b": qb})
    assert sum(counts.values()) == 3


@pytest.mark.parametrize("global_first", [False, True])
def test_prefetch_global_and_per_consumer_together(conn: pika.BlockingConnection, ch: BlockingChannel, global_first: bool) -> None:
    qa, qb, qc = _filled_queues(ch, 3)
    c = conn.channel()
    if global_first:
        c.basic_qos(prefetch_count=5, global_qos=True)
    c.basic_qos(prefetch_count=2)
    if not global_first:
        c.basic_qos(prefetch_count=5, global_qos=True)
    counts = _outstanding(conn, c, {"a": qa, "b": qb, "c": qc})
    assert all(v == 2 for v in sorted(counts.values())[1:])
    # both limits apply; but (RabbitMQ 3.10) a per-consumer qos lifts an earlier global one
    assert sum(counts.values()) == (6 if global_first else 5)


# ---------------------------------------------------------------------- confirms and tx


def test_tx_publish_commit_and_rollback(conn: pika.BlockingConnection) -> None:
    c = conn.channel()
    q = c.queue_declare("", exclusive=True).method.queue
    c.tx_select()
    c.basic_publish("", q, b"rolled back")
    c.tx_rollback()
    c.basic_publish("", q, b"committed")
    assert c.queue_declare(q, passive=True).method.message_count == 0  # not before commit
    c.tx_commit()
    assert drain(c, q) == [b"committed"]


def test_tx_acks_commit_and_rollback(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    c = conn.channel()
    c.tx_select()
    tags = [c.basic_get(q)[0].delivery_tag for _ in range(3)]
    c.basic_ack(tags[0])
    c.tx_rollback()  # the ack is forgotten: still unacked
    c.basic_ack(tags[1])
    c.tx_commit()
    c.close()  # 0 and 2 are requeued, 1 was acked
    assert drain(ch, q) == [b"0", b"2"]


def test_tx_errors_406(conn: pika.BlockingConnection) -> None:
    with pytest.raises(ChannelClosedByBroker) as ei:
        conn.channel().tx_commit()
    assert closed_code(ei) == 406 and ei.value.reply_text == "PRECONDITION_FAILED - channel is not transactional"
    c = conn.channel()
    c.tx_select()
    with pytest.raises(ChannelClosedByBroker) as ei:
        c.confirm_delivery()
    assert closed_code(ei) == 406
    assert ei.value.reply_text == "PRECONDITION_FAILED - cannot switch from tx to confirm mode"
    c = conn.channel()
    c.confirm_delivery()
    with pytest.raises(ChannelClosedByBroker) as ei:
        c.tx_select()
    assert closed_code(ei) == 406


def test_confirms_cover_every_publish(target_url: str) -> None:
    u = urlparse(target_url)
    n = 300
    with RawClient.connect(u.port or 5672, u.hostname or "127.0.0.1") as c:
        c.handshake()
        c.open_channel(1)
        c.rpc(1, C.Confirm.Select(), C.Confirm.SelectOk)
        q = c.declare_queue(1, exclusive=True).queue
        c.send(b"".join(publish_frames(1, "", q, b"%d" % i) for i in range(n)))
        confirmed = 0
        while confirmed < n:
            ack = c.expect(C.Basic.Ack, 1)
            assert ack.delivery_tag > confirmed
            assert ack.multiple or ack.delivery_tag == confirmed + 1
            confirmed = ack.delivery_tag
        assert confirmed == n
        assert c.declare_queue(1, q, passive=True).message_count == n


# ---------------------------------------------------------------------- bodies and properties


@pytest.mark.parametrize("size", [1 << 20, 20 << 20], ids=["1MiB", "20MiB"])
def test_large_bodies(ch: BlockingChannel, size: int) -> None:
    q = ch.queue_declare("", exclusive=True).method.queue
    body = os.urandom(1 << 16) * (size >> 16)
    ch.basic_publish("", q, body)
    method, _, got = ch.basic_get(q, auto_ack=True)
    assert method is not None and len(got) == size and got == body


def test_every_property_round_trips(ch: BlockingChannel) -> None:
    q = ch.queue_declare("", exclusive=True).method.queue
    headers = {"s": "str", "i": -5, "big": 1 << 40, "t": True, "n": None,
               "nested": {"a": [1, "two", {"deep": b"bytes"}], "empty": {}}, "list": [1, 2, 3]}
    props = pika.BasicProperties(
        content_type="application/json", content_encoding="gzip", headers=headers, delivery_mode=2,
        priority=7, correlation_id="corr", reply_to="reply", expiration="60000", message_id="mid",
        timestamp=1_700_000_000, type="kind", user_id="guest", app_id="app", cluster_id="cluster",
    )
    ch.basic_publish("", q, b"payload", props)
    _, got, body = ch.basic_get(q, auto_ack=True)
    assert body == b"payload"
    for field in ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
                  "expiration", "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id"):
        assert getattr(got, field) == getattr(props, field), field
    assert got.headers == headers


def test_property_bytes_delivered_verbatim(target_url: str) -> None:
    """The content header (every property, nested tables, arrays, every field type)
    reaches the consumer byte for byte."""
    table = encode.field_table({
        "str": "v", "int": 7, "neg": -70000, "long": 1 << 40, "float": 0.25, "bool": False, "void": None,
        "bytes": bytearray(b"\x00\xff"), "arr": [1, "x", [2, {"k": "v"}]], "nested": {"a": {"b": {"c": 1}}},
    })
    shortstr = lambda s: bytes((len(s),)) + s  # noqa: E731
    props = (
        b"\xff\xfc"  # all 14 property flags
        + shortstr(b"text/plain") + shortstr(b"utf-8") + table + b"\x02" + b"\x05"
        + shortstr(b"corr") + shortstr(b"reply") + shortstr(b"60000") + shortstr(b"mid")
        + struct.pack(">Q", 1_700_000_000) + shortstr(b"type") + shortstr(b"guest")
        + shortstr(b"app") + shortstr(b"cluster")
    )
    body = b"x" * 10
    header = struct.pack(">HHQ", 60, 0, len(body)) + props
    u = urlparse(target_url)
    with RawClient.connect(u.port or 5672, u.hostname or "127.0.0.1") as c:
        c.handshake()
        c.open_channel(1)
        q = c.declare_queue(1, exclusive=True).queue
        c.send(method_frame(1, C.Basic.Publish(exchange="", routing_key=q)) + build_frame(2, 1, header) + build_frame(3, 1, body))
        c.send_method(1, C.Basic.Get(queue=q, no_ack=True))
        c.expect(C.Basic.GetOk, 1)
        _, raw, got = c.read_content(1)
        assert raw == header
        assert got == body
        c.rpc(1, C.Basic.Consume(queue=q, no_ack=True), C.Basic.ConsumeOk)
        c.send(method_frame(1, C.Basic.Publish(exchange="", routing_key=q)) + build_frame(2, 1, header) + build_frame(3, 1, body))
        c.expect(C.Basic.Deliver, 1)
        assert c.read_content(1)[1] == header


# ---------------------------------------------------------------------- connection close


def test_client_close_releases_everything(connect: Callable[[], pika.BlockingConnection]) -> None:
    a, b = connect(), connect()
    ca = a.channel()
    q = ca.queue_declare("", exclusive=True).method.queue
    shared = unique("shared")
    bc = b.channel()
    bc.confirm_delivery()
    bc.queue_declare(shared, auto_delete=True)
    ca.basic_consume(shared, lambda *x: None, consumer_tag="a-consumer")
    bc.basic_publish("", shared, b"held by a")
    pump_until(b, lambda: bc.queue_declare(shared, passive=True).method.message_count == 0)
    a.close()
    assert not a.is_open
    # a's consumer went away: the auto-delete queue and its message with it
    with pytest.raises(ChannelClosedByBroker) as ei:
        bc.queue_declare(shared, passive=True)
    assert closed_code(ei) == 404
    with pytest.raises(ChannelClosedByBroker) as ei:
        b.channel().queue_declare(q, passive=True)
    assert closed_code(ei) == 404


@leveret_only
def test_broker_stop_closes_pika_with_320() -> None:
    bt = BrokerThread(Config(port=0)).start()
    try:
        c = pika.BlockingConnection(pika.URLParameters(bt.url))
        c.channel().queue_declare("", exclusive=True)
        stopper = threading.Thread(target=bt.stop)
        stopper.start()
        with pytest.raises(ConnectionClosedByBroker) as ei:
            while True:
                c.process_data_events(time_limit=0.1)
        assert closed_code(ei) == 320
        assert ei.value.reply_text == "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
        stopper.join(5)
        assert not stopper.is_alive()
    finally:
        bt.stop()
