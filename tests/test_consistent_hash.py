"""The ``x-consistent-hash`` exchange through pika (broker in a background thread).

Every expectation was checked against RabbitMQ 3.10.8 with rabbitmq_consistent_hash_exchange:
``LEVERET_REFERENCE_URL=amqp://guest:guest@127.0.0.1:5672/`` runs these tests against it.
"""

from __future__ import annotations

import collections
import os
import time
import uuid
from collections.abc import Callable, Iterator

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker

REFERENCE = os.environ.get("LEVERET_REFERENCE_URL")


@pytest.fixture
def target_url(request: pytest.FixtureRequest) -> str:
    if REFERENCE:
        return REFERENCE
    return request.getfixturevalue("broker_thread").url


@pytest.fixture
def conn(target_url: str) -> Iterator[pika.BlockingConnection]:
    c = pika.BlockingConnection(pika.URLParameters(target_url))
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def names(conn: pika.BlockingConnection) -> Iterator[Callable[[str], str]]:
    """Unique names; the queues and exchanges made with them are deleted afterwards."""
    made: list[str] = []

    def name(prefix: str) -> str:
        made.append(f"{prefix}-{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield name
    ch = conn.channel()
    for n in made:
        ch.queue_delete(n)
        ch.exchange_delete(n)


def hash_exchange(ch: BlockingChannel, x: str, **arguments: str) -> None:
    ch.exchange_declare(x, "x-consistent-hash", arguments=arguments or None, auto_delete=False)


def queues(ch: BlockingChannel, x: str, name: Callable[[str], str], weights: list[str]) -> list[str]:
    qs = []
    for w in weights:
        q = name("chq")
        ch.queue_declare(q)
        ch.queue_bind(q, x, w)
        qs.append(q)
    return qs


def where(ch: BlockingChannel, qs: list[str], expected: int) -> dict[bytes, str]:
    """Which queue each message body went to (every queue drained)."""
    out: dict[bytes, str] = {}
    deadline = time.monotonic() + 10
    while len(out) < expected and time.monotonic() < deadline:
        for q in qs:
            while True:
                m, _, body = ch.basic_get(q, auto_ack=True)
                if m is None:
                    break
                assert body not in out, "a message was routed twice"
                out[body] = q
    assert len(out) == expected
    return out


@pytest.mark.parametrize(
    "key, text",
    [
        ("abc", 'The binding key must be an integer: <<"abc">>'),
        ("", "The binding key must be an integer: <<>>"),
        (" 5", 'The binding key must be an integer: <<" 5">>'),
        ("1.5", 'The binding key must be an integer: <<"1.5">>'),
        ("0", "The binding key must be greater than 0"),
        ("-1", "The binding key must be greater than 0"),
    ],
)
def test_binding_keys_are_positive_integers(conn: pika.BlockingConnection, names: Callable[[str], str], key: str, text: str) -> None:
    ch = conn.channel()
    x, q = names("chx"), names("chq")
    hash_exchange(ch, x)
    ch.queue_declare(q)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_bind(q, x, key)
    assert (e.value.reply_code, e.value.reply_text) == (406, "PRECONDITION_FAILED - " + text)
    # only the channel is closed; exchange-to-exchange bindings are checked the same way
    ch = conn.channel()
    x2 = names("chx")
    ch.exchange_declare(x2, "fanout")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_bind(x2, x, key)
    assert e.value.reply_code == 406
    ch = conn.channel()
    for good in ("1", "+3", "10", "99999999999999999999"):
        ch.queue_bind(q, x, good)


@pytest.mark.parametrize(
    "arguments, text",
    [
        ({"hash-header": "h", "hash-property": "message_id"}, "hash-header and hash-property are mutually exclusive"),
        ({"hash-property": "app_id"}, "Unsupported property: app_id"),
        ({"hash-property": "user_id"}, "Unsupported property: user_id"),
    ],
)
def test_hash_arguments_are_checked(conn: pika.BlockingConnection, names: Callable[[str], str], arguments: dict[str, str], text: str) -> None:
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        hash_exchange(ch, names("chx"), **arguments)
    assert (e.value.reply_code, e.value.reply_text) == (406, "PRECONDITION_FAILED - " + text)
    ch = conn.channel()
    for prop in ("message_id", "correlation_id", "timestamp"):
        hash_exchange(ch, names("chx"), **{"hash-property": prop})


def test_distribution_follows_the_weights_and_a_key_always_lands_in_the_same_queue(
    conn: pika.BlockingConnection, names: Callable[[str], str]
) -> None:
    ch = conn.channel()
    x = names("chx")
    hash_exchange(ch, x)
    qs = queues(ch, x, names, ["1", "3"])
    n = 4000
    for i in range(n):
        ch.basic_publish(x, f"key-{i}", b"%d" % i)
    first = where(ch, qs, n)
    counts = collections.Counter(first.values())
    assert 800 <= counts[qs[0]] <= 1200, counts  # 1/4 of 4000 is 1000
    assert counts[qs[0]] + counts[qs[1]] == n
    for i in range(n):  # the same keys again: every one to the same queue
        ch.basic_publish(x, f"key-{i}", b"%d" % i)
    assert where(ch, qs, n) == first


def test_adding_a_queue_moves_only_the_keys_it_takes(conn: pika.BlockingConnection, names: Callable[[str], str]) -> None:
    ch = conn.channel()
    x = names("chx")
    hash_exchange(ch, x)
    qs = queues(ch, x, names, ["1", "1", "1"])
    n = 3000
    for i in range(n):
        ch.basic_publish(x, f"user-{i}", b"%d" % i)
    before = where(ch, qs, n)
    qs += queues(ch, x, names, ["1"])
    for i in range(n):
        ch.basic_publish(x, f"user-{i}", b"%d" % i)
    after = where(ch, qs, n)
    moved = [k for k in before if after[k] != before[k]]
    assert all(after[k] == qs[3] for k in moved), "a key moved between the old queues"
    assert 500 <= len(moved) <= 1000, len(moved)  # a quarter of the keys (750)


def test_hash_header_routes_by_the_header_and_a_message_without_it_still_routes(
    conn: pika.BlockingConnection, names: Callable[[str], str]
) -> None:
    ch = conn.channel()
    x = names("chx")
    hash_exchange(ch, x, **{"hash-header": "tenant"})
    qs = queues(ch, x, names, ["1", "1", "1", "1"])
    n = 400
    for i in range(n):  # routing keys differ, the header repeats every 8 messages
        props = pika.BasicProperties(headers={"tenant": f"t{i % 8}"})
        ch.basic_publish(x, f"rk-{i}", b"%d" % i, props)
    got = where(ch, qs, n)
    by_tenant: dict[int, set[str]] = collections.defaultdict(set)
    for i in range(n):
        by_tenant[i % 8].add(got[b"%d" % i])
    assert all(len(s) == 1 for s in by_tenant.values()), by_tenant
    assert len({q for s in by_tenant.values() for q in s}) > 1  # not everything in one queue
    ch.basic_publish(x, "rk", b"no header")
    ch.basic_publish(x, "rk", b"other headers", pika.BasicProperties(headers={"x": 1}))
    assert set(where(ch, qs, 2)) == {b"no header", b"other headers"}


@pytest.mark.parametrize("prop", ["message_id", "correlation_id", "timestamp"])
def test_hash_property_routes_by_the_property(conn: pika.BlockingConnection, names: Callable[[str], str], prop: str) -> None:
    ch = conn.channel()
    x = names("chx")
    hash_exchange(ch, x, **{"hash-property": prop})
    qs = queues(ch, x, names, ["1", "1", "1", "1"])
    n = 200

    def value(i: int) -> str | int:
        return 1_700_000_000 + i % 8 if prop == "timestamp" else f"id-{i % 8}"

    for i in range(n):
        ch.basic_publish(x, f"rk-{i}", b"%d" % i, pika.BasicProperties(**{prop: value(i)}))
    got = where(ch, qs, n)
    by_value: dict[int, set[str]] = collections.defaultdict(set)
    for i in range(n):
        by_value[i % 8].add(got[b"%d" % i])
    assert all(len(s) == 1 for s in by_value.values()), by_value
    assert len({q for s in by_value.values() for q in s}) > 1
    ch.basic_publish(x, "rk", b"without it")
    assert set(where(ch, qs, 1)) == {b"without it"}
