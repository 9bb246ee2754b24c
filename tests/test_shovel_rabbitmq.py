"""Leveret's shovel to a real RabbitMQ (a private node, tests/rabbitmq_node.py):
100,000 persistent messages moved with on-confirm while RabbitMQ is killed (-9) and
started again in the middle (every message arrives, none are left, duplicates counted
and reported), and the throughput of that move against RabbitMQ's own shovel doing the
same move, in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from rabbitmq_node import RabbitNode

from leveret.broker import Config
from leveret.testing import BrokerThread
from tests.httpapi import Api

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def leveret() -> Iterator[BrokerThread]:
    with BrokerThread(Config(port=0, host="127.0.0.1", http_port=0)) as b:
        yield b


@pytest.fixture
def api(leveret: BrokerThread) -> Api:
    assert leveret.broker is not None and leveret.broker.http_port
    return Api("127.0.0.1", leveret.broker.http_port)


def wait_until(cond: Callable[[], Any], timeout: float = 120.0, what: str = "", every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        time.sleep(every)


def fill(url: str, queue: str, n: int, body_size: int = 100) -> None:
    """n persistent messages, bodies numbered (the first 10 bytes), in one connection."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    props = pika.BasicProperties(delivery_mode=2)
    pad = b"." * max(0, body_size - 10)
    for i in range(n):
        ch.basic_publish("", queue, b"%010d" % i + pad, props)
    # a round trip: every publish before it has been handled
    assert ch.queue_declare(queue, passive=True).method.message_count == n
    conn.close()


def count(url: str, queue: str) -> int:
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPConnectionError:
        return -1  # (RabbitMQ restarting)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.AMQPError:
        return -1
    finally:
        if conn.is_open:
            conn.close()


def drain_numbers(url: str, queue: str) -> list[int]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2000)
    out: list[int] = []
    total = ch.queue_declare(queue, passive=True).method.message_count
    for _m, _p, body in ch.consume(queue, auto_ack=True, inactivity_timeout=5):
        if body is None:
            break
        out.append(int(body[:10]))
        if len(out) >= total:
            break
    ch.cancel()
    conn.close()
    return out


def test_100k_on_confirm_to_rabbitmq_killed_and_restarted(rabbit: RabbitNode, leveret: BrokerThread, api: Api) -> None:
    n = 100_000
    fill(leveret.url, "mig.big", n)
    value = {"src-protocol": "amqp091", "src-uri": "amqp://", "src-queue": "mig.big",
             "dest-protocol": "amqp091", "dest-uri": rabbit.url.rstrip("/"), "dest-queue": "mig.big",
             "ack-mode": "on-confirm", "reconnect-delay": 1}
    t0 = time.monotonic()
    assert api.call("PUT", "/parameters/shovel/%2F/to-rabbit", {"value": value})[0] == 201
    wait_until(lambda: count(rabbit.url, "mig.big") >= n // 3, what="a third in RabbitMQ", every=0.05)
    at_kill = count(leveret.url, "mig.big")
    rabbit.kill()  # kill -9 of the whole node, mid-way
    time.sleep(1)
    states = {s["state"] for s in api.get("/shovels")}
    rabbit.start()
    restart_s = rabbit.start_seconds
    wait_until(lambda: count(leveret.url, "mig.big") == 0 and count(rabbit.url, "mig.big") >= n,
               timeout=300, what="every message in RabbitMQ")
    elapsed = time.monotonic() - t0
    st = api.get("/shovels")[0]
    assert st["state"] == "running"
    assert api.call("DELETE", "/parameters/shovel/%2F/to-rabbit")[0] == 204
    numbers = drain_numbers(rabbit.url, "mig.big")
    assert set(numbers) == set(range(n))  # every message arrived
    duplicates = len(numbers) - n
    assert count(leveret.url, "mig.big") == 0  # none left
    print(f"\n100k on-confirm Leveret->RabbitMQ, RabbitMQ killed at {n - at_kill} moved and restarted "
          f"({restart_s:.1f} s to start): {len(numbers)} received, {duplicates} duplicates, "
          f"{elapsed:.1f} s in all; shovel states while RabbitMQ was down: {sorted(states)}")
    assert "terminated" in states or "starting" in states
    # at least once: only what was in flight (prefetch 1000) when RabbitMQ died is doubled
    assert duplicates <= 1000


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f} msg/s ({seconds:.2f} s)"


def test_throughput_against_rabbitmqs_own_shovel(rabbit: RabbitNode, leveret: BrokerThread, api: Api) -> None:
    """The same move (n persistent messages, a Leveret queue to a RabbitMQ queue,
    on-confirm, prefetch 1000), by Leveret's shovel and by RabbitMQ's."""
    n = 20_000
    results = {}
    for who in ("leveret", "rabbitmq"):
        q = f"tp.{who}"
        fill(leveret.url, q, n)
        value = {"src-protocol": "amqp091", "src-queue": q, "src-delete-after": "queue-length",
                 "dest-protocol": "amqp091", "dest-queue": q, "ack-mode": "on-confirm",
                 "src-prefetch-count": 1000}
        t0 = time.monotonic()
        if who == "leveret":
            value.update({"src-uri": "amqp://", "dest-uri": rabbit.url.rstrip("/")})
            assert api.call("PUT", f"/parameters/shovel/%2F/{q}", {"value": value})[0] == 201
        else:
            value.update({"src-uri": f"amqp://guest:guest@127.0.0.1:{leveret.port}", "dest-uri": "amqp://"})
            rabbit.api("PUT", f"/parameters/shovel/%2F/{q}", {"value": value})
        wait_until(lambda q=q: count(rabbit.url, q) >= n and count(leveret.url, q) == 0,
                   timeout=300, what=f"{who}'s shovel done", every=0.1)
        results[who] = time.monotonic() - t0
        assert len(drain_numbers(rabbit.url, q)) == n
    line = (f"\nshovel throughput, {n} persistent 100-byte messages Leveret -> RabbitMQ, on-confirm: "
            f"Leveret's shovel {_rate(n, results['leveret'])}, RabbitMQ's shovel {_rate(n, results['rabbitmq'])}")
    print(line)
