"""kombu scenarios (py-amqp transport), including ensure_connection/ensure after a restart.

kombu has no transaction API: tx is not applicable.
"""

from __future__ import annotations

import time

from interop_common import check, control, eq, name, run_scenarios, scenario, wait_until
from interop_common import env as ENV
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.exceptions import OperationalError


def connection(**kw) -> Connection:
    return Connection(ENV.url, heartbeat=0, **kw)


def pump(conn: Connection, seconds: float) -> None:
    try:
        conn.drain_events(timeout=seconds)
    except TimeoutError:
        pass


def collect(conn: Connection, queues: list[Queue], n: int, timeout: float = 5.0) -> list:
    got = []

    def on_message(body, message) -> None:
        got.append(body)
        message.ack()

    with Consumer(conn, queues=queues, callbacks=[on_message], accept=["json", "text/plain"]):
        wait_until(lambda: len(got) >= n, timeout, f"{n} messages", poll=lambda t: pump(conn, t))
        pump(conn, 0.1)
    return got


@scenario("connect")
def s_connect() -> None:
    with connection() as conn:
        conn.ensure_connection(max_retries=3)
        check(conn.connected, "connected")
        check(conn.transport_cls in ("amqp", "pyamqp") or conn.transport.driver_type == "amqp",
              f"transport {conn.transport_cls}")
        ch = conn.channel()
        ch.close()


@scenario("topology")
def s_topology() -> None:
    with connection() as conn:
        x = Exchange(name("topo.x"), "direct", durable=True)
        q = Queue(name("topo.q"), x, routing_key="job", durable=True,
                  queue_arguments={"x-max-length": 1000})
        bound = q(conn.channel())
        bound.declare()
        _, count, consumers = bound.queue_declare(passive=True)
        eq((count, consumers), (0, 0), "passive declare")
        with Producer(conn) as producer:
            producer.publish({"job": 1}, exchange=x, routing_key="job")
        eq(collect(conn, [q], 1), [{"job": 1}], "routed")
        bound.delete()
        x(conn.channel()).delete()


@scenario("confirm")
def s_confirm() -> None:
    with connection(transport_options={"confirm_publish": True}) as conn:
        q = Queue(name("confirm"), exclusive=True)
        with Producer(conn) as producer:
            for i in range(100):
                producer.publish({"i": i}, routing_key=q.name, declare=[q], delivery_mode=2)
        eq(collect(conn, [q], 100), [{"i": i} for i in range(100)], "confirmed messages")


@scenario("consume_prefetch")
def s_consume_prefetch() -> None:
    with connection() as conn:
        q = Queue(name("prefetch"), exclusive=True)
        with Producer(conn) as producer:
            for i in range(9):
                producer.publish(i, routing_key=q.name, declare=[q])
        held = []
        with Consumer(conn, queues=[q], callbacks=[lambda b, m: held.append(m)],
                      prefetch_count=3, accept=["json"]):
            seen = []
            while len(seen) < 9:
                wait_until(lambda: len(held) >= 3, what="3 deliveries",
                           poll=lambda t: pump(conn, t))
                pump(conn, 0.1)
                eq(len(held), 3, "deliveries in flight with prefetch_count=3")
                for m in held:
                    seen.append(m.decode())
                    m.ack()
                held.clear()
        eq(seen, list(range(9)), "order")


@scenario("reject_requeue")
def s_reject_requeue() -> None:
    with connection() as conn:
        q = Queue(name("reject"), exclusive=True)
        with Producer(conn) as producer:
            producer.publish("a", routing_key=q.name, declare=[q], serializer="json")
            producer.publish("b", routing_key=q.name, serializer="json")
        held = []
        with Consumer(conn, queues=[q], callbacks=[lambda b, m: held.append((b, m))],
                      accept=["json"]):
            wait_until(lambda: len(held) == 2, what="2 deliveries", poll=lambda t: pump(conn, t))
            held[0][1].requeue()
            held[1][1].reject()
            wait_until(lambda: len(held) == 3, what="requeued delivery",
                       poll=lambda t: pump(conn, t))
            body, m = held[2]
            eq((body, m.delivery_info["redelivered"]), ("a", True), "redelivery")
            m.ack()
            pump(conn, 0.1)
            eq(len(held), 3, "rejected message came back")


