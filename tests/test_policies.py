"""Policies and operator policies (issue 23), with pika on the AMQP side and real HTTP.

Texts and codes were taken from RabbitMQ 3.10.8 (the management API and rabbitmqctl).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from leveret.broker import Config
from leveret.testing import BrokerThread
from tests.httpapi import Api


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerThread]:
    cfg = Config(port=0, host="127.0.0.1", http_port=0, users={"guest": "guest"}, vhosts=["/"])
    with BrokerThread(cfg) as b:
        yield b


@pytest.fixture
def vhost(broker: BrokerThread, request: pytest.FixtureRequest) -> Iterator[str]:
    """A vhost of the test's own (so policies of one test never touch another's queues)."""
    name = "pol-" + request.node.name[:40]
    api = Api("127.0.0.1", broker.broker.http_port)
    assert api.call("PUT", f"/vhosts/{name}")[0] in (201, 204)
    yield name
    api.call("DELETE", f"/vhosts/{name}")


@pytest.fixture
def api(broker: BrokerThread) -> Api:
    return Api("127.0.0.1", broker.broker.http_port)


def channel(broker: BrokerThread, vhost: str) -> Any:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port, vhost,
                                                             pika.PlainCredentials("guest", "guest")))
    return conn, conn.channel()


def count(ch: Any, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


def put_policy(api: Api, vhost: str, name: str, pattern: str, definition: dict[str, Any], priority: int = 0,
               apply_to: str = "queues", kind: str = "policies") -> int:
    status, body = api.call("PUT", f"/{kind}/{vhost}/{name}", {"pattern": pattern, "definition": definition,
                                                                  "priority": priority, "apply-to": apply_to})
    assert status in (201, 204), body
    return status


def wait_for(pred: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.02)


# ---------------------------------------------------------------------- effect on queues


def test_message_ttl_policy_expires_messages_of_an_existing_queue(api: Api, broker: BrokerThread, vhost: str) -> None:
    conn, ch = channel(broker, vhost)
    ch.queue_declare("jobs.a")
    ch.basic_publish("", "jobs.a", b"before")  # enqueued before the policy: no expiry (as RabbitMQ)
    assert put_policy(api, vhost, "ttl", r"^jobs\.", {"message-ttl": 100}) == 201
    ch.queue_purge("jobs.a")
    ch.basic_publish("", "jobs.a", b"after")
    assert count(ch, "jobs.a") == 1
    assert wait_for(lambda: count(ch, "jobs.a") == 0, 3)
    q = api.get(f"/queues/{vhost}/jobs.a")
    assert (q["policy"], q["operator_policy"], q["effective_policy_definition"]) == ("ttl", None, {"message-ttl": 100})
    # deleting the policy restores the declared behaviour
    assert api.call("DELETE", f"/policies/{vhost}/ttl")[0] == 204
    ch.basic_publish("", "jobs.a", b"kept")
    time.sleep(0.3)
    assert count(ch, "jobs.a") == 1
    q = api.get(f"/queues/{vhost}/jobs.a")
    assert (q["policy"], q["operator_policy"], q["effective_policy_definition"]) == (None, None, {})
    conn.close()


def test_dlx_policy_dead_letters_with_x_death(api: Api, broker: BrokerThread, vhost: str) -> None:
    conn, ch = channel(broker, vhost)
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("dead")
    ch.queue_bind("dead", "dlx")
    ch.queue_declare("jobs.b")
    put_policy(api, vhost, "DLX", r"^jobs\.", {"dead-letter-exchange": "dlx", "dead-letter-routing-key": "rk"})
    ch.basic_publish("", "jobs.b", b"m1")
    method, _, _ = ch.basic_get("jobs.b")
    ch.basic_reject(method.delivery_tag, requeue=False)
    got = wait_for(lambda: ch.basic_get("dead", auto_ack=True), 3)
    assert got[0] is not None
    props, body = got[1], got[2]
    assert body == b"m1"
    death = props.headers["x-death"][0]
    assert death["queue"] == "jobs.b" and death["reason"] == "rejected" and death["exchange"] == ""
    assert death["routing-keys"] == ["jobs.b"] and death["count"] == 1
    assert got[0].routing_key == "rk"
    conn.close()


def test_lower_argument_beats_higher_policy_and_the_reverse(api: Api, broker: BrokerThread, vhost: str) -> None:
    conn, ch = channel(broker, vhost)
    ch.queue_declare("low-arg", arguments={"x-max-length": 2})
    ch.queue_declare("high-arg", arguments={"x-max-length": 50})
    put_policy(api, vhost, "len", "-arg$", {"max-length": 5})
    for i in range(10):
        ch.basic_publish("", "low-arg", b"%d" % i)
        ch.basic_publish("", "high-arg", b"%d" % i)
    assert count(ch, "low-arg") == 2  # the argument (2) beats the policy (5)
    assert count(ch, "high-arg") == 5  # the policy (5) beats the argument (50)
    # the dead-letter keys and overflow: the argument wins
    ch.queue_declare("arg-dlx-arg", arguments={"x-dead-letter-exchange": "mine", "x-overflow": "reject-publish"})
    put_policy(api, vhost, "len", "-arg", {"max-length": 1, "dead-letter-exchange": "theirs",
                                            "overflow": "drop-head"})
    q = broker.broker.vhosts[vhost].queues["arg-dlx-arg"]
    assert (q.dlx, q.overflow, q.max_length) == ("mine", "reject-publish", 1)
    assert count(ch, "high-arg") == 1  # the lower limit applied at once (drop-head)
    conn.close()


def test_priority_decides_between_two_matching_policies(api: Api, broker: BrokerThread, vhost: str) -> None:
    conn, ch = channel(broker, vhost)
    ch.queue_declare("prio.q")
    put_policy(api, vhost, "low", "^prio", {"max-length": 1}, priority=1)
    put_policy(api, vhost, "high", r"^prio\.", {"max-length": 3}, priority=5)
    for i in range(10):
        ch.basic_publish("", "prio.q", b"%d" % i)
    assert count(ch, "prio.q") == 3
    assert api.get(f"/queues/{vhost}/prio.q")["policy"] == "high"
    # the higher one gone: the other applies at once
    api.call("DELETE", f"/policies/{vhost}/high")
    assert count(ch, "prio.q") == 1
    assert api.get(f"/queues/{vhost}/prio.q")["policy"] == "low"
    # listed by ascending priority
    assert [p["name"] for p in api.get(f"/policies/{vhost}")] == ["low"]
    conn.close()


def test_operator_policy_caps_an_applications_max_length(api: Api, broker: BrokerThread, vhost: str) -> None:
    conn, ch = channel(broker, vhost)
    ch.queue_declare("app", arguments={"x-max-length": 100, "x-message-ttl": 60000})
    put_policy(api, vhost, "pol", "^app$", {"max-length": 50, "message-ttl": 1000})
    assert put_policy(api, vhost, "cap", "^app$", {"max-length": 3, "message-ttl": 5000},
                      kind="operator-policies") == 201
    for i in range(10):
        ch.basic_publish("", "app", b"%d" % i)
    assert count(ch, "app") == 3
    q = api.get(f"/queues/{vhost}/app")
    assert q["policy"] == "pol" and q["operator_policy"] == "cap"
    assert q["effective_policy_definition"] == {"max-length": 3, "message-ttl": 1000}
    assert broker.broker.vhosts[vhost].queues["app"].ttl == 1.0
    assert api.get(f"/operator-policies/{vhost}/cap")["definition"] == {"max-length": 3, "message-ttl": 5000}
    assert api.call("DELETE", f"/operator-policies/{vhost}/cap")[0] == 204
    assert broker.broker.vhosts[vhost].queues["app"].max_length == 50
    conn.close()


def test_alternate_exchange_policy_and_the_argument_wins(api: Api, broker: BrokerThread, vhost: str) -> None:
    conn, ch = channel(broker, vhost)
    ch.exchange_declare("ae", "fanout")
    ch.queue_declare("ae-q")
    ch.queue_bind("ae-q", "ae")
    ch.exchange_declare("ae2", "fanout")
    ch.queue_declare("ae2-q")
    ch.queue_bind("ae2-q", "ae2")
    ch.exchange_declare("orders", "direct")
    ch.exchange_declare("orders-own", "direct", arguments={"alternate-exchange": "ae2"})
    put_policy(api, vhost, "AE", "^orders", {"alternate-exchange": "ae"}, apply_to="exchanges")
    ch.basic_publish("orders", "nowhere", b"u1")
    ch.basic_publish("orders-own", "nowhere", b"u2")
    assert wait_for(lambda: count(ch, "ae-q") == 1)
    assert count(ch, "ae2-q") == 1  # its own argument beats the policy
    x = api.get(f"/exchanges/{vhost}/orders")
    assert x["policy"] == "AE"
    assert "policy" not in api.get(f"/exchanges/{vhost}/ae")  # (RabbitMQ: the key only when one applies)
    # an apply-to "queues" policy does not touch exchanges
    put_policy(api, vhost, "AE", "^orders", {"alternate-exchange": "ae"}, apply_to="queues")
    ch.basic_publish("orders", "nowhere", b"u3")
    time.sleep(0.2)
    assert count(ch, "ae-q") == 1
    conn.close()


def test_expires_policy_deletes_an_unused_queue(api: Api, broker: BrokerThread, vhost: str) -> None:
    conn, ch = channel(broker, vhost)
    ch.queue_declare("tmp.q")
    put_policy(api, vhost, "exp", r"^tmp\.", {"expires": 200})
    assert wait_for(lambda: "tmp.q" not in broker.broker.vhosts[vhost].queues, 3)
    conn.close()


# ---------------------------------------------------------------------- the API's answers


def test_put_answers_and_validation_texts_of_rabbitmq(api: Api, vhost: str, broker: BrokerThread) -> None:
    body = {"pattern": "^q", "definition": {"message-ttl": 1000}, "apply-to": "queues"}
    assert api.call("PUT", f"/policies/{vhost}/p1", body)[0] == 201
    assert api.call("PUT", f"/policies/{vhost}/p1", body)[0] == 204
    before = api.get(f"/policies/{vhost}")
    cases = [
        ({"pattern": "^q", "definition": {"message-ttl": "abc"}},
         'Validation failed\n\n&lt;&lt;"abc"&gt;&gt; is not a valid message TTL\n'),
        ({"pattern": "^q", "definition": {"foo": 1, "bar": 2}},
         'Validation failed\n\n[{&lt;&lt;"bar"&gt;&gt;,2},{&lt;&lt;"foo"&gt;&gt;,1}] are not recognised policy settings\n'),
        ({"pattern": "^q", "definition": {}}, "Validation failed\n\nno policy provided\n"),
        ({"pattern": "^q"}, "[{key_missing,definition}]"),
        ({"definition": {"message-ttl": 1}}, "[{key_missing,pattern}]"),
        ({"pattern": "(", "definition": {"message-ttl": 1}},
         'Validation failed\n\npattern should be regular expression but is invalid: {"missing )",1}\n'),
        ({"pattern": "q", "definition": {"message-ttl": 1}, "apply-to": "classic_queues"},
         "Validation failed\n\napply-to 'classic_queues' unrecognised; should be 'queues', 'exchanges' or 'all'\n"),
        ({"pattern": "q", "definition": {"message-ttl": 1}, "priority": "5"},
         'Validation failed\n\npriority should be a number, actually was &lt;&lt;"5"&gt;&gt;\n'),
        ({"pattern": "q", "definition": {"message-ttl": -1}}, "Validation failed\n\n-1 is not a valid message TTL\n"),
        ({"pattern": "q", "definition": {"expires": 0}}, "Validation failed\n\n0 is not a valid queue expiry\n"),
        ({"pattern": "q", "definition": {"max-length": 1e3}},
         "Validation failed\n\n1.0e3 is not a valid maximum length\n"),
        ({"pattern": "q", "definition": {"max-length-bytes": True}},
         "Validation failed\n\ntrue is not a valid maximum length in bytes\n"),
        ({"pattern": "q", "definition": {"dead-letter-routing-key": None}},
         "Validation failed\n\nnull is not a valid dead letter routing key\n"),
        ({"pattern": "q", "definition": {"overflow": "x"}},
         'Validation failed\n\n&lt;&lt;"x"&gt;&gt; is not a valid overflow value\n'),
        ({"pattern": "q", "definition": {"dead-letter-strategy": "x"}},
         'Validation failed\n\n&lt;&lt;"x"&gt;&gt; is not a valid dead letter strategy\n'),
        ({"pattern": "q", "definition": {"max-age": "1X"}},
         'Validation failed\n\n&lt;&lt;"1X"&gt;&gt; is not a valid max age\n'),
        ({"pattern": "q", "definition": {"message-ttl": {"a": 1}}},
         'Validation failed\n\n#{&lt;&lt;"a"&gt;&gt; =&gt; 1} is not a valid message TTL\n'),
        ({"pattern": "q", "definition": {"queue-master-locator": "x"}},
         'Validation failed\n\n&lt;&lt;"x"&gt;&gt; invalid queue-master-locator value\n'),
        ({"pattern": "q", "definition": {"ha-params": 2}},
         "Validation failed\n\nha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown\n"),
        ({"pattern": "q", "definition": {"ha-mode": "exactly"}},
         'Validation failed\n\nha-mode="exactly" takes an integer, none given\n'),
        ({"pattern": 1, "definition": {"message-ttl": 1}}, "Validation failed\n\npattern should be a binary but was 1\n"),
    ]
    for bad, reason in cases:
        status, err = api.call("PUT", f"/policies/{vhost}/p1", bad)
        assert (status, err) == (400, {"error": "bad_request", "reason": reason}), bad
    assert api.get(f"/policies/{vhost}") == before  # nothing changed
    assert broker.broker.vhosts[vhost].policies["p1"].definition == {"message-ttl": 1000}
    # accepted as RabbitMQ accepts them
    for good in ({"queue-mode": "lazy"}, {"queue-master-locator": "min-masters"}, {"delivery-limit": 0},
                 {"dead-letter-strategy": "at-least-once"}, {"max-age": "1D"}, {"stream-max-segment-size-bytes": 9},
                 {"ha-mode": "exactly", "ha-params": 2, "ha-sync-mode": "automatic"}, {"queue-version": 2},
                 {"max-in-memory-length": 1}, {"queue-leader-locator": "balanced"}):
        assert put_policy(api, vhost, "good", "^zz", good) in (201, 204), good
    # operator policies: their own key list, texts not escaped
    status, err = api.call("PUT", f"/operator-policies/{vhost}/o1", {"pattern": "q", "definition": {"overflow": "drop-head"}})
    assert (status, err["reason"]) == (
        400, 'Validation failed\n\n[{<<"overflow">>,<<"drop-head">>}] are not recognised policy settings\n')
    status, err = api.call("PUT", f"/operator-policies/{vhost}/o1", {"pattern": "q", "definition": {"message-ttl": "a"}})
    assert (status, err["reason"]) == (400, 'Validation failed\n\n<<"a">> is not a valid message TTL\n')
    assert api.get(f"/operator-policies/{vhost}") == []
    # 404s
    assert api.call("GET", f"/policies/{vhost}/nope")[0] == 404
    assert api.call("DELETE", f"/policies/{vhost}/nope")[0] == 404
    assert api.call("GET", "/policies/no-such-vhost")[0] == 404
    for kind in ("policies", "operator-policies"):
        assert api.call("PUT", f"/{kind}/no-such-vhost/x", {"pattern": "a", "definition": {"max-length": "x"}}) == (
            404, {"error": "not_found", "reason": "vhost_not_found"})
    p = api.get(f"/policies/{vhost}/p1")
    assert p == {"vhost": vhost, "name": "p1", "pattern": "^q", "apply-to": "queues",
                 "definition": {"message-ttl": 1000}, "priority": 0}
    assert p in api.get("/policies")


def test_a_queue_without_policy_shows_null(api: Api, vhost: str, broker: BrokerThread) -> None:
    conn, ch = channel(broker, vhost)
    ch.queue_declare("plain")
    q = api.get(f"/queues/{vhost}/plain")
    assert q["policy"] is None and q["operator_policy"] is None and q["effective_policy_definition"] == {}
    conn.close()


def test_permissions_policymaker_and_administrator(api: Api, vhost: str, broker: BrokerThread) -> None:
    for user, tags in (("pm", "policymaker"), ("pm-out", "policymaker"), ("mg", "management")):
        assert api.call("PUT", f"/users/{user}", {"password": "pw", "tags": tags})[0] in (201, 204)
    for user in ("pm", "mg"):
        api.call("PUT", f"/permissions/{vhost}/{user}", {"configure": "", "write": ".*", "read": ".*"})
    put_policy(api, vhost, "seen", "^x", {"max-length": 1})
    put_policy(api, vhost, "op", "^x", {"max-length": 1}, kind="operator-policies")
    pm, out, mg = (Api("127.0.0.1", broker.broker.http_port, u, "pw") for u in ("pm", "pm-out", "mg"))
    body = {"pattern": "^u", "definition": {"max-length": 1}}
    # a policymaker with access to the vhost (no configure permission needed, as RabbitMQ)
    assert pm.call("PUT", f"/policies/{vhost}/pu", body)[0] == 201
    assert pm.get(f"/policies/{vhost}/pu")["name"] == "pu"
    assert pm.call("DELETE", f"/policies/{vhost}/pu")[0] == 204
    # ... but not operator policies
    assert pm.call("PUT", f"/operator-policies/{vhost}/o", body) == (
        401, {"error": "not_authorised", "reason": "Not administrator user"})
    assert pm.call("DELETE", f"/operator-policies/{vhost}/op")[0] == 401
    assert [p["name"] for p in pm.get(f"/operator-policies/{vhost}")] == ["op"]
    # a management user lists but does not change
    assert [p["name"] for p in mg.get(f"/policies/{vhost}")] == ["seen"]
    assert mg.call("PUT", f"/policies/{vhost}/pu", body) == (
        401, {"error": "not_authorised", "reason": "User not authorised to access object"})
    assert mg.call("GET", f"/policies/{vhost}/seen")[0] == 401
    # a policymaker without access to the vhost
    assert vhost not in [p["vhost"] for p in out.get("/policies")]
    assert out.call("GET", f"/policies/{vhost}") == (
        401, {"error": "not_authorised", "reason": "User not authorised to access virtual host"})
    assert out.call("PUT", f"/policies/{vhost}/pu", body)[0] == 401
    assert sorted(broker.broker.vhosts[vhost].policies) == ["seen"]
    for user in ("pm", "pm-out", "mg"):
        api.call("DELETE", f"/users/{user}")


# ---------------------------------------------------------------------- definitions, restart

RABBITMQ_EXPORT = {
    # as RabbitMQ 3.10.8 writes it (GET /api/definitions), trimmed to one vhost
    "rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8", "product_name": "RabbitMQ",
    "product_version": "3.10.8",
    "users": [], "vhosts": [{"name": "imp", "description": "", "tags": [], "metadata": {"description": "", "tags": []}}],
    "permissions": [{"user": "guest", "vhost": "imp", "configure": ".*", "write": ".*", "read": ".*"}],
    "topic_permissions": [], "parameters": [], "global_parameters": [],
    "policies": [
        {"vhost": "imp", "name": "DLX", "pattern": "^jobs\\.", "apply-to": "queues",
         "definition": {"dead-letter-exchange": "dlx", "message-ttl": 100}, "priority": 0},
        {"vhost": "imp", "name": "ha", "pattern": ".*", "apply-to": "all", "definition": {"ha-mode": "all"},
         "priority": -1},
    ],
    "queues": [{"name": "jobs.1", "vhost": "imp", "durable": True, "auto_delete": False, "arguments": {}},
               {"name": "dead", "vhost": "imp", "durable": True, "auto_delete": False, "arguments": {}}],
    "exchanges": [{"name": "dlx", "vhost": "imp", "type": "fanout", "durable": True, "auto_delete": False,
                   "internal": False, "arguments": {}}],
    "bindings": [{"source": "dlx", "vhost": "imp", "destination": "dead", "destination_type": "queue",
                  "routing_key": "", "arguments": {}}],
}


def test_import_of_a_rabbitmq_export_with_policies_takes_effect(api: Api, broker: BrokerThread) -> None:
    status, err = api.call("POST", "/definitions", RABBITMQ_EXPORT)
    assert status in (200, 201, 204), err
    try:
        conn, ch = channel(broker, "imp")
        ch.basic_publish("", "jobs.1", b"late")
        assert wait_for(lambda: count(ch, "dead") == 1, 3)  # expired by the policy, dead-lettered by it
        assert count(ch, "jobs.1") == 0
        props = ch.basic_get("dead", auto_ack=True)[1]
        assert props.headers["x-death"][0]["reason"] == "expired"
        conn.close()
        exported = api.get("/definitions")
        assert [p for p in exported["policies"] if p["vhost"] == "imp"] == RABBITMQ_EXPORT["policies"][::-1]
        assert api.get("/definitions/imp")["policies"][0]["vhost"] == "imp"
        # a partial import holding only policies
        only = {"policies": [{"vhost": "imp", "name": "more", "pattern": "^x", "definition": {"max-length": 1}}]}
        assert api.call("POST", "/definitions", only)[0] in (200, 201, 204)
        assert api.get("/policies/imp/more")["apply-to"] == "all"
        # a bad policy refuses the whole file
        bad = {"policies": [{"vhost": "imp", "name": "bad", "pattern": "^x", "definition": {"message-ttl": "x"}}],
               "queues": [{"name": "never", "vhost": "imp", "durable": True, "auto_delete": False, "arguments": {}}]}
        status, err = api.call("POST", "/definitions", bad)
        assert status == 400 and "is not a valid message TTL" in err["reason"]
        assert "never" not in broker.broker.vhosts["imp"].queues
        assert api.call("GET", "/policies/imp/bad")[0] == 404
    finally:
        api.call("DELETE", "/vhosts/imp")


def test_policies_kept_across_a_restart(tmp_path: Path) -> None:
    cfg = Config(port=0, host="127.0.0.1", http_port=0, users={"guest": "guest"}, data_dir=str(tmp_path))
    with BrokerThread(cfg) as b:
        api = Api("127.0.0.1", b.broker.http_port)
        put_policy(api, "%2F", "cap", "^d", {"max-length": 2})
        put_policy(api, "%2F", "op", "^d", {"message-ttl": 60000}, kind="operator-policies")
        conn, ch = channel(b, "/")
        ch.queue_declare("d", durable=True)
        conn.close()
    with BrokerThread(Config(port=0, host="127.0.0.1", http_port=0, users={"guest": "guest"},
                             data_dir=str(tmp_path))) as b:
        api = Api("127.0.0.1", b.broker.http_port)
        assert [p["name"] for p in api.get("/policies/%2F")] == ["cap"]
        assert [p["name"] for p in api.get("/operator-policies/%2F")] == ["op"]
        q = api.get("/queues/%2F/d")
        assert (q["policy"], q["operator_policy"]) == ("cap", "op")
        conn, ch = channel(b, "/")
        for i in range(5):
            ch.basic_publish("", "d", b"%d" % i)
        assert count(ch, "d") == 2
        conn.close()
    saved = json.loads((tmp_path / "definitions.json").read_text())
    assert [p["name"] for p in saved["policies"]] == ["cap"]
    assert [p["name"] for p in saved["operator_policies"]] == ["op"]


def test_quorum_keys_are_exposed_for_the_queue_type(api: Api, broker: BrokerThread, vhost: str) -> None:
    """NServiceBus sets a delivery-limit policy and reads effective_policy_definition back;
    the queue type reads x-delivery-limit / x-dead-letter-strategy from the effective
    arguments (policy.effective_arguments, the lower delivery-limit winning)."""
    from leveret.broker.core.policy import effective_arguments

    conn, ch = channel(broker, vhost)
    ch.queue_declare("nsb.q", durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 50})
    put_policy(api, vhost, "nsb", r"^nsb\.", {"delivery-limit": 10, "dead-letter-strategy": "at-least-once",
                                              "overflow": "reject-publish"})
    q = api.get(f"/queues/{vhost}/nsb.q")
    assert q["effective_policy_definition"] == {"dead-letter-strategy": "at-least-once", "delivery-limit": 10,
                                                "overflow": "reject-publish"}
    v = broker.broker.vhosts[vhost]
    queue = v.queues["nsb.q"]
    eff = effective_arguments("queue", queue.arguments, v.applied_to(queue).definition)
    assert eff["x-delivery-limit"] == 10  # the lower (the policy's) wins
    assert eff["x-dead-letter-strategy"] == "at-least-once"
    assert queue.overflow == "reject-publish"  # a quorum queue: the policy's overflow wins
    conn.close()
