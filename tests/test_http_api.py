"""The management HTTP API (RabbitMQ's /api) over real HTTP, with pika on the AMQP side.

Each test talks to a broker in a thread whose API listens on a free port; what the API
reports is checked against what AMQP clients did, and what it changes against what AMQP
clients then see.  Bad input must get a clear error and change nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from leveret.broker import Broker, Config
from leveret.broker.cli import build_config, parse_args
from leveret.broker.core import access as A
from leveret.testing import BrokerThread
from tests.httpapi import Api
from tests.netutil import non_loopback_address
from tests.polling import wait_until

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerThread]:
    cfg = Config(port=0, host="127.0.0.1", http_port=0, http_max_body=MAX_BODY,
                 users={"guest": "guest"}, vhosts=["/", "other"])
    with BrokerThread(cfg) as b:
        yield b


@pytest.fixture
def api(broker: BrokerThread) -> Api:
    assert broker.broker is not None and broker.broker.http_port
    return Api("127.0.0.1", broker.broker.http_port)


def connect(broker: BrokerThread, vhost: str = "/") -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port, vhost,
                                                             pika.PlainCredentials("guest", "guest")))


def queue_names(api: Api, vhost: str = "%2F") -> list[str]:
    return sorted(q["name"] for q in api.get(f"/queues/{vhost}"))


# ---------------------------------------------------------------------- test brokers stay quiet


def test_test_brokers_open_no_http_listener_and_the_cli_does() -> None:
    with BrokerThread(Config(port=0)) as b:
        assert b.broker is not None and b.broker.http is None and b.broker.prometheus is None
    cfg, _ = build_config(parse_args(["--in-memory"]))
    assert (cfg.http_port, cfg.prometheus_port) == (15672, 15692)
    cfg, _ = build_config(parse_args(["--in-memory", "--http-port", "off", "--prometheus-port", "none"]))
    assert (cfg.http_port, cfg.prometheus_port) == (None, None)
    cfg, _ = build_config(parse_args(["--in-memory", "--http-port", "0", "--prometheus-port", "0"]))
    assert (cfg.http_port, cfg.prometheus_port) == (0, 0)  # 0: a free port, as for --port


def test_config_file_http_and_prometheus_sections(tmp_path: Any) -> None:
    path = tmp_path / "leveret.toml"
    path.write_text('[http]\nport = 15999\nhost = "127.0.0.1"\nmax_body = 1000\n[prometheus]\nport = "off"\n')
    cfg, _ = build_config(parse_args(["--in-memory", "--config", str(path)]))
    assert (cfg.http_port, cfg.http_host, cfg.http_max_body, cfg.prometheus_port) == (15999, "127.0.0.1", 1000, None)
    cfg, _ = build_config(parse_args(["--in-memory", "--config", str(path), "--http-port", "16000"]))
    assert cfg.http_port == 16000  # the flag wins


# ---------------------------------------------------------------------- node


def test_overview_counts_what_clients_did(api: Api, broker: BrokerThread) -> None:
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("ov.q")
        for _ in range(3):
            ch.basic_publish("", "ov.q", b"x")
        wait_until(lambda: api.get("/queues/%2F/ov.q")["messages"] == 3)
        ov = api.get("/overview")
        assert ov["rabbitmq_version"].startswith("3.") and ov["cluster_name"]
        assert ov["object_totals"]["connections"] >= 1 and ov["object_totals"]["channels"] >= 1
        assert ov["object_totals"]["queues"] >= 1
        assert ov["queue_totals"]["messages"] >= 3
        assert ov["message_stats"]["publish"] >= 3
        assert isinstance(ov["message_stats"]["publish_details"]["rate"], float)
        assert any(lst["protocol"] == "amqp" and lst["port"] == broker.port for lst in ov["listeners"])
    finally:
        conn.close()
        api.call("DELETE", "/queues/%2F/ov.q")


def test_whoami_nodes_and_health(api: Api, broker: BrokerThread) -> None:
    assert api.get("/whoami") == {"name": "guest", "tags": ["administrator"]}
    (node,) = api.get("/nodes")
    assert node["running"] is True and node["mem_used"] > 0 and node["fd_used"] > 0
    assert api.get("/health/checks/alarms") == {"status": "ok"}
    assert api.get("/health/checks/local-alarms") == {"status": "ok"}
    assert api.get(f"/health/checks/port-listener/{broker.port}") == {"status": "ok", "port": broker.port}
    status, body = api.call("GET", "/health/checks/port-listener/1")
    assert status == 503 and body["status"] == "failed" and broker.port in body["ports"]
    assert api.get("/aliveness-test/%2F") == {"status": "ok"}
    assert api.get("/queues/%2F/aliveness-test")["messages"] == 0


# ---------------------------------------------------------------------- auth


def test_basic_auth_and_management_tags(api: Api, broker: BrokerThread) -> None:
    b = broker.broker
    assert b is not None
    status, body = api.call("GET", "/overview", auth="")
    assert status == 401 and body["error"] == "not_authorised"
    status, _ = Api("127.0.0.1", b.http_port, "guest", "wrong").call("GET", "/overview")
    assert status == 401
    assert api.call("PUT", "/users/http-plain", {"password": "pw", "tags": ""})[0] == 201
    assert api.call("PUT", "/users/http-mon", {"password": "pw", "tags": "monitoring"})[0] == 201
    assert api.call("PUT", "/users/http-mgmt", {"password": "pw", "tags": ["management"]})[0] == 201
    try:
        status, body = Api("127.0.0.1", b.http_port, "http-plain", "pw").call("GET", "/overview")
        assert (status, body["reason"]) == (401, "Not management user")
        mon = Api("127.0.0.1", b.http_port, "http-mon", "pw")
        assert mon.get("/whoami") == {"name": "http-mon", "tags": ["monitoring"]}
        assert {"/", "other"} <= {v["name"] for v in mon.get("/vhosts")}
        assert mon.call("GET", "/users")[0] == 401  # administrator only
        assert mon.call("PUT", "/vhosts/http-nope", {})[0] == 401
        assert "http-nope" not in b.vhosts
        # a management user sees only the vhosts it has permissions on
        mgmt = Api("127.0.0.1", b.http_port, "http-mgmt", "pw")
        assert mgmt.get("/vhosts") == []
        assert mgmt.call("GET", "/queues/other")[0] == 401
        assert api.call("PUT", "/permissions/other/http-mgmt", {"configure": "^mg\\.", "write": ".*", "read": ".*"})[0] == 201
        assert [v["name"] for v in mgmt.get("/vhosts")] == ["other"]
        assert mgmt.call("PUT", "/queues/other/mg.q", {"durable": False})[0] == 201
        status, body = mgmt.call("PUT", "/queues/other/nope.q", {"durable": False})
        assert status == 401 and "access to queue 'nope.q' in vhost 'other' refused" in body["reason"]
        assert "nope.q" not in b.vhosts["other"].queues
    finally:
        for u in ("http-plain", "http-mon", "http-mgmt"):
            api.call("DELETE", f"/users/{u}")
        api.call("DELETE", "/queues/other/mg.q")


def test_guest_can_only_log_in_via_localhost() -> None:
    addr = non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address")
    cfg = Config(port=0, host="0.0.0.0", http_port=0, users={"guest": "guest", "app": "app-pw"})
    with BrokerThread(cfg) as b:
        assert b.broker is not None
        port = b.broker.http_port
        status, body = Api(addr, port).call("GET", "/overview")
        assert (status, body) == (401, {"error": "not_authorised", "reason": "User can only log in via localhost"})
        assert Api("127.0.0.1", port).call("GET", "/overview")[0] == 200
        assert Api(addr, port, "app", "app-pw").call("GET", "/whoami")[0] == 200


# ---------------------------------------------------------------------- conventions


def test_vhost_as_percent_2f_and_as_an_empty_segment(api: Api) -> None:
    assert api.call("PUT", "/queues/%2F/conv.q", {"durable": "false"})[0] == 201
    try:
        for path in ("/queues/%2F", "/queues/", "/queues//"):
            assert "conv.q" in [q["name"] for q in api.get(path)], path
        q = api.get("/queues//conv.q")
        assert q["vhost"] == "/" and q["durable"] is False
        flower = {"name", "messages", "messages_unacknowledged", "messages_ready", "consumers", "idle_since"}
        assert flower <= set(q)
        # null only where RabbitMQ 3.10 answers null (no policy, no mirrors, no head timestamp...)
        assert {k for k, v in q.items() if v is None} <= {
            "policy", "operator_policy", "recoverable_slaves", "exclusive_consumer_tag",
            "single_active_consumer_tag", "head_message_timestamp"}
        assert api.get("/queues/%2F?columns=name,messages") and set(api.get("/queues/%2F?columns=name,messages")[0]) == {"name", "messages"}
    finally:
        api.call("DELETE", "/queues/%2F/conv.q")


def test_booleans_as_strings_and_bad_booleans(api: Api, broker: BrokerThread) -> None:
    v = broker.broker.vhosts["/"]  # type: ignore[union-attr]
    assert api.call("PUT", "/exchanges/%2F/bool.x", {"type": "fanout", "durable": "false", "auto_delete": "true"})[0] == 201
    try:
        x = v.exchanges["bool.x"]
        assert (x.type, x.durable, x.auto_delete) == ("fanout", False, True)
        status, body = api.call("PUT", "/queues/%2F/bool.q", {"durable": "maybe"})
        assert status == 400 and "durable" in body["reason"] and "bool.q" not in v.queues
    finally:
        api.call("DELETE", "/exchanges/%2F/bool.x")


def test_default_exchange_is_amq_default(api: Api) -> None:
    x = api.get("/exchanges/%2F/amq.default")
    assert x["name"] == "" and x["type"] == "direct"
    names = [x["name"] for x in api.get("/exchanges/%2F")]
    assert "" in names and "amq.topic" in names
    status, body = api.call("DELETE", "/exchanges/%2F/amq.default")
    assert status == 400 and "default exchange" in body["reason"]


def test_errors_404_405(api: Api) -> None:
    status, body = api.call("GET", "/queues/no-such-vhost")
    assert status == 404 and body["error"] == "Object Not Found"
    assert api.call("GET", "/queues/%2F/no-such-queue")[0] == 404
    assert api.call("GET", "/no/such/thing")[0] == 404
    status, body = api.call("PATCH", "/queues/%2F/x", {})
    assert status == 405 and set(body) == {"error", "reason"}


# ---------------------------------------------------------------------- queues, exchanges, messages


def test_declare_publish_get_purge_delete(api: Api, broker: BrokerThread) -> None:
    assert api.call("PUT", "/queues/%2F/msg.q", {"durable": False, "arguments": {"x-max-length": 10}})[0] == 201
    assert api.call("PUT", "/queues/%2F/msg.q", {"durable": False, "arguments": {"x-max-length": 10}})[0] == 204
    assert api.call("PUT", "/exchanges/%2F/msg.x", {"type": "direct", "durable": False})[0] == 201
    assert api.call("POST", "/bindings/%2F/e/msg.x/q/msg.q", {"routing_key": "k"})[0] == 201
    try:
        out = api.call("POST", "/exchanges/%2F/msg.x/publish",
                       {"routing_key": "k", "payload": "hello", "payload_encoding": "string",
                        "properties": {"content_type": "text/plain", "headers": {"h": "v"}, "delivery_mode": 2}})
        assert out == (200, {"routed": True})
        out = api.call("POST", "/exchanges/%2F/msg.x/publish",
                       {"routing_key": "other", "payload": "", "payload_encoding": "string", "properties": {}})
        assert out == (200, {"routed": False})
        bin_payload = base64.b64encode(b"\xff\x00\x01").decode()
        api.call("POST", "/exchanges/%2F/amq.default/publish",
                 {"routing_key": "msg.q", "payload": bin_payload, "payload_encoding": "base64", "properties": {}})
        assert api.get("/queues/%2F/msg.q")["messages_ready"] == 2
        # requeue: the messages stay
        status, got = api.call("POST", "/queues/%2F/msg.q/get", {"count": "5", "ackmode": "ack_requeue_true", "encoding": "auto"})
        assert status == 200 and len(got) == 2
        assert got[0]["payload"] == "hello" and got[0]["payload_encoding"] == "string"
        assert got[0]["properties"]["headers"] == {"h": "v"} and got[0]["properties"]["delivery_mode"] == 2
        assert got[0]["exchange"] == "msg.x" and got[0]["routing_key"] == "k" and got[0]["redelivered"] is False
        assert got[1]["payload"] == bin_payload and got[1]["payload_encoding"] == "base64"
        assert api.get("/queues/%2F/msg.q")["messages"] == 2
        # an AMQP consumer gets what the API published, redelivered after the requeue
        conn = connect(broker)
        try:
            method, props, body = conn.channel().basic_get("msg.q", auto_ack=True)
            assert body == b"hello" and method.redelivered and props.content_type == "text/plain"
        finally:
            conn.close()
        # ack: gone
        status, got = api.call("POST", "/queues/%2F/msg.q/get", {"count": 1, "ackmode": "ack_requeue_false", "encoding": "base64"})
        assert got[0]["payload"] == bin_payload and got[0]["message_count"] == 0
        assert api.get("/queues/%2F/msg.q")["messages"] == 0
        # purge
        for i in range(3):
            api.call("POST", "/exchanges/%2F/amq.default/publish",
                     {"routing_key": "msg.q", "payload": str(i), "payload_encoding": "string", "properties": {}})
        assert api.get("/queues/%2F/msg.q")["messages"] == 3
        assert api.call("DELETE", "/queues/%2F/msg.q/contents")[0] == 204
        assert api.get("/queues/%2F/msg.q")["messages"] == 0
    finally:
        assert api.call("DELETE", "/queues/%2F/msg.q")[0] == 204
        assert api.call("DELETE", "/exchanges/%2F/msg.x")[0] == 204
    assert api.call("GET", "/queues/%2F/msg.q")[0] == 404
    assert api.call("DELETE", "/queues/%2F/msg.q")[0] == 404


def test_bindings_with_property_keys_and_exchange_to_exchange(api: Api, broker: BrokerThread) -> None:
    v = broker.broker.vhosts["/"]  # type: ignore[union-attr]
    api.call("PUT", "/queues/%2F/bnd.q", {"durable": False})
    api.call("PUT", "/exchanges/%2F/bnd.x", {"type": "topic", "durable": False})
    api.call("PUT", "/exchanges/%2F/bnd.y", {"type": "fanout", "durable": False})
    try:
        assert api.call("POST", "/bindings/%2F/e/bnd.x/q/bnd.q", {"routing_key": ""})[0] == 201
        assert api.call("POST", "/bindings/%2F/e/bnd.x/q/bnd.q", {"routing_key": "a.#", "arguments": {"x": 1}})[0] == 201
        assert api.call("POST", "/bindings/%2F/e/bnd.y/e/bnd.x", {"routing_key": "r"})[0] == 201
        mine = api.get("/bindings/%2F/e/bnd.x/q/bnd.q")
        assert sorted(b["routing_key"] for b in mine) == ["", "a.#"]
        assert {b["properties_key"] for b in mine if b["routing_key"] == ""} == {"~"}
        listed = api.get("/bindings/%2F")
        assert {"source": "", "destination": "bnd.q", "routing_key": "bnd.q"}.items() <= next(
            b for b in listed if b["source"] == "" and b["destination"] == "bnd.q").items()
        assert any(b["destination_type"] == "exchange" and b["destination"] == "bnd.x" for b in listed)
        # routed through the e2e binding
        assert api.call("POST", "/exchanges/%2F/bnd.y/publish",
                        {"routing_key": "a.b", "payload": "e2e", "payload_encoding": "string", "properties": {}})[1] == {"routed": True}
        assert api.get("/queues/%2F/bnd.q")["messages"] == 1
        # delete by properties key
        assert api.call("DELETE", "/bindings/%2F/e/bnd.x/q/bnd.q/~")[0] == 204
        key = next(b["properties_key"] for b in api.get("/bindings/%2F/e/bnd.x/q/bnd.q"))
        assert api.call("DELETE", f"/bindings/%2F/e/bnd.x/q/bnd.q/{key}")[0] == 204
        assert api.get("/bindings/%2F/e/bnd.x/q/bnd.q") == []
        assert api.call("DELETE", "/bindings/%2F/e/bnd.y/e/bnd.x/r")[0] == 204
        assert not v.exchanges["bnd.y"].bindings
        assert api.call("POST", "/bindings/%2F/e/bnd.x/q/no-such-q", {"routing_key": ""})[0] == 404
    finally:
        for path in ("/queues/%2F/bnd.q", "/exchanges/%2F/bnd.x", "/exchanges/%2F/bnd.y"):
            api.call("DELETE", path)


# ---------------------------------------------------------------------- connections, channels, consumers


def test_connections_channels_consumers_and_closing_a_connection(api: Api, broker: BrokerThread) -> None:
    conn = connect(broker)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=7)
    ch.queue_declare("cc.q", auto_delete=False)
    ch.basic_consume("cc.q", lambda *a: None, consumer_tag="cc-tag")
    try:
        local = conn._impl._transport._sock.getsockname()  # type: ignore[attr-defined]
        name = next(c["name"] for c in api.get("/connections") if c["peer_port"] == local[1])
        c = api.get("/connections/" + urllib.request.quote(name, safe=""))
        assert (c["user"], c["vhost"], c["channels"], c["protocol"]) == ("guest", "/", 1, "AMQP 0-9-1")
        assert c["client_properties"]["product"]
        chans = [x for x in api.get("/channels") if x["connection_details"]["name"] == name]
        assert len(chans) == 1 and chans[0]["consumer_count"] == 1 and chans[0]["prefetch_count"] == 7
        cons = [x for x in api.get("/consumers/%2F") if x["consumer_tag"] == "cc-tag"]
        assert cons and cons[0]["queue"] == {"name": "cc.q", "vhost": "/"} and cons[0]["ack_required"] is True
        assert cons[0]["channel_details"]["connection_name"] == name
        assert api.get("/queues/%2F/cc.q")["consumers"] == 1
        # close it through the API: the client is told 320 with the reason
        assert api.call("DELETE", "/connections/" + urllib.request.quote(name, safe=""))[0] == 204
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            conn.process_data_events(time_limit=3)
            conn.process_data_events(time_limit=1)
        assert info.value.reply_code == 320 and "Closed via management plugin" in info.value.reply_text
        wait_until(lambda: all(c["name"] != name for c in api.get("/connections")))
    finally:
        if conn.is_open:
            conn.close()
        api.call("DELETE", "/queues/%2F/cc.q")


# ---------------------------------------------------------------------- users, vhosts, permissions


def test_users_vhosts_permissions(api: Api, broker: BrokerThread) -> None:
    b = broker.broker
    assert b is not None
    assert api.call("PUT", "/vhosts/http-vh", {})[0] == 201
    assert api.call("PUT", "/users/http-u", {"password": "s3cret", "tags": "management"})[0] == 201
    try:
        assert any(u["name"] == "http-u" and u["tags"] == ["management"] and u["hashing_algorithm"] == A.SHA256
                   for u in api.get("/users"))
        assert api.call("PUT", "/permissions/http-vh/http-u", {"configure": "", "write": ".*", "read": ".*"})[0] == 201
        assert api.get("/permissions/http-vh/http-u") == {"user": "http-u", "vhost": "http-vh", "configure": "", "write": ".*", "read": ".*"}
        assert api.call("PUT", "/topic-permissions/http-vh/http-u", {"exchange": "amq.topic", "write": "^a", "read": ".*"})[0] == 201
        assert any(t["user"] == "http-u" and t["write"] == "^a" for t in api.get("/topic-permissions"))
        # the user may now connect over AMQP, and is refused what its permissions refuse
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port, "http-vh",
                                                                 pika.PlainCredentials("http-u", "s3cret")))
        try:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                conn.channel().queue_declare("any")
            assert info.value.reply_code == 403
        finally:
            conn.close()
        # bad input: unknown vhost/user, bad regex: 400, nothing changes
        status, body = api.call("PUT", "/permissions/no-vh/http-u", {"configure": ".*", "write": ".*", "read": ".*"})
        assert status == 400 and "no-vh" in body["reason"]
        status, body = api.call("PUT", "/permissions/http-vh/http-u", {"configure": "(", "write": ".*", "read": ".*"})
        assert status == 400 and "regular expression" in body["reason"]
        assert b.access.permissions[("http-u", "http-vh")].configure == ""
        assert api.call("DELETE", "/permissions/http-vh/http-u")[0] == 204
        assert ("http-u", "http-vh") not in b.access.permissions
    finally:
        assert api.call("DELETE", "/users/http-u")[0] == 204
        assert api.call("DELETE", "/vhosts/http-vh")[0] == 204
    assert "http-vh" not in b.vhosts and "http-u" not in b.access.users
    assert api.call("DELETE", "/users/http-u")[0] == 404


# ---------------------------------------------------------------------- bad input


def test_bad_input_gets_a_clear_error_and_changes_nothing(api: Api, broker: BrokerThread) -> None:
    v = broker.broker.vhosts["/"]  # type: ignore[union-attr]
    api.call("PUT", "/queues/%2F/bad.q", {"durable": True})
    try:
        before = (set(v.queues), set(v.exchanges))
        status, body = api.call("PUT", "/queues/%2F/bad.q2", raw=b"{not json")
        assert status == 400 and body["error"] == "bad_request" and "JSON" in body["reason"]
        status, body = api.call("PUT", "/queues/%2F/bad.q", {"durable": False})
        assert status == 400 and "inequivalent arg 'durable'" in body["reason"]
        assert v.queues["bad.q"].durable is True
        status, body = api.call("PUT", "/exchanges/%2F/amq.direct", {"type": "fanout"})
        assert status == 400 and "inequivalent arg 'type'" in body["reason"]
        status, body = api.call("PUT", "/exchanges/%2F/bad.x", {"type": "nonsense"})
        assert status == 400 and "unknown exchange type" in body["reason"]
        assert api.call("PUT", "/queues/no-such-vhost/q", {})[0] == 404
        status, body = api.call("PUT", "/queues/%2F/bad.big", raw=b'{"arguments": {"a": "' + b"x" * MAX_BODY + b'"}}')
        assert status == 413 and body["error"]
        status, body = api.call("POST", "/exchanges/%2F/amq.default/publish", {"routing_key": "bad.q"})
        assert status == 400 and "payload" in body["reason"]
        status, body = api.call("POST", "/queues/%2F/bad.q/get", {"count": 1, "ackmode": "sometimes"})
        assert status == 400 and "ackmode" in body["reason"]
        api.call("PUT", "/exchanges/%2F/bad.internal", {"type": "fanout", "internal": "true", "durable": False})
        api.call("POST", "/bindings/%2F/e/bad.internal/q/bad.q", {"routing_key": ""})
        status, body = api.call("POST", "/exchanges/%2F/bad.internal/publish",
                                {"routing_key": "", "payload": "x", "payload_encoding": "string", "properties": {}})
        assert status == 400 and "internal exchange" in body["reason"]
        api.call("DELETE", "/exchanges/%2F/bad.internal")
        assert (set(v.queues), set(v.exchanges)) == before
        assert v.queues["bad.q"].message_count == 0
        # and AMQP is unaffected
        conn = connect(broker)
        try:
            conn.channel().queue_declare("bad.q", passive=True)
        finally:
            conn.close()
    finally:
        api.call("DELETE", "/queues/%2F/bad.q")


# ---------------------------------------------------------------------- definitions


RABBITMQ_EXPORT = {
    # written the way RabbitMQ 3.10's `rabbitmqctl export_definitions` / GET /api/definitions writes it
    "rabbit_version": "3.10.8",
    "rabbitmq_version": "3.10.8",
    "product_name": "RabbitMQ",
    "product_version": "3.10.8",
    "users": [{"name": "defs-app", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
               "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["management"], "limits": {}}],
    "vhosts": [{"name": "defs-vh", "description": "", "tags": [], "metadata": {"description": "", "tags": []}}],
    "permissions": [{"user": "defs-app", "vhost": "defs-vh", "configure": ".*", "write": ".*", "read": ".*"}],
    "topic_permissions": [],
    "parameters": [],
    "global_parameters": [{"name": "internal_cluster_id", "value": "rabbitmq-cluster-id-abc"}],
    "policies": [],
    "queues": [{"name": "defs.q", "vhost": "defs-vh", "durable": True, "auto_delete": False,
                "arguments": {"x-queue-type": "classic", "x-max-length": 5}}],
    "exchanges": [{"name": "defs.x", "vhost": "defs-vh", "type": "topic", "durable": True, "auto_delete": False,
                   "internal": False, "arguments": {}}],
    "bindings": [{"source": "defs.x", "vhost": "defs-vh", "destination": "defs.q", "destination_type": "queue",
                  "routing_key": "a.*", "arguments": {}}],
}


def topology(api: Api, vhost: str) -> Any:
    q = sorted((x["name"], x["durable"], x["auto_delete"], json.dumps(x["arguments"], sort_keys=True))
               for x in api.get(f"/queues/{vhost}"))
    x = sorted((x["name"], x["type"], x["durable"]) for x in api.get(f"/exchanges/{vhost}"))
    b = sorted((x["source"], x["destination"], x["destination_type"], x["routing_key"]) for x in api.get(f"/bindings/{vhost}"))
    return q, x, b


def test_definitions_import_rabbitmq_file_and_round_trip(api: Api, broker: BrokerThread) -> None:
    status, body = api.call("POST", "/definitions", RABBITMQ_EXPORT)
    assert status == 204, body
    try:
        # the password hash from RabbitMQ works for AMQP logins
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port, "defs-vh",
                                                                 pika.PlainCredentials("defs-app", "test12")))
        conn.channel().basic_publish("defs.x", "a.b", b"routed")
        conn.close()
        wait_until(lambda: api.get("/queues/defs-vh/defs.q")["messages"] == 1)
        exported = api.get("/definitions")
        for key in ("rabbit_version", "users", "vhosts", "permissions", "topic_permissions", "policies",
                    "queues", "exchanges", "bindings"):
            assert key in exported
        user = next(u for u in exported["users"] if u["name"] == "defs-app")
        assert user["password_hash"] == RABBITMQ_EXPORT["users"][0]["password_hash"]  # type: ignore[index]
        assert not any(x["name"].startswith("amq.") or x["name"] == "" for x in exported["exchanges"])
        per_vhost = api.get("/definitions/defs-vh")
        assert [q["name"] for q in per_vhost["queues"]] == ["defs.q"] and "vhost" not in per_vhost["queues"][0]
        # round trip: into a second broker, the same topology
        cfg = Config(port=0, host="127.0.0.1", http_port=0, users={"guest": "guest"})
        with BrokerThread(cfg) as b2:
            api2 = Api("127.0.0.1", b2.broker.http_port)  # type: ignore[union-attr]
            assert api2.call("POST", "/definitions", exported)[0] == 204
            assert topology(api2, "defs-vh") == topology(api, "defs-vh")
            assert api2.get("/permissions/defs-vh/defs-app")["write"] == ".*"
            # per-vhost import into another vhost
            api2.call("PUT", "/vhosts/copy", {})
            assert api2.call("POST", "/definitions/copy", per_vhost)[0] == 204
            assert [q["name"] for q in api2.get("/queues/copy")] == ["defs.q"]
    finally:
        api.call("DELETE", "/vhosts/defs-vh")
        api.call("DELETE", "/users/defs-app")


def test_definitions_import_refuses_bad_files_without_changing_anything(api: Api, broker: BrokerThread) -> None:
    b = broker.broker
    assert b is not None
    api.call("PUT", "/queues/%2F/dconf.q", {"durable": True})
    try:
        before = (set(b.vhosts), set(b.access.users), set(b.vhosts["/"].queues))
        status, body = api.call("POST", "/definitions", raw=b"[1, 2")
        assert status == 400 and "JSON" in body["reason"]
        bad = {"users": [{"name": "dx", "password": "a", "password_hash": "b"}]}
        status, body = api.call("POST", "/definitions", bad)
        assert status == 400 and "users[0]" in body["reason"]
        conflicting = {"vhosts": [{"name": "dconf-new"}],
                       "queues": [{"name": "dconf.q", "vhost": "/", "durable": False, "auto_delete": False, "arguments": {}}]}
        status, body = api.call("POST", "/definitions", conflicting)
        assert status == 400 and "dconf.q" in body["reason"]
        assert (set(b.vhosts), set(b.access.users), set(b.vhosts["/"].queues)) == before
    finally:
        api.call("DELETE", "/queues/%2F/dconf.q")


# ---------------------------------------------------------------------- message rates


def test_message_stats_and_rates_per_queue_vhost_and_node() -> None:
    cfg = Config(port=0, host="127.0.0.1", http_port=0, http_rate_interval=0.2, vhosts=["/", "rv"])
    with BrokerThread(cfg) as b:
        api = Api("127.0.0.1", b.broker.http_port)  # type: ignore[union-attr]
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.port, "rv",
                                                                 pika.PlainCredentials("guest", "guest")))
        try:
            ch = conn.channel()
            ch.queue_declare("rate.q")
            ch.queue_declare("rate.other")
            for _ in range(40):
                ch.basic_publish("", "rate.q", b"x")
            ch.basic_publish("", "rate.other", b"y")
            wait_until(lambda: api.get("/queues/rv/rate.q")["message_stats"]["publish_details"]["rate"] > 0)
            stats = api.get("/queues/rv/rate.q")["message_stats"]
            assert stats["publish"] == 40 and stats["deliver_get"] == 0 and stats["ack"] == 0
            for _ in range(10):
                method, _, _ = ch.basic_get("rate.q")
                ch.basic_ack(method.delivery_tag)
            method, _, _ = ch.basic_get("rate.q")
            ch.basic_nack(method.delivery_tag, requeue=True)
            ch.basic_get("rate.q", auto_ack=True)  # the redelivery
            wait_until(lambda: api.get("/queues/rv/rate.q")["message_stats"]["ack_details"]["rate"] > 0)
            stats = api.get("/queues/rv/rate.q")["message_stats"]
            assert (stats["publish"], stats["deliver_get"], stats["ack"], stats["redeliver"]) == (40, 12, 10, 1)
            vstats = api.get("/vhosts/rv")["message_stats"]
            assert (vstats["publish"], vstats["deliver_get"]) == (41, 12)
            node = api.get("/overview")["message_stats"]
            assert node["publish"] == 41 and node["deliver_get"] == 12 and node["ack"] == 10
            # idle again: the rates fall back to 0
            wait_until(lambda: api.get("/queues/rv/rate.q")["message_stats"]["publish_details"]["rate"] == 0.0)
        finally:
            conn.close()


def confirm_workload(port: int, vhost: str) -> None:
    """A known workload on ``vhost``: on a confirm-mode channel 6 routed publishes, 2
    mandatory unroutable ones (returned, then confirmed) and 3 non-mandatory unroutable
    ones (dropped, confirmed); on a plain channel 4 routed and 1 unroutable.  Through
    amq.direct (key "k" bound to cw.q) except 2 of the routed ones, on the default exchange."""
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, vhost,
                                                             pika.PlainCredentials("guest", "guest")))
    try:
        ch = conn.channel()
        ch.queue_declare("cw.q")
        ch.queue_bind("cw.q", "amq.direct", "k")
        ch.confirm_delivery()
        for _ in range(4):
            ch.basic_publish("amq.direct", "k", b"x")
        for _ in range(2):
            ch.basic_publish("", "cw.q", b"x")
        for _ in range(2):
            with pytest.raises(pika.exceptions.UnroutableError):
                ch.basic_publish("amq.direct", "nowhere", b"r", mandatory=True)
        for _ in range(3):
            ch.basic_publish("amq.direct", "nowhere", b"d")
        plain = conn.channel()
        for _ in range(4):
            plain.basic_publish("amq.direct", "k", b"p")
        plain.basic_publish("amq.direct", "nowhere", b"p")
        plain.queue_declare("cw.q", passive=True)  # a round trip: the publishes are in
    finally:
        conn.close()


def test_confirm_and_unroutable_stats_per_vhost_node_and_exchange() -> None:
    # no timer sample during the test (an hour): the test takes the samples itself
    cfg = Config(port=0, host="127.0.0.1", http_port=0, http_rate_interval=3600, vhosts=["/", "cv", "gone"])
    with BrokerThread(cfg) as b:
        broker = b.broker
        assert broker is not None
        api = Api("127.0.0.1", broker.http_port)  # type: ignore[arg-type]

        def sample() -> None:
            async def run() -> None:
                broker.http.api.rates.sample()

            asyncio.run_coroutine_threadsafe(run(), broker.loop).result(10)

        confirm_workload(b.port, "gone")
        api.call("DELETE", "/vhosts/gone")  # its counts stay in the node's totals
        confirm_workload(b.port, "cv")
        sample()

        v = api.get("/vhosts/cv")["message_stats"]
        assert (v["confirm"], v["return_unroutable"], v["drop_unroutable"]) == (11, 2, 4)
        assert all(v[k + "_details"]["rate"] > 0 for k in ("confirm", "return_unroutable", "drop_unroutable"))
        assert api.get("/vhosts/%2F")["message_stats"]["confirm"] == 0

        node = api.get("/overview")["message_stats"]
        assert (node["confirm"], node["return_unroutable"], node["drop_unroutable"]) == (22, 4, 8)
        assert node["publish"] == 32
        assert node["confirm_details"]["rate"] > 0

        x = api.get("/exchanges/cv/amq.direct")["message_stats"]
        assert (x["publish_in"], x["publish_out"]) == (4 + 2 + 3 + 4 + 1, 4 + 4)
        assert x["publish_in_details"]["rate"] > 0 and x["publish_out_details"]["rate"] > 0
        d = api.get("/exchanges/cv/amq.default")["message_stats"]
        assert (d["publish_in"], d["publish_out"]) == (2, 2)

        # the management API's publish counts as RabbitMQ's does (a mandatory publish)
        status, body = api.call("POST", "/exchanges/cv/amq.direct/publish",
                                {"routing_key": "nowhere", "payload": "z", "properties": {}})
        assert (status, body) == (200, {"routed": False})
        assert api.get("/vhosts/cv")["message_stats"]["return_unroutable"] == 3
        assert api.get("/exchanges/cv/amq.direct")["message_stats"]["publish_in"] == 15

        # nothing since the last sample: the rates fall back to 0
        sample()
        sample()
        assert api.get("/vhosts/cv")["message_stats"]["confirm_details"]["rate"] == 0.0
        assert api.get("/overview")["message_stats"]["confirm_details"]["rate"] == 0.0
        assert api.get("/exchanges/cv/amq.direct")["message_stats"]["publish_in_details"]["rate"] == 0.0


def test_a_nack_behind_a_publish_waiting_for_fsync_is_not_counted_as_confirmed(tmp_path: Any) -> None:
    """Publish 1 waits for its fsync, publish 2 is refused (nack), publish 3 is accepted:
    the multiple ack that follows the fsync covers 1..3 (as RabbitMQ's would), but only 1
    and 3 were confirmed."""
    from pamqp import commands as C

    from tests.rawamqp import RawClient

    cfg = Config(port=0, host="127.0.0.1", http_port=0, data_dir=str(tmp_path), fsync_interval=5.0)
    with BrokerThread(cfg) as b:
        api = Api("127.0.0.1", b.broker.http_port)  # type: ignore[union-attr]
        with RawClient.connect(b.port) as c:
            c.handshake()
            c.open_channel(1)
            c.declare_queue(1, "nk.durable", durable=True)
            c.declare_queue(1, "nk.full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
            c.rpc(1, C.Confirm.Select(), C.Confirm.SelectOk)
            c.publish(1, "", "nk.durable", b"p", delivery_mode=2)
            c.publish(1, "", "nk.full", b"r")
            c.publish(1, "", "nk.durable", b"t")
            nack = c.expect(C.Basic.Nack, 1)
            ack = c.expect(C.Basic.Ack, 1)
            assert (nack.delivery_tag, ack.delivery_tag, ack.multiple) == (2, 3, True)
        assert api.get("/vhosts/%2F")["message_stats"]["confirm"] == 2
        assert api.get("/overview")["message_stats"]["confirm"] == 2


def test_cli_refuses_to_start_when_the_http_port_is_taken() -> None:
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "leveret", "--in-memory", "--host", "127.0.0.1", "--port", "0",
                            "--http-port", str(port), "--prometheus-port", "off"],
                           capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"leveret: error: port {port} (--http-port) in use" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's instance dicts")
async def test_queue_instances_keep_a_compact_attribute_dict() -> None:
    """The rate counters live on the backing store: a Queue with more than 30 attributes
    loses CPython's compact (split-keys) instance dict and every attribute access on the
    hot path gets slower (measured here: route + enqueue ~15% slower with 33)."""
    b = Broker(Config(port=0, host="127.0.0.1"))
    await b.start()
    try:
        q = b.vhosts["/"].declare_queue("compact", arguments={"x-max-length": 5})
        assert len(vars(q)) <= 30, sorted(vars(q))
    finally:
        await b.stop()


def test_get_of_a_large_message_published_over_amqp(api: Api, broker: BrokerThread) -> None:
    """A body that arrived in several frames is kept as its pieces (protocol.body.Body):
    the API's get joins it (it answered 500, 'Body' object is not subscriptable, with or
    without truncate)."""
    body = bytes(range(256)) * 4096  # 1 MiB: more than one frame
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("big.q")
        ch.basic_publish("", "big.q", body)
        ch.basic_publish("", "big.q", body)
    finally:
        conn.close()
    try:
        status, got = api.call("POST", "/queues/%2F/big.q/get",
                               {"count": 1, "ackmode": "ack_requeue_false", "encoding": "base64"})
        assert status == 200, got
        assert base64.b64decode(got[0]["payload"]) == body and got[0]["payload_bytes"] == len(body)
        status, got = api.call("POST", "/queues/%2F/big.q/get",
                               {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto", "truncate": 10})
        assert status == 200, got
        assert got[0]["payload_encoding"] == "string" and got[0]["payload"] == body[:10].decode()
        assert got[0]["payload_bytes"] == len(body)
    finally:
        api.call("DELETE", "/queues/%2F/big.q")


# ---------------------------------------------------------------------- what a management user sees


def _api(port: int, user: str, password: str) -> Any:
    return Api("127.0.0.1", port, user, password).call


def test_management_user_sees_only_its_vhosts_message_stats_and_no_node_details() -> None:
    # RabbitMQ: a user without the monitoring tag gets the overview of its own vhosts
    # (message_stats included: no counts of other vhosts' traffic) and no node, listeners
    # or contexts; /api/nodes is for monitoring users
    cfg = Config(port=0, host="127.0.0.1", http_port=0, users={"guest": "guest"}, vhosts=["/", "r3.other"])
    with BrokerThread(cfg) as b:
        assert b.broker is not None
        port = b.broker.http_port
        admin = _api(port, "guest", "guest")
        assert admin("PUT", "/users/r3-mgmt", {"password": "pw", "tags": "management"})[0] == 201
        assert admin("PUT", "/permissions/r3.other/r3-mgmt", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
        conn = pika.BlockingConnection(pika.URLParameters(b.url))  # vhost /, not the user's
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("r3.q")
        for _ in range(5):
            ch.basic_publish("", "r3.q", b"x")
        ch.basic_publish("", "r3.nowhere", b"x")  # dropped unroutable
        conn.close()
        ov = admin("GET", "/overview")[1]
        assert ov["message_stats"]["publish"] == 6 and ov["message_stats"]["confirm"] == 6
        assert ov["node"] and ov["listeners"]
        mgmt = _api(port, "r3-mgmt", "pw")
        status, ov = mgmt("GET", "/overview")
        assert status == 200
        ms = ov["message_stats"]
        assert (ms["publish"], ms["confirm"], ms["drop_unroutable"]) == (0, 0, 0), ms
        assert "listeners" not in ov and "node" not in ov
        assert ov["queue_totals"]["messages"] == 0 and ov["object_totals"]["queues"] == 0
        assert mgmt("GET", "/nodes")[0] == 401
        assert mgmt("GET", f"/nodes/{admin('GET', '/nodes')[1][0]['name']}")[0] == 401
        # a monitoring user sees the node
        assert admin("PUT", "/users/r3-mon", {"password": "pw", "tags": "monitoring"})[0] == 201
        mon = _api(port, "r3-mon", "pw")
        assert mon("GET", "/nodes")[0] == 200 and mon("GET", "/overview")[1]["message_stats"]["publish"] == 6

