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
