"""py-amqp (the transport under kombu and Celery) scenarios; no automatic recovery."""

from __future__ import annotations

import time

import amqp
import amqp.exceptions
from interop_common import check, eq, name, run_scenarios, scenario, wait_until
from interop_common import env as ENV


def connect(**kw) -> amqp.Connection:
    conn = amqp.Connection(host=f"{ENV.host}:{ENV.port}", userid=ENV.user, password=ENV.password,
                           virtual_host=ENV.vhost, **kw)
    conn.connect()
    return conn


def pump(conn: amqp.Connection, seconds: float) -> None:
    try:
        conn.drain_events(timeout=seconds)
    except TimeoutError:
        pass


def drain(ch: amqp.Channel, q: str) -> list[bytes]:
    out = []
    while (m := ch.basic_get(q, no_ack=True)) is not None:
        out.append(m.body)
    return out


def temp_queue(ch: amqp.Channel) -> str:
    return ch.queue_declare("", exclusive=True, auto_delete=False).queue


def count(ch: amqp.Channel, q: str) -> int:
    return ch.queue_declare(q, passive=True).message_count


@scenario("connect")
def s_connect() -> None:
    with connect() as conn:
        check(conn.connected, "connected")
        caps = conn.server_capabilities
        check(caps.get("publisher_confirms") and caps.get("consumer_cancel_notify"), f"caps {caps}")
        ch = conn.channel()
        check(ch.is_open, "channel open")


@scenario("topology")
def s_topology() -> None:
    with connect() as conn:
        ch = conn.channel()
        x, q = name("topo.x"), name("topo.q")
        ch.exchange_declare(x, "topic", durable=True, auto_delete=False)
        ok = ch.queue_declare(q, durable=True, auto_delete=False)
        eq(ok.queue, q, "queue")
        ch.queue_bind(q, x, routing_key="a.#")
        ch.basic_publish(amqp.Message("routed"), exchange=x, routing_key="a.b")
        ch.basic_publish(amqp.Message("not"), exchange=x, routing_key="b.a")
        wait_until(lambda: count(ch, q) == 1, what="routed message")
        ch.exchange_declare(x, "topic", passive=True)
        try:
            ch.exchange_declare(x, "fanout", durable=True, auto_delete=False)
            raise AssertionError("redeclare with another type accepted")
        except amqp.exceptions.PreconditionFailed:
            pass
        ch = conn.channel()
        eq(ch.queue_delete(q), 1, "delete-ok message count")
        ch.exchange_delete(x)


@scenario("confirm")
def s_confirm() -> None:
    with connect(confirm_publish=True) as conn:
        ch = conn.channel()
        q = temp_queue(ch)
        for i in range(200):
            ch.basic_publish(amqp.Message(f"m{i}", delivery_mode=2), exchange="", routing_key=q)
        eq(count(ch, q), 200, "confirmed messages")
        returned = []
        ch.events["basic_return"].add(lambda *a: returned.append(a))
        ch.basic_publish(amqp.Message("r"), exchange="", routing_key=name("nowhere"),
                         mandatory=True)
        check(returned and returned[0][0].reply_code == 312, f"basic.return NO_ROUTE: {returned}")


@scenario("consume_prefetch")
def s_consume_prefetch() -> None:
    with connect() as conn:
        ch = conn.channel()
        q = temp_queue(ch)
        for i in range(10):
            ch.basic_publish(amqp.Message(str(i)), routing_key=q)
        ch.basic_qos(0, 2, False)
        held: list[amqp.Message] = []
        ch.basic_consume(q, callback=held.append)
        seen = []
        while len(seen) < 10:
            wait_until(lambda: len(held) >= 2, what="2 deliveries", poll=lambda t: pump(conn, t))
            pump(conn, 0.1)
            eq(len(held), 2, "deliveries in flight with prefetch 2")
            seen += [m.body for m in held]
            for m in held:
                ch.basic_ack(m.delivery_tag)
            held.clear()
        eq(seen, [str(i) for i in range(10)], "order")


@scenario("reject_requeue")
def s_reject_requeue() -> None:
    with connect() as conn:
        ch = conn.channel()
        q = temp_queue(ch)
        ch.basic_publish(amqp.Message("a"), routing_key=q)
        held: list[amqp.Message] = []
        tag = ch.basic_consume(q, callback=held.append)
        wait_until(lambda: held, what="delivery", poll=lambda t: pump(conn, t))
        ch.basic_reject(held[0].delivery_tag, requeue=True)
        wait_until(lambda: len(held) == 2, what="redelivery", poll=lambda t: pump(conn, t))
        check(held[1].delivery_info["redelivered"], "redelivered flag")
        ch.basic_reject(held[1].delivery_tag, requeue=False)
        ch.basic_cancel(tag)
        eq(count(ch, q), 0, "discarded")


@scenario("fanout")
def s_fanout() -> None:
    with connect() as conn:
        ch = conn.channel()
        x = name("fan")
        ch.exchange_declare(x, "fanout", auto_delete=True)
        qs = [temp_queue(ch) for _ in range(3)]
        for q in qs:
            ch.queue_bind(q, x)
        ch.basic_publish(amqp.Message("f"), exchange=x)
        time.sleep(0.05)
        for q in qs:
            eq(drain(ch, q), ["f"], q)


@scenario("topic")
def s_topic() -> None:
    with connect() as conn:
        ch = conn.channel()
        x = name("topic")
        ch.exchange_declare(x, "topic", auto_delete=True)
        q = temp_queue(ch)
        ch.queue_bind(q, x, routing_key="celery.#")
        ch.queue_bind(q, x, routing_key="*.high")
        for rk in ("celery", "celery.a.b", "x.high", "x.y.high", "high"):
            ch.basic_publish(amqp.Message(rk), exchange=x, routing_key=rk)
        time.sleep(0.05)
        eq(drain(ch, q), ["celery", "celery.a.b", "x.high"], "topic")


@scenario("tx")
def s_tx() -> None:
    with connect() as conn:
        ch = conn.channel()
        q = temp_queue(ch)
        ch.tx_select()
        ch.basic_publish(amqp.Message("one"), routing_key=q)
        ch.tx_rollback()
        ch.basic_publish(amqp.Message("two"), routing_key=q)
        ch.tx_commit()
        eq(drain(ch, q), ["two"], "committed")


@scenario("close")
def s_close() -> None:
    conn = connect()
    ch = conn.channel()
    try:
        ch.queue_declare("amq.reserved", exclusive=True)
        raise AssertionError("queue with an amq. name declared")
    except amqp.exceptions.AccessRefused:
        pass
    ch = conn.channel()
    ch.close()
    conn.close()
    check(not conn.connected, "closed")


if __name__ == "__main__":
    run_scenarios()