@scenario("fanout")
def s_fanout() -> None:
    with connection() as conn:
        x = Exchange(name("fan"), "fanout", auto_delete=True)
        qs = [Queue(name(f"fan.{i}"), x, exclusive=True) for i in range(3)]
        for q in qs:
            q(conn.channel()).declare()
        with Producer(conn) as producer:
            producer.publish({"to": "all"}, exchange=x)
        for q in qs:
            eq(collect(conn, [q], 1), [{"to": "all"}], q.name)


@scenario("topic")
def s_topic() -> None:
    with connection() as conn:
        x = Exchange(name("topic"), "topic", auto_delete=True)
        q_eu = Queue(name("t.eu"), x, routing_key="*.eu.#", exclusive=True)
        q_all = Queue(name("t.orders"), x, routing_key="orders.#", exclusive=True)
        with Producer(conn) as producer:
            for rk in ("orders.eu.fr", "orders.us", "stock.eu", "orders"):
                producer.publish(rk, exchange=x, routing_key=rk, declare=[q_eu, q_all])
        eq(collect(conn, [q_eu], 2), ["orders.eu.fr", "stock.eu"], "*.eu.#")
        eq(collect(conn, [q_all], 3), ["orders.eu.fr", "orders.us", "orders"], "orders.#")


@scenario("close")
def s_close() -> None:
    conn = connection()
    conn.connect()
    ch = conn.channel()
    ch.close()
    conn.release()
    check(not conn.connected, "released")


@scenario("simple_queue")
def s_simple_queue() -> None:
    with connection() as conn:
        with conn.SimpleQueue(name("simple"), queue_opts={"auto_delete": True}) as sq:
            sq.put({"hello": "world"})
            sq.put({"n": 2})
            m = sq.get(timeout=5)
            eq(m.payload, {"hello": "world"}, "first")
            m.ack()
            m = sq.get(timeout=5)
            m.requeue()
            m = sq.get(timeout=5)
            eq(m.payload, {"n": 2}, "requeued")
            m.ack()
            sq.clear()


@scenario("reconnect", timeout=45)
def s_reconnect() -> None:
    control("ping")  # SKIP before declaring anything when the broker cannot be restarted
    conn = connection(transport_options={"confirm_publish": True})
    try:
        conn.ensure_connection(max_retries=3)
        x = Exchange(name("robust.x"), "direct", auto_delete=False)
        q = Queue(name("robust.q"), x, routing_key="r", auto_delete=False)
        producer = conn.Producer()
        errors: list[BaseException] = []
        publish = conn.ensure(producer, producer.publish, max_retries=40, interval_start=0.2,
                              interval_step=0.2, interval_max=0.5,
                              errback=lambda exc, interval: errors.append(exc))
        publish({"n": 1}, exchange=x, routing_key="r", declare=[q])
        control("restart 1")
        # the first attempt hits the dead connection; ensure() reconnects, redeclares, retries
        publish({"n": 2}, exchange=x, routing_key="r", declare=[q])
        check(errors, "publish after the restart did not go through a reconnect")
        # a plain ensure_connection() on an already recovered connection is a no-op
        conn.ensure_connection(max_retries=3)
        got = collect(conn, [q], 1)
        check({"n": 2} in got, f"message published after the restart not consumed: {got}")
        q(conn.channel()).delete()
        x(conn.channel()).delete()
    finally:
        conn.release()
    # a fresh Connection whose first connect waits for the broker to come back
    control("stop")
    conn = connection()
    try:
        import threading

        threading.Timer(1.0, control, args=("start",)).start()
        t0 = time.monotonic()
        try:
            conn.ensure_connection(max_retries=30, interval_start=0.2, interval_step=0.2,
                                   interval_max=0.5)
        except OperationalError as exc:
            raise AssertionError(f"ensure_connection gave up: {exc}") from exc
        check(time.monotonic() - t0 >= 0.5, "connected while the broker was down?")
        check(conn.connected, "connected after the broker came back")
    finally:
        conn.release()


if __name__ == "__main__":
    run_scenarios()
