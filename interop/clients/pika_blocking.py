"""pika BlockingConnection scenarios (pika has no automatic recovery: no reconnect)."""

from __future__ import annotations

import time

import pika
import pika.exceptions
from interop_common import check, control, eq, name, run_scenarios, scenario, wait_until
from interop_common import env as ENV


def connect() -> pika.BlockingConnection:
    params = pika.URLParameters(ENV.url)
    params.connection_attempts = 3
    params.retry_delay = 0.5
    return pika.BlockingConnection(params)


def safe_close(conn: pika.BlockingConnection) -> None:
    """Close unless already closed (so a broker-side close does not hide the real error)."""
    if conn.is_open:
        conn.close()


def drain(ch, queue: str) -> list[bytes]:
    out = []
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def count(ch, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


@scenario("connect")
def s_connect() -> None:
    conn = connect()
    try:
        props = conn._impl.server_properties  # noqa: SLF001 - what the broker announced
        caps = props.get("capabilities", {})
        for cap in ("publisher_confirms", "basic.nack", "consumer_cancel_notify",
                    "exchange_exchange_bindings", "connection.blocked"):
            check(caps.get(cap), f"server capability {cap} missing: {caps}")
        ch = conn.channel()
        check(ch.is_open, "channel not open")
        check(conn.is_open, "connection not open")
    finally:
        safe_close(conn)


@scenario("topology")
def s_topology() -> None:
    conn = connect()
    try:
        ch = conn.channel()
        x, x2, q = name("topo.x"), name("topo.x2"), name("topo.q")
        ch.exchange_declare(x, "direct", durable=True)
        ch.exchange_declare(x2, "fanout", auto_delete=False)
        ch.exchange_bind(destination=x2, source=x, routing_key="e2e")
        ok = ch.queue_declare(q, durable=True, arguments={"x-max-length": 100})
        eq(ok.method.queue, q, "queue name")
        eq((ok.method.message_count, ok.method.consumer_count), (0, 0), "counts")
        ch.queue_bind(q, x, routing_key="k1")
        ch.queue_bind(q, x2)
        ch.exchange_declare(x, "direct", passive=True)
        ch.queue_declare(q, passive=True)
        gen = ch.queue_declare("", exclusive=True).method.queue
        check(gen.startswith("amq.gen-"), f"server-named queue {gen!r}")
        ch.basic_publish(x, "k1", b"direct")
        ch.basic_publish(x, "e2e", b"via e2e")
        ch.basic_publish(x, "nope", b"dropped")
        wait_until(lambda: count(ch, q) >= 2, what="2 messages routed")
        eq(sorted(drain(ch, q)), [b"direct", b"via e2e"], "routed bodies")
        ch.queue_unbind(q, x, routing_key="k1")
        ch.basic_publish(x, "k1", b"unbound")
        time.sleep(0.05)
        eq(count(ch, q), 0, "messages after unbind")
        try:
            ch.queue_declare(name("topo.missing"), passive=True)
            raise AssertionError("passive declare of a missing queue succeeded")
        except pika.exceptions.ChannelClosedByBroker as exc:
            eq(exc.reply_code, 404, "passive declare reply code")
        ch = conn.channel()
        ch.exchange_unbind(destination=x2, source=x, routing_key="e2e")
        eq(ch.queue_delete(q).method.message_count, 0, "delete-ok count")
        ch.exchange_delete(x2)
        ch.exchange_delete(x)
    finally:
        safe_close(conn)


@scenario("confirm")
def s_confirm() -> None:
    conn = connect()
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.confirm_delivery()
        for i in range(200):
            ch.basic_publish("", q, b"m%d" % i, pika.BasicProperties(delivery_mode=2),
                             mandatory=True)
        eq(count(ch, q), 200, "confirmed messages in queue")
        try:
            ch.basic_publish("", name("no-such-queue"), b"x", mandatory=True)
            raise AssertionError("unroutable mandatory publish was not returned")
        except pika.exceptions.UnroutableError:
            pass
        ch.basic_publish("", q, b"after")  # channel still usable after the return
        eq(count(ch, q), 201, "after unroutable")
    finally:
        safe_close(conn)


@scenario("consume_prefetch")
def s_consume_prefetch() -> None:
    conn = connect()
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        for i in range(10):
            ch.basic_publish("", q, str(i).encode())
        ch.basic_qos(prefetch_count=3)
        got: list[tuple[int, bytes]] = []
        ch.basic_consume(q, lambda c, m, p, b: got.append((m.delivery_tag, b)))
        seen: list[bytes] = []
        while len(seen) < 10:
            wait_until(lambda: len(got) >= min(3, 10 - len(seen)), what="a prefetch window",
                       poll=lambda t: conn.process_data_events(t))
            conn.process_data_events(0.1)
            check(len(got) <= 3, f"prefetch 3 exceeded: {len(got)} unacked deliveries")
            seen.extend(b for _, b in got)
            ch.basic_ack(got[-1][0], multiple=True)
            got.clear()
        eq(seen, [str(i).encode() for i in range(10)], "delivery order")
        eq(count(ch, q), 0, "left in queue")
    finally:
        safe_close(conn)


@scenario("reject_requeue")
def s_reject_requeue() -> None:
    conn = connect()
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        for body in (b"a", b"b", b"c"):
            ch.basic_publish("", q, body)
        m, _, body = ch.basic_get(q)
        eq((body, m.redelivered), (b"a", False), "first get")
        ch.basic_reject(m.delivery_tag, requeue=True)
        m, _, body = ch.basic_get(q)
        eq((body, m.redelivered), (b"a", True), "requeued message back at the head")
        ch.basic_reject(m.delivery_tag, requeue=False)
        m, _, body = ch.basic_get(q)
        eq(body, b"b", "after discard")
        m2, _, body2 = ch.basic_get(q)
        eq(body2, b"c", "third")
        ch.basic_nack(m2.delivery_tag, multiple=True, requeue=True)
        # (RabbitMQ's message_count can lag the requeue by a moment)
        wait_until(lambda: count(ch, q) == 2, what="2 messages back after nack multiple")
        # consumer path: nack(requeue) then the redelivery comes back to the consumer
        got = []
        ch.basic_consume(q, lambda c, m, p, b: got.append((m, b)))
        wait_until(lambda: len(got) >= 2, what="2 deliveries",
                   poll=lambda t: conn.process_data_events(t))
        eq([(m.redelivered, b) for m, b in got], [(True, b"b"), (True, b"c")], "redeliveries")
        ch.basic_nack(got[0][0].delivery_tag, requeue=True)
        wait_until(lambda: len(got) >= 3, what="redelivery to the consumer",
                   poll=lambda t: conn.process_data_events(t))
        eq((got[2][1], got[2][0].redelivered), (b"b", True), "redelivered to consumer")
        ch.basic_ack(0, multiple=True)
    finally:
        safe_close(conn)


@scenario("fanout")
def s_fanout() -> None:
    conn = connect()
    try:
        ch = conn.channel()
        x = name("fanout")
        ch.exchange_declare(x, "fanout", auto_delete=True)
        qs = [ch.queue_declare("", exclusive=True).method.queue for _ in range(3)]
        for q in qs:
            ch.queue_bind(q, x, routing_key="ignored")
        ch.basic_publish(x, "whatever", b"broadcast")
        for q in qs:
            wait_until(lambda q=q: count(ch, q) == 1, what=f"message in {q}")
            eq(drain(ch, q), [b"broadcast"], q)
    finally:
        safe_close(conn)


@scenario("topic")
def s_topic() -> None:
    conn = connect()
    try:
        ch = conn.channel()
        x = name("topic")
        ch.exchange_declare(x, "topic", auto_delete=True)
        binds = {"errors": "*.error", "app": "app.#", "info": "app.*.info"}
        qs = {}
        for label, key in binds.items():
            qs[label] = ch.queue_declare("", exclusive=True).method.queue
            ch.queue_bind(qs[label], x, routing_key=key)
        for rk in ("app.error", "db.error", "app.web.info", "app", "x.y.z", "app.web.error.x"):
            ch.basic_publish(x, rk, rk.encode())
        ch.basic_publish("amq.topic", "app.error", b"other exchange")
        time.sleep(0.1)
        want = {
            "errors": [b"app.error", b"db.error"],
            "app": [b"app.error", b"app.web.info", b"app", b"app.web.error.x"],
            "info": [b"app.web.info"],
        }
        for label, q in qs.items():
            eq(drain(ch, q), want[label], f"queue bound with {binds[label]!r}")
    finally:
        safe_close(conn)


@scenario("tx")
def s_tx() -> None:
    conn = connect()
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.tx_select()
        ch.basic_publish("", q, b"rolled back")
        time.sleep(0.05)
        eq(count(ch, q), 0, "uncommitted publish visible")
        ch.tx_rollback()
        ch.basic_publish("", q, b"one")
        ch.basic_publish("", q, b"two")
        ch.tx_commit()
        eq(count(ch, q), 2, "after commit")
        m, _, body = ch.basic_get(q)
        eq(body, b"one", "first committed")
        ch.basic_ack(m.delivery_tag)
        ch.tx_rollback()  # the ack is undone: the message stays unacked
        ch.basic_ack(m.delivery_tag)
        ch.tx_commit()
        eq(count(ch, q), 1, "after acked in tx")
        eq(drain(ch, q), [b"two"], "remaining")
        ch.tx_commit()
    finally:
        safe_close(conn)


@scenario("close")
def s_close() -> None:
    conn = connect()
    ch = conn.channel()
    ch2 = conn.channel()
    ch2.close()
    check(ch2.is_closed and ch.is_open, "channel close")
    try:
        ch.basic_consume(name("no-queue"), lambda *a: None)
        raise AssertionError("consume from a missing queue succeeded")
    except pika.exceptions.ChannelClosedByBroker as exc:
        eq(exc.reply_code, 404, "reply code")
    ch3 = conn.channel()  # the connection survives a channel error
    ch3.queue_declare("", exclusive=True)
    conn.close()
    check(conn.is_closed, "connection closed")
    try:
        conn.channel()
        raise AssertionError("channel on a closed connection")
    except pika.exceptions.ConnectionWrongStateError:
        pass


@scenario("mandatory_return")
def s_mandatory_return() -> None:
    conn = connect()
    try:
        ch = conn.channel()
        returned = []
        ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, p, b)))
        ch.basic_publish("amq.direct", name("unroutable"), b"back",
                         pika.BasicProperties(message_id="r1"), mandatory=True)
        wait_until(lambda: returned, what="basic.return",
                   poll=lambda t: conn.process_data_events(t))
        m, p, b = returned[0]
        eq((m.reply_code, m.reply_text, m.exchange, b, p.message_id),
           (312, "NO_ROUTE", "amq.direct", b"back", "r1"), "return")
    finally:
        safe_close(conn)


