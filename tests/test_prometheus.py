"""The Prometheus endpoint (rabbitmq_prometheus's names), parsed with prometheus_client's
text parser and checked against a known workload run through pika."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest
from prometheus_client.parser import text_string_to_metric_families

from leveret.broker import Config
from leveret.testing import BrokerThread
from tests.polling import pump_until, wait_until


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    with BrokerThread(Config(port=0, host="127.0.0.1", prometheus_port=0, vhosts=["/", "pv"])) as b:
        yield b


def scrape(broker: BrokerThread, path: str = "/metrics") -> dict[str, list[tuple[dict[str, str], float]]]:
    assert broker.broker is not None and broker.broker.prometheus_port
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.broker.prometheus_port}{path}", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(m: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for lab, v in m[name] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (name, labels, m.get(name))
    return found[0]


def test_metrics_follow_a_known_workload(broker: BrokerThread) -> None:
    m = scrape(broker)
    (labels, one), = m["rabbitmq_identity_info"]
    assert one == 1 and {"rabbitmq_node", "rabbitmq_cluster", "rabbitmq_cluster_permanent_id"} <= set(labels)
    assert value(m, "rabbitmq_connections") == 0 and value(m, "rabbitmq_queues") == 0
    base_received = value(m, "rabbitmq_global_messages_received_total", protocol="amqp091")

    params = pika.ConnectionParameters("127.0.0.1", broker.port, "/", pika.PlainCredentials("guest", "guest"))
    conn = pika.BlockingConnection(params)
    other = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port, "pv",
                                                              pika.PlainCredentials("guest", "guest")))
    try:
        ch = conn.channel()
        ch.queue_declare("pm.a")
        ch.queue_declare("pm.b")
        other.channel().queue_declare("pm.c")
        for _ in range(7):
            ch.basic_publish("", "pm.a", b"x")
        for _ in range(2):
            ch.basic_publish("", "pm.b", b"y")
        # a consumer takes 3 of pm.a and leaves them unacked
        ch2 = conn.channel()
        ch2.basic_qos(prefetch_count=3)
        got: list[int] = []
        ch2.basic_consume("pm.a", lambda c, meth, p, b: got.append(meth.delivery_tag))
        pump_until(conn, lambda: len(got) >= 3, pump=0.05)
        assert len(got) == 3

        m = scrape(broker)
        assert value(m, "rabbitmq_connections") == 2
        assert value(m, "rabbitmq_channels") == 3
        assert value(m, "rabbitmq_consumers") == 1
        assert value(m, "rabbitmq_queues") == 3
        assert value(m, "rabbitmq_queue_messages_ready") == 4 + 2
        assert value(m, "rabbitmq_queue_messages_unacked") == 3
        assert value(m, "rabbitmq_queue_messages") == 9
        assert value(m, "rabbitmq_global_messages_received_total", protocol="amqp091") - base_received == 9
        assert value(m, "rabbitmq_global_messages_delivered_total", protocol="amqp091",
                     queue_type="rabbit_classic_queue") == 3
        assert value(m, "rabbitmq_global_consumers", protocol="amqp091") == 1
        assert value(m, "rabbitmq_queues_created_total") == 3
        assert value(m, "rabbitmq_process_open_fds") > 0 and value(m, "rabbitmq_process_resident_memory_bytes") > 0

        p = scrape(broker, "/metrics/per-object")
        assert p["rabbitmq_identity_info"]
        assert value(p, "rabbitmq_queue_messages_ready", vhost="/", queue="pm.a") == 4
        assert value(p, "rabbitmq_queue_messages_unacked", vhost="/", queue="pm.a") == 3
        assert value(p, "rabbitmq_queue_messages_ready", vhost="/", queue="pm.b") == 2
        assert value(p, "rabbitmq_queue_messages_ready", vhost="pv", queue="pm.c") == 0
        assert value(p, "rabbitmq_queue_consumers", vhost="/", queue="pm.a") == 1

        # ack them: unacked back to 0, acknowledged counted
        for tag in got:
            ch2.basic_ack(tag)
        conn.process_data_events(time_limit=0.2)
        ch2.close()
        ch.queue_delete("pm.b")
        m = scrape(broker)
        assert value(m, "rabbitmq_queue_messages_unacked") == 0
        assert value(m, "rabbitmq_queue_messages_ready") == 4
        assert value(m, "rabbitmq_global_messages_acknowledged_total", protocol="amqp091",
                     queue_type="rabbit_classic_queue") == 3
        assert value(m, "rabbitmq_queues_deleted_total") == 1
        assert value(m, "rabbitmq_consumers") == 0
    finally:
        conn.close()
        other.close()
    def without_connections() -> dict[str, list[tuple[dict[str, str], float]]]:
        s = scrape(broker)
        return s if value(s, "rabbitmq_connections") == 0 else {}

    m = wait_until(without_connections, what="rabbitmq_connections to be 0", interval=0.05)
    assert value(m, "rabbitmq_connections") == 0
    assert value(m, "rabbitmq_connections_opened_total") == 2
    assert value(m, "rabbitmq_connections_closed_total") == 2


def test_confirmed_routed_and_unroutable_counters(broker: BrokerThread) -> None:
    """rabbitmq_global_messages_{confirmed,routed,unroutable_dropped,unroutable_returned}_total
    against a known workload: on a confirm-mode channel 5 routed publishes, 2 mandatory
    unroutable ones (returned, then confirmed) and 3 unroutable ones (dropped, confirmed);
    on a plain channel 4 routed and 1 unroutable."""
    m = scrape(broker)
    names = ("received", "routed", "confirmed", "unroutable_dropped", "unroutable_returned")
    base = {n: value(m, f"rabbitmq_global_messages_{n}_total", protocol="amqp091") for n in names}
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port, "pv",
                                                             pika.PlainCredentials("guest", "guest")))
    try:
        ch = conn.channel()
        ch.queue_declare("pm.confirm")
        ch.confirm_delivery()
        for _ in range(5):
            ch.basic_publish("", "pm.confirm", b"x")
        for _ in range(2):
            with pytest.raises(pika.exceptions.UnroutableError):
                ch.basic_publish("amq.topic", "no.such.key", b"r", mandatory=True)
        for _ in range(3):
            ch.basic_publish("amq.topic", "no.such.key", b"d")
        plain = conn.channel()
        for _ in range(4):
            plain.basic_publish("", "pm.confirm", b"p")
        plain.basic_publish("amq.fanout", "", b"p")  # no binding: dropped
        plain.queue_declare("pm.confirm", passive=True)  # a round trip: the publishes are in
        m = scrape(broker)
        got = {n: value(m, f"rabbitmq_global_messages_{n}_total", protocol="amqp091") - base[n] for n in names}
        assert got == {"received": 15, "routed": 9, "confirmed": 10, "unroutable_dropped": 4, "unroutable_returned": 2}
        assert value(m, "rabbitmq_global_publishers", protocol="amqp091") == 1
        assert value(m, "rabbitmq_global_consumers", protocol="amqp091") == 0
    finally:
        conn.close()
