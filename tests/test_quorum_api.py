"""Quorum queues in the operations surface (issue 22): the management API's type and
fields as RabbitMQ 3.10.8 gives them, /api/feature-flags, rabbitmq_version, definitions
keeping the type both ways, and leveret-ctl list_queues."""

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

Q = {"x-queue-type": "quorum"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerThread]:
    cfg = Config(port=0, host="127.0.0.1", http_port=0, data_dir=str(tmp_path / "data"))
    with BrokerThread(cfg) as b:
        yield b


def api_of(b: BrokerThread) -> Api:
    assert b.broker is not None and b.broker.http_port
    return Api("127.0.0.1", b.broker.http_port)


def test_queue_type_and_fields(broker: BrokerThread) -> None:
    api = api_of(broker)
    c = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = c.channel()
    ch.queue_declare("qq", durable=True, arguments={**Q, "x-delivery-limit": 3})
    ch.queue_declare("cq", durable=True)
    for _ in range(3):
        ch.basic_publish("", "qq", b"x")
    deadline = time.monotonic() + 5
    while ch.queue_declare("qq", passive=True).method.message_count != 3:
        assert time.monotonic() < deadline
        c.sleep(0.02)
    ch.basic_get("qq")  # one unacked
    q = api.get("/queues/%2F/qq")
    assert q["type"] == "quorum"
    assert q["arguments"] == {"x-delivery-limit": 3, "x-queue-type": "quorum"}
    assert (q["durable"], q["auto_delete"], q["exclusive"]) == (True, False, False)
    assert (q["messages"], q["messages_ready"], q["messages_unacknowledged"]) == (3, 2, 1)
    assert (q["messages_persistent"], q["messages_ram"], q["messages_dlx"]) == (3, 0, 0)
    assert q["leader"] == q["node"] and q["members"] == [q["node"]] and q["online"] == [q["node"]]
    assert q["state"] == "running" and q["single_active_consumer_ctag"] is None
    assert q["consumers"] == 1  # (rabbit_fifo counts the unacknowledged basic.get)
    for classic_only in ("backing_queue_status", "head_message_timestamp", "exclusive_consumer_tag", "idle_since"):
        assert classic_only not in q
    assert api.get("/queues/%2F/cq")["type"] == "classic"
    assert {x["name"]: x["type"] for x in api.get("/queues/%2F")} == {"qq": "quorum", "cq": "classic"}
    c.close()


def test_feature_flags_and_version(broker: BrokerThread) -> None:
    api = api_of(broker)
    flags = api.get("/feature-flags")
    assert {f["name"] for f in flags} >= {"quorum_queue", "stream_queue", "implicit_default_bindings",
                                          "virtual_host_metadata", "user_limits", "maintenance_mode_status"}
    assert len(flags) == 9
    assert all(f["state"] == "enabled" and f["stability"] == "stable" for f in flags)
    assert api.get("/overview")["rabbitmq_version"] == "3.10.8"
    # administrators only, as RabbitMQ
    assert api.call("PUT", "/users/mon", {"password": "pw", "tags": "monitoring"})[0] in (201, 204)
    status, body = Api("127.0.0.1", api_port(broker), "mon", "pw").call("GET", "/feature-flags")
    assert (status, body["reason"]) == (401, "Not administrator user")


def api_port(b: BrokerThread) -> int:
    assert b.broker is not None and b.broker.http_port
    return b.broker.http_port


def test_definitions_keep_the_type_both_ways(broker: BrokerThread, tmp_path: Path) -> None:
    api = api_of(broker)
    c = pika.BlockingConnection(pika.URLParameters(broker.url))
    c.channel().queue_declare("qd", durable=True, arguments={**Q, "x-dead-letter-strategy": "at-least-once"})
    c.close()
    defs = api.get("/definitions")
    assert [q["arguments"] for q in defs["queues"] if q["name"] == "qd"] == [
        {"x-dead-letter-strategy": "at-least-once", "x-queue-type": "quorum"}]
    # into a new broker: a quorum queue again; and a newer RabbitMQ's "type" field is honoured
    defs["queues"].append({"name": "qt", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {},
                           "type": "quorum"})
    with BrokerThread(Config(port=0, host="127.0.0.1", http_port=0, data_dir=str(tmp_path / "d2"))) as b2:
        api2 = api_of(b2)
        assert api2.call("POST", "/definitions", defs)[0] in (200, 201, 204)
        assert api2.get("/queues/%2F/qd")["type"] == "quorum"
        assert api2.get("/queues/%2F/qt")["type"] == "quorum"
        assert b2.broker is not None
        assert type(b2.broker.vhosts["/"].queues["qd"]).__name__ == "QuorumQueue"


def test_ctl_list_queues_type(broker: BrokerThread) -> None:
    c = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = c.channel()
    ch.queue_declare("ctl-q", durable=True, arguments=Q)
    ch.queue_declare("ctl-c", durable=True)
    c.close()
    r = subprocess.run([sys.executable, "-m", "leveret.ctl", "-H", "127.0.0.1", "-P", str(api_port(broker)),
                        "list_queues", "name", "type"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert rows[0] == ["name", "type"]
    assert sorted(rows[1:]) == [["ctl-c", "classic"], ["ctl-q", "quorum"]]


def test_http_declare_and_delete_rules(broker: BrokerThread) -> None:
    api = api_of(broker)
    status, body = api.call("PUT", "/queues/%2F/hq", {"durable": False, "arguments": Q})
    assert (status, body["reason"]) == (400, "invalid property 'non-durable' for queue 'hq' in vhost '/'")
    status, body = api.call("PUT", "/queues/%2F/hq", {"durable": True, "arguments": {**Q, "x-max-priority": 2}})
    assert (status, body["reason"]) == (
        400, "invalid arg 'x-max-priority' for queue 'hq' in vhost '/' of queue type rabbit_quorum_queue")
    assert api.call("PUT", "/queues/%2F/hq", {"durable": True, "arguments": Q})[0] == 201
    for flag in ("if-unused", "if-empty"):
        status, body = api.call("DELETE", f"/queues/%2F/hq?{flag}=true")
        assert (status, body["reason"]) == (400, f"cannot delete queue 'hq' in vhost '/'. queue.delete operations "
                                                 f"with {flag} flag set are not supported by quorum queues")
    assert api.call("DELETE", "/queues/%2F/hq")[0] == 204