@scenario("priority")
def s_priority() -> None:
    conn = connect()
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True, arguments={"x-max-priority": 5}).method.queue
        for body, prio in ((b"low", 1), (b"none", None), (b"high", 5), (b"over", 9), (b"mid", 3)):
            ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
        time.sleep(0.05)
        # priorities above x-max-priority count as the maximum; no priority counts as 0
        eq(drain(ch, q), [b"high", b"over", b"mid", b"low", b"none"], "priority order")
    finally:
        safe_close(conn)


@scenario("durable_restart", timeout=40)
def s_durable_restart() -> None:
    control("ping")  # SKIP before declaring anything when the broker cannot be restarted
    q = name("durable")
    conn = connect()
    try:
        ch = conn.channel()
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", q, b"persistent", pika.BasicProperties(delivery_mode=2))
        ch.basic_publish("", q, b"transient", pika.BasicProperties(delivery_mode=1))
    finally:
        safe_close(conn)
    control("restart 0.5")
    conn = connect()  # pika has no automatic recovery: connect again
    try:
        ch = conn.channel()
        ok = ch.queue_declare(q, passive=True)
        eq(ok.method.message_count, 1, "messages after the restart")
        eq(drain(ch, q), [b"persistent"], "the persistent message survived, the transient not")
        ch.queue_delete(q)
    finally:
        safe_close(conn)


if __name__ == "__main__":
    run_scenarios()
