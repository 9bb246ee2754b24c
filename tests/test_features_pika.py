"""RabbitMQ queue features (issue 4) through pika's BlockingConnection: one test per item."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker

from leveret.testing import BrokerThread
from tests.polling import pump_until, wait_until


@pytest.fixture
def ch(broker_thread: BrokerThread) -> Iterator[BlockingChannel]:
    conn = pika.BlockingConnection(pika.URLParameters(broker_thread.url))
    channel = conn.channel()
    yield channel
    if conn.is_open:
        conn.close()


def drain(ch: BlockingChannel, q: str) -> list[tuple[bytes, Any]]:
    out = []
    while True:
        method, props, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            return out
        out.append((body, props))


def wait_count(ch: BlockingChannel, q: str, n: int, timeout: float = 5.0) -> None:
    wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == n, timeout, what=f"{n} messages in {q}")


def dlx(ch: BlockingChannel, name: str = "pdlx") -> str:
    ch.exchange_declare(name, "fanout", auto_delete=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, name)
    return q


def test_message_ttl_queue_and_per_message(ch: BlockingChannel) -> None:
    dq = dlx(ch)
    q = ch.queue_declare("", exclusive=True, arguments={"x-message-ttl": 200, "x-dead-letter-exchange": "pdlx"}).method.queue
    ch.basic_publish("", q, b"queue-ttl")
    ch.basic_publish("", q, b"msg-ttl", pika.BasicProperties(expiration="50"))
    wait_count(ch, dq, 2)
    got = drain(ch, dq)
    assert sorted(b for b, _ in got) == [b"msg-ttl", b"queue-ttl"]
    assert all(p.headers["x-death"][0]["reason"] == "expired" for _, p in got)
    with pytest.raises(ChannelClosedByBroker) as ei:
        ch.basic_publish("", q, b"bad", pika.BasicProperties(expiration="soon"))
        ch.queue_declare(q, passive=True)
    assert ei.value.reply_code == 406


def test_queue_expires(ch: BlockingChannel) -> None:
    ch.queue_declare("p-exp", arguments={"x-expires": 200})
    ch.connection.sleep(0.6)
    with pytest.raises(ChannelClosedByBroker) as ei:
        ch.queue_declare("p-exp", passive=True)
    assert ei.value.reply_code == 404


def test_max_length_overflow_modes(ch: BlockingChannel) -> None:
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-length": 2}).method.queue
    for b in (b"1", b"2", b"3"):
        ch.basic_publish("", q, b)
    assert [b for b, _ in drain(ch, q)] == [b"2", b"3"]
    ch.confirm_delivery()
    r = ch.queue_declare("", exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}).method.queue
    ch.basic_publish("", r, b"kept")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", r, b"refused")
    assert [b for b, _ in drain(ch, r)] == [b"kept"]


def test_dead_letter_on_reject_with_x_death(ch: BlockingChannel) -> None:
    dq = dlx(ch)
    q = ch.queue_declare("", exclusive=True, arguments={"x-dead-letter-exchange": "pdlx"}).method.queue
    ch.basic_publish("", q, b"bad")
    method, _, _ = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    wait_count(ch, dq, 1)
    (body, props), = drain(ch, dq)
    assert body == b"bad"
    death = props.headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"], death["routing-keys"]) == ("rejected", q, 1, [q])
    assert props.headers["x-first-death-reason"] == "rejected"


def test_priority_queue(ch: BlockingChannel) -> None:
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-priority": 10}).method.queue
    for body, prio in ((b"a", 1), (b"b", 9), (b"c", 5)):
        ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    assert [b for b, _ in drain(ch, q)] == [b"b", b"c", b"a"]
    with pytest.raises(ChannelClosedByBroker) as ei:
        ch.queue_declare("p-bad-prio", arguments={"x-max-priority": 1000})
    assert ei.value.reply_code == 406


def test_single_active_consumer_and_consumer_priority(ch: BlockingChannel, broker_thread: BrokerThread) -> None:
    q = ch.queue_declare("p-sac", auto_delete=True, arguments={"x-single-active-consumer": True}).method.queue
    other = pika.BlockingConnection(pika.URLParameters(broker_thread.url))
    och = other.channel()
    got: list[str] = []
    och.basic_consume(q, lambda c, m, p, b: got.append("first"), auto_ack=True)
    ch.basic_consume(q, lambda c, m, p, b: got.append("second"), auto_ack=True)
    for _ in range(3):
        ch.basic_publish("", q, b"x")
    pump_until([other, ch.connection], lambda: len(got) >= 3)
    ch.connection.process_data_events(0.1)
    assert got == ["first"] * 3
    other.close()  # the active consumer goes: the next one takes over
    ch.basic_publish("", q, b"x")
    pump_until(ch.connection, lambda: len(got) >= 4)
    assert got == ["first"] * 3 + ["second"]
    # consumer priorities
    q2 = ch.queue_declare("", exclusive=True).method.queue
    seen: list[str] = []
    ch.basic_consume(q2, lambda c, m, p, b: seen.append("low"), auto_ack=True, arguments={"x-priority": 1})
    ch.basic_consume(q2, lambda c, m, p, b: seen.append("high"), auto_ack=True, arguments={"x-priority": 5})
    for _ in range(4):
        ch.basic_publish("", q2, b"x")
    pump_until(ch.connection, lambda: len(seen) >= 4)
    assert seen == ["high"] * 4


def test_direct_reply_to(ch: BlockingChannel, broker_thread: BrokerThread) -> None:
    server = pika.BlockingConnection(pika.URLParameters(broker_thread.url))
    sch = server.channel()
    rpc = sch.queue_declare("", exclusive=True).method.queue

    def serve(c: BlockingChannel, m: Any, p: pika.BasicProperties, b: bytes) -> None:
        c.basic_publish("", p.reply_to, b[::-1], pika.BasicProperties(correlation_id=p.correlation_id))

    sch.basic_consume(rpc, serve, auto_ack=True)
    replies: list[tuple[bytes, str]] = []
    ch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((b, p.correlation_id)), auto_ack=True)
    ch.basic_publish("", rpc, b"abc", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="42"))
    for _ in range(50):
        server.process_data_events(0.02)
        ch.connection.process_data_events(0.02)
        if replies:
            break
    assert replies == [(b"cba", "42")]
    server.close()


def test_cc_bcc(ch: BlockingChannel) -> None:
    a, b, c = (ch.queue_declare("", exclusive=True).method.queue for _ in range(3))
    ch.basic_publish("", a, b"m", pika.BasicProperties(headers={"CC": [b], "BCC": [c]}))
    for q in (a, b, c):
        wait_count(ch, q, 1)
        (body, props), = drain(ch, q)
        assert body == b"m" and "BCC" not in props.headers and props.headers["CC"] == [b]


def test_queue_type(ch: BlockingChannel) -> None:
    ch.queue_declare("p-classic", auto_delete=True, arguments={"x-queue-type": "classic"})
    ch.queue_declare("p-quorum", durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_delete("p-quorum")
    with pytest.raises(ChannelClosedByBroker) as ei:
        ch.queue_declare("p-weird", arguments={"x-queue-type": "weird"})
    assert ei.value.reply_code == 406


def test_inequivalent_redeclare(ch: BlockingChannel) -> None:
    ch.queue_declare("p-eq", auto_delete=True, arguments={"x-message-ttl": 1000})
    with pytest.raises(ChannelClosedByBroker) as ei:
        ch.queue_declare("p-eq", auto_delete=True, arguments={"x-message-ttl": 2000})
    assert ei.value.reply_code == 406
    assert "inequivalent arg 'x-message-ttl'" in ei.value.reply_text


def test_names_outside_the_spec_pattern_work_as_in_rabbitmq(ch: BlockingChannel) -> None:
    """RabbitMQ takes any short string as a queue or exchange name, not only the spec's
    ``[a-zA-Z0-9-_.:@#,/+ ]``: declare-ok, deliver, get-ok and return carry them back.
    (queue.declare-ok used to be built by pamqp, whose check closed the connection with
    541 after the queue was made.)"""
    q, x = "q<b>&'\"é%", "x<b>&'é"
    ok = ch.queue_declare(q, exclusive=True)
    assert ok.method.queue == q
    assert ch.queue_declare(q, passive=True).method.queue == q
    ch.exchange_declare(x, "direct", auto_delete=True)
    ch.queue_bind(q, x, "rk<>")
    ch.basic_publish(x, "rk<>", b"via x")
    ch.basic_publish("", q, b"via default")
    wait_count(ch, q, 2)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert (method.exchange, method.routing_key, body) == (x, "rk<>", b"via x")
    got = drain(ch, q)
    assert [b for b, _ in got] == [b"via default"]
    returned: list[tuple[str, str]] = []
    ch.add_on_return_callback(lambda _c, m, _p, _b: returned.append((m.exchange, m.routing_key)))
    ch.basic_publish(x, "nowhere<>", b"r", mandatory=True)
    ch.connection.process_data_events(time_limit=0.5)
    assert returned == [(x, "nowhere<>")]
    assert ch.is_open
    ch.exchange_delete(x)
