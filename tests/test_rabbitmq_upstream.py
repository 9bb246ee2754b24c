"""Leveret as the upstream of RabbitMQ's own federation and shovel plugins, against a
private RabbitMQ node (tests/rabbitmq_node.py): exchange federation (through the
``x-federation-upstream`` exchange it declares here), queue federation (its consumer
with ``x-priority`` -1) and a RabbitMQ shovel draining a Leveret queue."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pika
import pytest
from rabbitmq_node import RabbitNode

from leveret.broker import Config
from leveret.testing import BrokerThread

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def leveret() -> Iterator[BrokerThread]:
    with BrokerThread(Config(port=0)) as b:
        yield b


def erl_uri(b: BrokerThread) -> str:
    """The broker's URI as RabbitMQ's amqp_uri reads it: no path is the vhost "/"
    (a path of "/" would be the vhost "")."""
    return f"amqp://guest:guest@127.0.0.1:{b.port}"


def wait_until(cond: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        time.sleep(0.2)


def _upstream(
    rabbit: RabbitNode, leveret: BrokerThread, name: str, pattern: str, **value: Any
) -> None:
    rabbit.api(
        "PUT",
        f"/parameters/federation-upstream/%2F/{name}",
        {"value": {"uri": erl_uri(leveret), **value}},
    )
    rabbit.api(
        "PUT",
        f"/policies/%2F/{name}",
        {"pattern": pattern, "definition": {"federation-upstream": name}, "apply-to": "all"},
    )


def _links(rabbit: RabbitNode, upstream: str) -> list[dict[str, Any]]:
    return [
        link for link in rabbit.api("GET", "/federation-links") if link.get("upstream") == upstream
    ]


def _drop_upstream(rabbit: RabbitNode, name: str) -> None:
    rabbit.api("DELETE", f"/policies/%2F/{name}")
    rabbit.api("DELETE", f"/parameters/federation-upstream/%2F/{name}")


def test_upstream_exchange_type_routes_as_rabbitmq(leveret: BrokerThread) -> None:
    """The exchange type itself: a fanout that drops messages that made max-hops hops or
    came from the downstream; x-max-hops is mandatory and a long."""
    conn = pika.BlockingConnection(pika.URLParameters(leveret.url))
    ch = conn.channel()
    ch.exchange_declare(
        "up.x",
        "x-federation-upstream",
        internal=True,
        arguments={"x-max-hops": 2, "x-downstream-name": "down", "x-downstream-vhost": "/"},
    )
    ch.exchange_declare("up.src", "direct")
    ch.exchange_bind("up.x", "up.src", routing_key="k")
    ch.queue_declare("up.q", exclusive=True)
    ch.queue_bind("up.q", "up.x", routing_key="ignored-by-fanout")

    def hop(cluster: str, vhost: str = "/") -> dict[str, Any]:
        return {
            "uri": "amqp://x",
            "exchange": "e",
            "redelivered": False,
            "cluster-name": cluster,
            "vhost": vhost,
        }

    cases = [
        (None, True),
        ([hop("other")], True),  # one hop < 2
        ([hop("other"), hop("more")], False),  # 2 hops = max-hops
        ([hop("down")], False),  # came from the downstream
        ([hop("down", "/other")], True),  # same cluster name, another vhost
    ]
    for i, (path, _) in enumerate(cases):
        headers = None if path is None else {"x-received-from": path}
        ch.basic_publish("up.src", "k", str(i).encode(), pika.BasicProperties(headers=headers))
    got = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _m, _p, body = ch.basic_get("up.q", auto_ack=True)
        if body is None:
            if len(got) >= sum(1 for _, ok in cases if ok):
                break
            time.sleep(0.05)
            continue
        got.append(int(body))
    assert got == [i for i, (_, ok) in enumerate(cases) if ok]
    ch.exchange_delete("up.x")
    ch.exchange_delete("up.src")
    conn.close()


@pytest.mark.parametrize(
    "arguments, text",
    [
        ({}, "PRECONDITION_FAILED - Argument x-max-hops missing"),
        ({"x-max-hops": "1"}, "PRECONDITION_FAILED - Argument x-max-hops must be of type long"),
    ],
)
def test_upstream_exchange_needs_max_hops(
    leveret: BrokerThread, arguments: dict[str, Any], text: str
) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(leveret.url))
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare("up.bad", "x-federation-upstream", arguments=arguments)
    assert (e.value.reply_code, e.value.reply_text) == (406, text)
    assert conn.is_open  # a channel error
    conn.channel().exchange_declare("up.fine", "fanout", auto_delete=True)
    conn.close()


def test_rabbitmq_exchange_federation_from_leveret(
    rabbit: RabbitNode, leveret: BrokerThread
) -> None:
    lconn = pika.BlockingConnection(pika.URLParameters(leveret.url))
    lch = lconn.channel()
    lch.exchange_declare("fedx.orders", "topic", durable=True)
    rconn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    rch = rconn.channel()
    rch.exchange_declare("fedx.orders", "topic", durable=True)
    rch.queue_declare("fedx.eu", exclusive=True)
    rch.queue_bind("fedx.eu", "fedx.orders", "eu.#")
    _upstream(rabbit, leveret, "lev-x", "^fedx\\.", **{"max-hops": 1})
    try:
        wait_until(
            lambda: [x for x in _links(rabbit, "lev-x") if x["status"] == "running"],
            what="a running link",
        )
        # RabbitMQ declared its upstream exchange here, with our type, and bound it
        ups = wait_until(
            lambda: [x for x in leveret.exchanges() if x.type == "x-federation-upstream"],
            what="the upstream exchange",
        )
        assert len(ups) == 1 and ups[0].name.startswith("federation: fedx.orders ->")
        assert ups[0].internal
        # its binding for eu.# reaches the upstream exchange once the link has bound
        wait_until(
            lambda: [
                b
                for b in leveret.bindings()
                if b.destination == ups[0].name and b.routing_key == "eu.#"
            ],
            what="the link's binding",
        )
        for i in range(100):
            lch.basic_publish(
                "fedx.orders",
                "eu.fr" if i % 2 else "us.ny",
                str(i).encode(),
                pika.BasicProperties(delivery_mode=2),
            )
        # already one hop: RabbitMQ's link is the second, max-hops 1 drops it here
        lch.basic_publish(
            "fedx.orders",
            "eu.de",
            b"looped",
            pika.BasicProperties(
                headers={
                    "x-received-from": [
                        {
                            "uri": "amqp://elsewhere",
                            "exchange": "fedx.orders",
                            "redelivered": False,
                            "cluster-name": "elsewhere",
                            "vhost": "/",
                        }
                    ]
                }
            ),
        )
        lch.basic_publish("fedx.orders", "eu.fr", b"last")
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while (not got or got[-1] != b"last") and time.monotonic() < deadline:
            _m, props, body = rch.basic_get("fedx.eu", auto_ack=True)
            if body is None:
                time.sleep(0.05)
                continue
            got.append(body)
        assert got == [str(i).encode() for i in range(1, 100, 2)] + [b"last"]
        # RabbitMQ adds its hop: the message came through the upstream exchange
        assert props.headers["x-received-from"][0]["exchange"] == "fedx.orders"
    finally:
        _drop_upstream(rabbit, "lev-x")
        rconn.close()
        lch.exchange_delete("fedx.orders")
        lconn.close()
    # the link's upstream exchange and queue go away with the link
    wait_until(
        lambda: not [x for x in leveret.exchanges() if x.type == "x-federation-upstream"],
        what="the upstream exchange deleted",
    )


def test_rabbitmq_queue_federation_from_leveret(rabbit: RabbitNode, leveret: BrokerThread) -> None:
    lconn = pika.BlockingConnection(pika.URLParameters(leveret.url))
    lch = lconn.channel()
    lch.queue_declare("fedq.jobs", durable=True)
    lch.confirm_delivery()
    for i in range(500):
        lch.basic_publish("", "fedq.jobs", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    rconn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    rch = rconn.channel()
    rch.queue_declare("fedq.jobs", durable=True)
    _upstream(rabbit, leveret, "lev-q", "^fedq\\.")
    try:
        wait_until(
            lambda: [x for x in _links(rabbit, "lev-q") if x["status"] == "running"],
            what="a running link",
        )
        got: list[bytes] = []
        rch.basic_qos(prefetch_count=100)
        rch.basic_consume(
            "fedq.jobs", lambda c, m, p, b: (got.append(b), c.basic_ack(m.delivery_tag))
        )
        deadline = time.monotonic() + 60
        while len(got) < 500 and time.monotonic() < deadline:
            rconn.process_data_events(0.2)
        assert sorted(int(b) for b in got) == list(range(500))
        # the link consumed here with RabbitMQ's x-priority -1
        assert [
            c.arguments.get("x-priority") for c in leveret.consumers() if c.queue == "fedq.jobs"
        ] == [-1]
        assert leveret.message_count("fedq.jobs") == 0
    finally:
        _drop_upstream(rabbit, "lev-q")
        rch.queue_delete("fedq.jobs")
        rconn.close()
        lch.queue_delete("fedq.jobs")
        lconn.close()


def test_rabbitmq_shovel_drains_a_leveret_queue(rabbit: RabbitNode, leveret: BrokerThread) -> None:
    n = 10_000
    lconn = pika.BlockingConnection(pika.URLParameters(leveret.url))
    lch = lconn.channel()
    lch.queue_declare("drain.me", durable=True)
    lch.confirm_delivery()
    for i in range(n):
        lch.basic_publish("", "drain.me", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    rconn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    rch = rconn.channel()
    rch.queue_declare("drained", durable=True)
    value = {
        "src-protocol": "amqp091",
        "src-uri": erl_uri(leveret),
        "src-queue": "drain.me",
        "src-delete-after": "queue-length",
        "dest-protocol": "amqp091",
        "dest-uri": "amqp://",
        "dest-queue": "drained",
        "ack-mode": "on-confirm",
    }
    rabbit.api("PUT", "/parameters/shovel/%2F/" + quote("from-leveret", safe=""), {"value": value})
    try:
        wait_until(
            lambda: rch.queue_declare("drained", passive=True).method.message_count >= n,
            timeout=120,
            what="every message in RabbitMQ",
        )
        # the shovel deletes itself after queue-length messages
        wait_until(lambda: not rabbit.api("GET", "/shovels/%2F"), what="the shovel gone")
        assert leveret.message_count("drain.me") == 0
        bodies = []
        while True:
            _m, _p, body = rch.basic_get("drained", auto_ack=True)
            if body is None:
                break
            bodies.append(int(body))
        assert sorted(bodies) == list(range(n))  # each once
    finally:
        try:
            rabbit.api("DELETE", "/parameters/shovel/%2F/from-leveret")
        except Exception:
            pass
        rch.queue_delete("drained")
        rconn.close()
        lch.queue_delete("drain.me")
        lconn.close()
