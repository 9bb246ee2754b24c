"""One home for every rule: the HTTP API and AMQP go through the same core operations
(``leveret.broker.core.operations``), so the same bad input gets the same refusal from both.

Real HTTP (tests/httpapi.py) and real AMQP (pika) against a broker in a thread.  The texts
follow RabbitMQ 3.10.8 (checked against the real one: HTTP ``PUT /api/queues`` over the
vhost's queue limit is ``400 {"error": "bad_request", "reason": "cannot declare queue ..."}``,
AMQP queue.declare ``406 PRECONDITION_FAILED - cannot declare queue ...``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from leveret.broker import Config
from leveret.testing import BrokerThread
from tests.httpapi import Api

V = "ops.v"  # the vhost the tests work in (guest and ops-u have permissions there)
VQ = "ops.v"  # (as a path segment: no character to quote)


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerThread]:
    cfg = Config(port=0, host="127.0.0.1", http_port=0, users={"guest": "guest"}, vhosts=["/", V])
    with BrokerThread(cfg) as b:
        assert b.broker is not None
        b.call(lambda: b.broker.add_user("ops-u", "pw", tags=["management"]))
        # ops-u may configure/write/read only names starting with "ok"
        b.call(b.broker.set_permissions, "ops-u", V, "^ok", "^ok", "^ok")
        yield b


@pytest.fixture
def api(broker: BrokerThread) -> Api:
    assert broker.broker is not None and broker.broker.http_port
    return Api("127.0.0.1", broker.broker.http_port)


def connect(broker: BrokerThread, user: str = "guest", password: str = "guest") -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", broker.port, V, pika.PlainCredentials(user, password))
    )


def amqp_error(broker: BrokerThread, op: Callable[[Any], Any], user: str = "guest", password: str = "guest") -> tuple[int, str]:
    """Run ``op(channel)`` on a fresh channel; the (code, text) it was closed with."""
    conn = connect(broker, user, password)
    try:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            op(ch)
        assert conn.is_open  # a channel error: the connection stays
        return info.value.reply_code, info.value.reply_text
    finally:
        if conn.is_open:
            conn.close()


def amqp_ok(broker: BrokerThread, op: Callable[[Any], Any]) -> Any:
    conn = connect(broker)
    try:
        return op(conn.channel())
    finally:
        conn.close()


def cleanup(api: Api, queues: tuple[str, ...] = (), exchanges: tuple[str, ...] = ()) -> None:
    for q in queues:
        api.call("DELETE", f"/queues/{VQ}/{q}")
    for x in exchanges:
        api.call("DELETE", f"/exchanges/{VQ}/{x}")


# ---------------------------------------------------------------------- the bugs


def test_http_queue_declare_obeys_the_vhost_queue_limit(api: Api, broker: BrokerThread) -> None:
    assert api.call("PUT", f"/vhost-limits/{VQ}/max-queues", {"value": 1}) == (204, None)
    try:
        assert api.call("GET", f"/vhost-limits/{VQ}") == (200, [{"vhost": V, "value": {"max-queues": 1}}])
        assert {"vhost": V, "value": {"max-queues": 1}} in api.get("/vhost-limits")
        assert api.call("PUT", f"/queues/{VQ}/lim.q1", {"durable": False})[0] == 201
        text = f"cannot declare queue 'lim.q2': queue limit in vhost '{V}' (1) is reached"
        assert api.call("PUT", f"/queues/{VQ}/lim.q2", {"durable": False}) == (400, {"error": "bad_request", "reason": text})
        assert api.call("PUT", f"/queues/{VQ}/lim.q3", {"durable": False})[0] == 400
        # a redeclare of the queue there is, at the limit, is fine
        assert api.call("PUT", f"/queues/{VQ}/lim.q1", {"durable": False})[0] == 204
        # AMQP: the same limit, the same text
        code, reply = amqp_error(broker, lambda ch: ch.queue_declare("lim.q2"))
        assert (code, reply) == (406, "PRECONDITION_FAILED - " + text)
        assert sorted(q["name"] for q in api.get(f"/queues/{VQ}")) == ["lim.q1"]
        # both limits, then one deleted
        assert api.call("PUT", f"/vhost-limits/{VQ}/max-connections", {"value": 5}) == (204, None)
        assert api.get(f"/vhost-limits/{VQ}") == [{"vhost": V, "value": {"max-connections": 5, "max-queues": 1}}]
        assert api.call("DELETE", f"/vhost-limits/{VQ}/max-connections") == (204, None)
        assert api.call("DELETE", f"/vhost-limits/{VQ}/max-connections") == (204, None)  # (again: still 204)
        assert api.get(f"/vhost-limits/{VQ}") == [{"vhost": V, "value": {"max-queues": 1}}]
        # bad input, as RabbitMQ 3.10.8 answers it
        status, body = api.call("PUT", f"/vhost-limits/{VQ}/max-foo", {"value": 1})
        assert status == 400 and body["error"] == "bad_request" and "max-foo" in body["reason"]
        status, body = api.call("PUT", f"/vhost-limits/{VQ}/max-queues", {"value": "x"})
        assert status == 400 and "max-queues should be a number" in body["reason"]
        assert api.call("PUT", f"/vhost-limits/{VQ}/max-queues", {}) == (400, {"error": "bad_request", "reason": "[{key_missing,value}]"})
        assert api.call("PUT", "/vhost-limits/no.such.vhost/max-queues", {"value": 1}) == (
            404, {"error": "not_found", "reason": "vhost_not_found"})
        assert api.call("GET", "/vhost-limits/no.such.vhost")[0] == 404
        assert api.get(f"/vhost-limits/{VQ}") == [{"vhost": V, "value": {"max-queues": 1}}]  # unchanged
        # lifted: the second queue can be declared
        assert api.call("DELETE", f"/vhost-limits/{VQ}/max-queues") == (204, None)
        assert api.get(f"/vhost-limits/{VQ}") == []
        assert api.call("PUT", f"/queues/{VQ}/lim.q2", {"durable": False})[0] == 201
    finally:
        api.call("DELETE", f"/vhost-limits/{VQ}/max-queues")
        api.call("DELETE", f"/vhost-limits/{VQ}/max-connections")
        cleanup(api, queues=("lim.q1", "lim.q2"))


def test_vhost_limits_need_an_administrator(api: Api) -> None:
    user = Api(api.base.split("/")[2].split(":")[0], int(api.base.split(":")[2].split("/")[0]), "ops-u", "pw")
    assert user.call("PUT", f"/vhost-limits/{VQ}/max-queues", {"value": 1})[0] == 401
    assert user.call("DELETE", f"/vhost-limits/{VQ}/max-queues")[0] == 401
    assert api.get(f"/vhost-limits/{VQ}") == []
    # reading them: the vhosts the user may see (RabbitMQ 3.10.8 too)
    api.call("PUT", "/vhost-limits/%2F/max-connections", {"value": 50})
    api.call("PUT", f"/vhost-limits/{VQ}/max-connections", {"value": 40})
    try:
        assert user.call("GET", "/vhost-limits") == (200, [{"vhost": V, "value": {"max-connections": 40}}])
        assert user.call("GET", f"/vhost-limits/{VQ}") == (200, [{"vhost": V, "value": {"max-connections": 40}}])
        assert user.call("GET", "/vhost-limits/%2F")[0] == 401
        assert {"vhost": "/", "value": {"max-connections": 50}} in api.get("/vhost-limits")
    finally:
        api.call("DELETE", "/vhost-limits/%2F/max-connections")
        api.call("DELETE", f"/vhost-limits/{VQ}/max-connections")


def test_http_publish_honours_cc_and_bcc(api: Api, broker: BrokerThread) -> None:
    for q in ("cc.main", "cc.copy", "cc.blind"):
        assert api.call("PUT", f"/queues/{VQ}/{q}", {"durable": False})[0] == 201
    try:
        out = api.call("POST", f"/exchanges/{VQ}/amq.default/publish", {
            "routing_key": "cc.main", "payload": "m", "payload_encoding": "string",
            "properties": {"headers": {"CC": ["cc.copy"], "BCC": ["cc.blind"], "h": "v"}}})
        assert out == (200, {"routed": True})
        # CC/BCC alone route too (the routing key's queue does not exist)
        out = api.call("POST", f"/exchanges/{VQ}/amq.default/publish", {
            "routing_key": "nowhere", "payload": "b", "payload_encoding": "string",
            "properties": {"headers": {"BCC": ["cc.blind"]}}})
        assert out == (200, {"routed": True})
        got: dict[str, list[Any]] = {}
        for q in ("cc.main", "cc.copy", "cc.blind"):
            status, got[q] = api.call("POST", f"/queues/{VQ}/{q}/get", {"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"})
            assert status == 200
        assert [m["payload"] for m in got["cc.main"]] == ["m"]
        assert [m["payload"] for m in got["cc.copy"]] == ["m"]
        assert [m["payload"] for m in got["cc.blind"]] == ["m", "b"]
        for m in (*got["cc.main"], *got["cc.copy"], got["cc.blind"][0]):
            # CC kept in the delivered headers, BCC stripped, the other headers kept
            assert m["properties"]["headers"] == {"CC": ["cc.copy"], "h": "v"}
        assert "headers" not in got["cc.blind"][1]["properties"] or got["cc.blind"][1]["properties"]["headers"] == {}
        # the same message over AMQP reaches the same queues
        def amqp(ch: Any) -> list[int]:
            ch.basic_publish("", "cc.main", b"a", pika.BasicProperties(headers={"CC": ["cc.copy"], "BCC": ["cc.blind"]}))
            return [ch.queue_declare(q, passive=True).method.message_count for q in ("cc.main", "cc.copy", "cc.blind")]
        assert amqp_ok(broker, amqp) == [1, 1, 1]
    finally:
        cleanup(api, queues=("cc.main", "cc.copy", "cc.blind"))


# ---------------------------------------------------------------------- HTTP and AMQP twins


def publish_body(rk: str, props: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"routing_key": rk, "payload": "x", "payload_encoding": "string", "properties": props or {}}


NAMES = {403: "ACCESS_REFUSED", 404: "NOT_FOUND", 405: "RESOURCE_LOCKED", 406: "PRECONDITION_FAILED",
         503: "COMMAND_INVALID"}

# (what, HTTP user, HTTP method, path, body, AMQP user, AMQP operation, AMQP code, text)
# The HTTP answer expected for each: a refused permission 401 not_authorised, a missing
# object 404, anything else 400 bad_request, each with the AMQP text; a publish's error
# is 400 with "<code> <NAME> - <text>", as RabbitMQ's management plugin answers it.
TWINS: list[tuple[str, str, str, str, Any, str, Callable[[Any], Any], int, str]] = [
    ("queue.declare refused", "ops-u", "PUT", "/queues/ops.v/t.nope", {"durable": False}, "ops-u",
     lambda ch: ch.queue_declare("t.nope"), 403, "access to queue 't.nope' in vhost 'ops.v' refused for user 'ops-u'"),
    ("queue.declare DLX write refused", "ops-u", "PUT", "/queues/ops.v/ok.dl",
     {"durable": False, "arguments": {"x-dead-letter-exchange": "t.dlx"}}, "ops-u",
     lambda ch: ch.queue_declare("ok.dl", arguments={"x-dead-letter-exchange": "t.dlx"}),
     403, "access to exchange 't.dlx' in vhost 'ops.v' refused for user 'ops-u'"),
    ("queue.declare bad argument", "guest", "PUT", "/queues/ops.v/t.neg", {"durable": False, "arguments": {"x-max-length": -1}},
     "guest", lambda ch: ch.queue_declare("t.neg", arguments={"x-max-length": -1}),
     406, "invalid arg 'x-max-length' for queue 't.neg' in vhost 'ops.v': {value_negative,-1}"),
    ("queue.declare inequivalent", "guest", "PUT", "/queues/ops.v/t.q",
     {"durable": False, "arguments": {"x-dead-letter-exchange": "t.dlx"}},
     "guest", lambda ch: ch.queue_declare("t.q", arguments={"x-dead-letter-exchange": "t.dlx"}),
     406, "inequivalent arg 'x-dead-letter-exchange' for queue 't.q' in vhost 'ops.v': received the value 't.dlx' of "
          "type 'longstr' but current is none"),
    ("queue.declare of an exclusive queue", "guest", "PUT", "/queues/ops.v/t.excl", {"durable": False},
     "guest", lambda ch: ch.queue_declare("t.excl"),
     405, "cannot obtain exclusive access to locked queue 't.excl' in vhost 'ops.v'. It could be originally declared on "
          "another connection or the exclusive property value does not match that of the original declaration."),
    ("exchange.declare refused", "ops-u", "PUT", "/exchanges/ops.v/t.nx", {"type": "direct", "durable": False},
     "ops-u", lambda ch: ch.exchange_declare("t.nx", "direct"),
     403, "access to exchange 't.nx' in vhost 'ops.v' refused for user 'ops-u'"),
    ("exchange.declare inequivalent", "guest", "PUT", "/exchanges/ops.v/t.x", {"type": "fanout", "durable": False},
     "guest", lambda ch: ch.exchange_declare("t.x", "fanout"),
     406, "inequivalent arg 'type' for exchange 't.x' in vhost 'ops.v': received 'fanout' but current is 'direct'"),
    ("exchange.declare unknown type (a connection error in AMQP)", "guest", "PUT", "/exchanges/ops.v/t.nt",
     {"type": "nonsense", "durable": False}, "guest", lambda ch: ch.exchange_declare("t.nt", "nonsense"),
     503, "unknown exchange type 'nonsense'"),
    ("exchange.declare reserved name", "guest", "PUT", "/exchanges/ops.v/amq.t", {"type": "direct", "durable": False},
     "guest", lambda ch: ch.exchange_declare("amq.t", "direct"),
     403, "exchange name 'amq.t' contains reserved prefix 'amq.*'"),
    ("queue.bind missing exchange", "guest", "POST", "/bindings/ops.v/e/t.none/q/t.q", {"routing_key": "k"},
     "guest", lambda ch: ch.queue_bind("t.q", "t.none", "k"), 404, "no exchange 't.none' in vhost 'ops.v'"),
    ("queue.bind missing queue", "guest", "POST", "/bindings/ops.v/e/t.x/q/t.none", {"routing_key": "k"},
     "guest", lambda ch: ch.queue_bind("t.none", "t.x", "k"), 404, "no queue 't.none' in vhost 'ops.v'"),
    ("queue.bind read refused", "ops-u", "POST", "/bindings/ops.v/e/t.x/q/ok.q", {"routing_key": "k"},
     "ops-u", lambda ch: ch.queue_bind("ok.q", "t.x", "k"),
     403, "access to exchange 't.x' in vhost 'ops.v' refused for user 'ops-u'"),
    ("queue.bind default exchange", "guest", "POST", "/bindings/ops.v/e/amq.default/q/t.q", {"routing_key": "k"},
     "guest", lambda ch: ch.queue_bind("t.q", "", "k"), 403, "operation not permitted on the default exchange"),
    ("exchange.bind refused", "ops-u", "POST", "/bindings/ops.v/e/ok.x/e/t.x", {"routing_key": "k"},
     "ops-u", lambda ch: ch.exchange_bind("t.x", "ok.x", "k"),
     403, "access to exchange 't.x' in vhost 'ops.v' refused for user 'ops-u'"),
    ("queue.unbind refused", "ops-u", "DELETE", "/bindings/ops.v/e/ok.x/q/t.dest/k", None,
     "ops-u", lambda ch: ch.queue_unbind("t.dest", "ok.x", "k"),
     403, "access to queue 't.dest' in vhost 'ops.v' refused for user 'ops-u'"),
    ("queue.delete if-empty", "guest", "DELETE", "/queues/ops.v/t.q?if-empty=true", None,
     "guest", lambda ch: ch.queue_delete("t.q", if_empty=True), 406, "queue 't.q' in vhost 'ops.v' not empty"),
    ("queue.delete if-unused", "guest", "DELETE", "/queues/ops.v/t.used?if-unused=true", None,
     "guest", lambda ch: ch.queue_delete("t.used", if_unused=True), 406, "queue 't.used' in vhost 'ops.v' in use"),
    ("queue.delete refused", "ops-u", "DELETE", "/queues/ops.v/t.q", None,
     "ops-u", lambda ch: ch.queue_delete("t.q"), 403, "access to queue 't.q' in vhost 'ops.v' refused for user 'ops-u'"),
    ("queue.delete of an exclusive queue", "guest", "DELETE", "/queues/ops.v/t.excl", None,
     "guest", lambda ch: ch.queue_delete("t.excl"),
     405, "cannot obtain exclusive access to locked queue 't.excl' in vhost 'ops.v'. It could be originally declared on "
          "another connection or the exclusive property value does not match that of the original declaration."),
    ("exchange.delete if-unused", "guest", "DELETE", "/exchanges/ops.v/t.x?if-unused=true", None,
     "guest", lambda ch: ch.exchange_delete("t.x", if_unused=True), 406, "exchange 't.x' in vhost 'ops.v' in use"),
    ("exchange.delete refused", "ops-u", "DELETE", "/exchanges/ops.v/t.x", None,
     "ops-u", lambda ch: ch.exchange_delete("t.x"),
     403, "access to exchange 't.x' in vhost 'ops.v' refused for user 'ops-u'"),
    ("queue.purge refused", "ops-u", "DELETE", "/queues/ops.v/t.q/contents", None,
     "ops-u", lambda ch: ch.queue_purge("t.q"), 403, "access to queue 't.q' in vhost 'ops.v' refused for user 'ops-u'"),
    ("queue.purge of an exclusive queue", "guest", "DELETE", "/queues/ops.v/t.excl/contents", None,
     "guest", lambda ch: ch.queue_purge("t.excl"),
     405, "cannot obtain exclusive access to locked queue 't.excl' in vhost 'ops.v'. It could be originally declared on "
          "another connection or the exclusive property value does not match that of the original declaration."),
    ("basic.get refused", "ops-u", "POST", "/queues/ops.v/t.q/get", {"count": 1, "ackmode": "ack_requeue_true"},
     "ops-u", lambda ch: ch.basic_get("t.q"), 403, "access to queue 't.q' in vhost 'ops.v' refused for user 'ops-u'"),
    ("basic.get missing queue", "guest", "POST", "/queues/ops.v/t.none/get", {"count": 1, "ackmode": "ack_requeue_true"},
     "guest", lambda ch: ch.basic_get("t.none"), 404, "no queue 't.none' in vhost 'ops.v'"),
    ("basic.publish refused", "ops-u", "POST", "/exchanges/ops.v/t.x/publish", publish_body("k"),
     "ops-u", lambda ch: ch.basic_publish("t.x", "k", b"x") or ch.queue_declare("ok.q", passive=True),
     403, "access to exchange 't.x' in vhost 'ops.v' refused for user 'ops-u'"),
    ("basic.publish missing exchange", "guest", "POST", "/exchanges/ops.v/t.none/publish", publish_body("k"),
     "guest", lambda ch: ch.basic_publish("t.none", "k", b"x") or ch.queue_declare("t.q", passive=True),
     404, "no exchange 't.none' in vhost 'ops.v'"),
    ("basic.publish internal exchange", "guest", "POST", "/exchanges/ops.v/t.internal/publish", publish_body("k"),
     "guest", lambda ch: ch.basic_publish("t.internal", "k", b"x") or ch.queue_declare("t.q", passive=True),
     403, "cannot publish to internal exchange 't.internal' in vhost 'ops.v'"),
    ("basic.publish user-id", "guest", "POST", "/exchanges/ops.v/t.x/publish", publish_body("k", {"user_id": "bob"}),
     "guest", lambda ch: ch.basic_publish("t.x", "k", b"x", pika.BasicProperties(user_id="bob"))
     or ch.queue_declare("t.q", passive=True),
     406, "user_id property set to 'bob' but authenticated user was 'guest'"),
    ("basic.publish expiration", "guest", "POST", "/exchanges/ops.v/t.x/publish", publish_body("k", {"expiration": "abc"}),
     "guest", lambda ch: ch.basic_publish("t.x", "k", b"x", pika.BasicProperties(expiration="abc"))
     or ch.queue_declare("t.q", passive=True),
     406, "invalid expiration 'abc': no_integer"),
]


@pytest.fixture
def twins_topology(api: Api, broker: BrokerThread) -> Iterator[None]:
    """t.q (one message) bound from t.x; t.internal; t.used (a consumer); t.excl (exclusive
    to another connection); ok.q; ok.x bound to t.dest by "k"."""
    for q in ("t.q", "t.used", "t.dest", "ok.q"):
        assert api.call("PUT", f"/queues/{VQ}/{q}", {"durable": False})[0] == 201
    for x, body in (("t.x", {"type": "direct"}), ("t.internal", {"type": "fanout", "internal": True}),
                    ("ok.x", {"type": "direct"}), ("t.dlx", {"type": "fanout"})):
        assert api.call("PUT", f"/exchanges/{VQ}/{x}", {"durable": False, **body})[0] == 201
    assert api.call("POST", f"/bindings/{VQ}/e/t.x/q/t.q", {"routing_key": "k"})[0] == 201
    assert api.call("POST", f"/bindings/{VQ}/e/ok.x/q/t.dest", {"routing_key": "k"})[0] == 201
    assert api.call("POST", f"/exchanges/{VQ}/t.x/publish", publish_body("k")) == (200, {"routed": True})
    holder = connect(broker)
    ch = holder.channel()
    ch.queue_declare("t.excl", exclusive=True)
    ch.basic_consume("t.used", lambda *a: None)
    try:
        yield
    finally:
        holder.close()
        cleanup(api, queues=("t.q", "t.used", "t.dest", "ok.q", "ok.dl"), exchanges=("t.x", "t.internal", "ok.x", "t.dlx"))


def topology_of(api: Api) -> Any:
    return (sorted((q["name"], q["messages"], q["durable"], q["arguments"] != {}) for q in api.get(f"/queues/{VQ}")),
            sorted((x["name"], x["type"]) for x in api.get(f"/exchanges/{VQ}")),
            sorted((b["source"], b["destination"], b["routing_key"]) for b in api.get(f"/bindings/{VQ}")))


def test_every_http_write_and_its_amqp_twin_refuse_bad_input_alike(
    api: Api, broker: BrokerThread, twins_topology: None
) -> None:
    host, port = "127.0.0.1", int(api.base.split(":")[2].split("/")[0])
    users = {"guest": api, "ops-u": Api(host, port, "ops-u", "pw")}
    passwords = {"guest": "guest", "ops-u": "pw"}
    before = topology_of(api)
    for what, huser, method, path, body, auser, op, code, text in TWINS:
        conn = connect(broker, auser, passwords[auser])
        try:
            with pytest.raises((pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker)) as info:
                op(conn.channel())
        finally:
            if conn.is_open:
                conn.close()
        got = (info.value.reply_code, info.value.reply_text)
        assert got == (code, f"{NAMES[code]} - {text}"), what
        # a soft error closes the channel only; 503 the connection
        assert isinstance(info.value, pika.exceptions.ConnectionClosedByBroker) == (code == 503), what
        status, answer = users[huser].call(method, path, body)
        if path.endswith("/publish"):
            expected = (400, {"error": "bad_request", "reason": f"{code} {NAMES[code]} - {text}"})
        elif code == 403 and text.startswith("access to"):
            expected = (401, {"error": "not_authorised", "reason": text})
        elif code == 404:
            expected = (404, {"error": "Object Not Found", "reason": text})
        else:
            expected = (400, {"error": "bad_request", "reason": text})
        assert (status, answer) == expected, what
        assert topology_of(api) == before, what  # neither changed anything


def test_definitions_import_refuses_what_a_declare_refuses_before_applying_anything(
    api: Api, broker: BrokerThread, twins_topology: None
) -> None:
    before = topology_of(api)
    x = {"name": "t.new", "type": "direct", "durable": False, "auto_delete": False, "internal": False, "arguments": {}}
    for queue, reason in (
        ({"name": "t.q", "durable": True, "auto_delete": False, "arguments": {}},
         "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 't.q' in vhost 'ops.v': received 'true' but current "
         "is 'false'"),
        ({"name": "t.neg", "durable": False, "auto_delete": False, "arguments": {"x-max-length": -1}},
         "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 't.neg' in vhost 'ops.v': {value_negative,-1}"),
        ({"name": "amq.q", "durable": False, "auto_delete": False, "arguments": {}},
         "ACCESS_REFUSED - queue name 'amq.q' contains reserved prefix 'amq.*'"),
        ({"name": "t.excl", "durable": False, "auto_delete": False, "arguments": {}},
         "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 't.excl' in vhost 'ops.v'. It could be "
         "originally declared on another connection or the exclusive property value does not match that of the original "
         "declaration."),
    ):
        status, answer = api.call("POST", f"/definitions/{VQ}", {"exchanges": [x], "queues": [queue]})
        assert (status, answer) == (400, {"error": "bad_request", "reason": "queues[0]: " + reason})
        assert topology_of(api) == before
    status, answer = api.call("POST", f"/definitions/{VQ}", {"exchanges": [x, {**x, "name": "t.x", "type": "topic"}]})
    assert (status, answer) == (400, {"error": "bad_request", "reason": "exchanges[1]: PRECONDITION_FAILED - inequivalent "
                                      "arg 'type' for exchange 't.x' in vhost 'ops.v': received 'topic' but current is "
                                      "'direct'"})
    assert topology_of(api) == before


def test_http_and_amqp_over_the_queue_limit_alike(api: Api, broker: BrokerThread, twins_topology: None) -> None:
    n = len(api.get(f"/queues/{VQ}"))
    assert api.call("PUT", f"/vhost-limits/{VQ}/max-queues", {"value": n}) == (204, None)
    try:
        text = f"cannot declare queue 't.over': queue limit in vhost '{V}' ({n}) is reached"
        assert api.call("PUT", f"/queues/{VQ}/t.over", {"durable": False}) == (400, {"error": "bad_request", "reason": text})
        assert amqp_error(broker, lambda ch: ch.queue_declare("t.over")) == (406, "PRECONDITION_FAILED - " + text)
        # a server-named queue counts too; a redeclare does not
        code, reply = amqp_error(broker, lambda ch: ch.queue_declare(""))
        assert code == 406 and "queue limit in vhost" in reply
        assert api.call("PUT", f"/queues/{VQ}/t.q", {"durable": False})[0] == 204
        amqp_ok(broker, lambda ch: ch.queue_declare("t.q"))
        # definitions import: the same rule, checked before anything is applied (the
        # exchange before the queue is not declared either)
        before = topology_of(api)
        status, answer = api.call("POST", f"/definitions/{VQ}", {
            "exchanges": [{"name": "t.imported", "type": "direct", "durable": False, "auto_delete": False,
                           "internal": False, "arguments": {}}],
            "queues": [{"name": "t.q", "durable": False, "auto_delete": False, "arguments": {}},
                       {"name": "t.over", "durable": False, "auto_delete": False, "arguments": {}}]})
        assert (status, answer) == (400, {"error": "bad_request", "reason": "queues[1]: PRECONDITION_FAILED - " + text})
        assert topology_of(api) == before
    finally:
        api.call("DELETE", f"/vhost-limits/{VQ}/max-queues")
