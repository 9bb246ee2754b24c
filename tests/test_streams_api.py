"""Streams in the operations surface (issue 24): the management API's type and fields as
RabbitMQ 3.10.8 gives them, its refusals (purge, get), definitions keeping the type both
ways, leveret-ctl list_queues, and a stream across a restart."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from leveret.broker import Config
from leveret.testing import BrokerThread
from tests.httpapi import Api

S = {"x-queue-type": "stream"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerThread]:
    cfg = Config(port=0, host="127.0.0.1", http_port=0, data_dir=str(tmp_path / "data"), fsync_interval=0.05)
    with BrokerThread(cfg) as b:
        yield b


def api_of(b: BrokerThread) -> Api:
    assert b.broker is not None and b.broker.http_port
    return Api("127.0.0.1", b.broker.http_port)


def test_stream_type_and_fields(broker: BrokerThread) -> None:
    api = api_of(broker)
    c = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = c.channel()
    ch.queue_declare("sq", durable=True, arguments={**S, "x-max-age": "1h"})
    ch.confirm_delivery()
    for _ in range(5):
        ch.basic_publish("", "sq", b"x" * 100)
    ch.basic_qos(prefetch_count=2)
    ch.basic_consume("sq", lambda *a: None, arguments={"x-stream-offset": "first"})
    c.process_data_events(0.3)
    q = api.get("/queues/%2F/sq")
    assert q["type"] == "stream" and q["state"] == "running"
    assert q["arguments"] == {"x-max-age": "1h", "x-queue-type": "stream"}
    # RabbitMQ 3.10.8: the messages in the stream, none unacknowledged (2 are, to the consumer)
    assert (q["messages"], q["messages_ready"], q["messages_unacknowledged"]) == (5, 5, 0)
    assert q["consumers"] == 1 and q["readers"] == {q["node"]: 1}
    assert q["members"] == [q["node"]] and q["online"] == [q["node"]]
    for absent in ("backing_queue_status", "head_message_timestamp", "exclusive_consumer_tag", "messages_ram",
                   "messages_persistent", "message_bytes", "leader"):
        assert absent not in q
    assert q["message_stats"]["publish"] == 5
    totals = api.get("/overview")["queue_totals"]
    assert (totals["messages"], totals["messages_ready"], totals["messages_unacknowledged"]) == (5, 5, 0)
    assert {x["name"]: x["type"] for x in api.get("/queues/%2F")} == {"sq": "stream"}
    cons = api.get("/consumers/%2F")
    assert [(x["queue"]["name"], x["arguments"], x["prefetch_count"]) for x in cons] == [
        ("sq", {"x-stream-offset": "first"}, 2)]
    c.close()


def test_http_refusals_and_declare(broker: BrokerThread) -> None:
    api = api_of(broker)
    status, body = api.call("PUT", "/queues/%2F/hs", {"durable": False, "arguments": S})
    assert (status, body["reason"]) == (400, "invalid property 'non-durable' for queue 'hs' in vhost '/'")
    assert api.call("PUT", "/queues/%2F/hs", {"durable": True, "arguments": S})[0] == 201
    assert api.call("POST", "/exchanges/%2F/amq.default/publish",
                    {"properties": {}, "routing_key": "hs", "payload": "x", "payload_encoding": "string"}) == (
        200, {"routed": True})
    status, body = api.call("DELETE", "/queues/%2F/hs/contents")
    assert (status, body["reason"]) == (400, "queue.purge not supported by stream queues queue 'hs' in vhost '/'")
    status, body = api.call("POST", "/queues/%2F/hs/get", {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert (status, body["reason"]) == (400, "540 basic.get not supported by stream queues queue 'hs' in vhost '/'")
    assert api.get("/queues/%2F/hs")["messages"] == 1
    assert api.call("DELETE", "/queues/%2F/hs?if-empty=true")[0] == 204


def test_definitions_keep_the_type_both_ways(broker: BrokerThread, tmp_path: Path) -> None:
    api = api_of(broker)
    c = pika.BlockingConnection(pika.URLParameters(broker.url))
    c.channel().queue_declare("sd", durable=True, arguments={**S, "x-max-length-bytes": 10**9})
    c.close()
    defs = api.get("/definitions")
    assert [q["arguments"] for q in defs["queues"] if q["name"] == "sd"] == [
        {"x-max-length-bytes": 10**9, "x-queue-type": "stream"}]
    defs["queues"].append({"name": "st", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {},
                           "type": "stream"})
    with BrokerThread(Config(port=0, host="127.0.0.1", http_port=0, data_dir=str(tmp_path / "d2"))) as b2:
        api2 = api_of(b2)
        assert api2.call("POST", "/definitions", defs)[0] in (200, 201, 204)
        assert api2.get("/queues/%2F/sd")["type"] == "stream"
        assert api2.get("/queues/%2F/st")["type"] == "stream"
        assert b2.broker is not None
        assert type(b2.broker.vhosts["/"].queues["sd"]).__name__ == "StreamQueue"


def test_ctl_list_queues_type(broker: BrokerThread) -> None:
    c = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = c.channel()
    ch.queue_declare("ctl-s", durable=True, arguments=S)
    ch.confirm_delivery()
    ch.basic_publish("", "ctl-s", b"x")
    ch.queue_declare("ctl-c", durable=True)
    c.close()
    r = subprocess.run([sys.executable, "-m", "leveret.ctl", "-H", "127.0.0.1", "-P", str(broker.broker.http_port),  # type: ignore[union-attr]
                        "list_queues", "name", "type", "messages"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert rows[0] == ["name", "type", "messages"]
    assert sorted(rows[1:]) == [["ctl-c", "classic", "0"], ["ctl-s", "stream", "1"]]


def test_a_stream_survives_a_restart(tmp_path: Path) -> None:
    cfg = Config(port=0, host="127.0.0.1", data_dir=str(tmp_path / "data"), fsync_interval=0.05)
    with BrokerThread(cfg) as b:
        c = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = c.channel()
        ch.queue_declare("sr", durable=True, arguments={**S, "x-stream-max-segment-size-bytes": 5000})
        ch.confirm_delivery()
        for i in range(30):
            ch.basic_publish("", "sr", b"%d" % i, pika.BasicProperties(headers={"i": i}))
        c.close()
    with BrokerThread(cfg) as b:
        c = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = c.channel()
        ch.basic_qos(prefetch_count=100)
        got: list[tuple[int, int, bytes]] = []
        ch.basic_consume("sr", lambda c_, m, p, body: got.append((p.headers["x-stream-offset"], p.headers["i"], body)),
                         arguments={"x-stream-offset": 12})
        deadline = time.monotonic() + 5
        while len(got) < 18 and time.monotonic() < deadline:
            c.process_data_events(0.05)
        assert got == [(i, i, b"%d" % i) for i in range(12, 30)]
        c.close()


def test_the_test_tooling_counts_a_streams_messages(broker: BrokerThread) -> None:
    from leveret.testing.inspect import Inspector

    c = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = c.channel()
    ch.queue_declare("si", durable=True, arguments=S)
    ch.confirm_delivery()
    for _ in range(4):
        ch.basic_publish("", "si", b"x")
    c.close()
    assert broker.broker is not None
    inspector = Inspector(broker.broker)
    assert broker.call(lambda: inspector.message_count("si")) == 4
    info = broker.call(lambda: inspector.queue("si"))
    assert (info.messages, info.unacked) == (4, 0)
