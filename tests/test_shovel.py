"""Dynamic shovels inside Leveret (broker/shovel.py, broker/http/shovels.py), Leveret to
Leveret: RabbitMQ's parameter validation and texts, the HTTP API and its permissions,
what a shovel moves (and how: properties kept, forward headers), src-delete-after,
restart, the definitions, the data directory across a restart, and a shovel between two
Leveret processes surviving kill -9 of either.  (Leveret <-> RabbitMQ:
tests/test_shovel_rabbitmq.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from leveret.broker import Config
from leveret.testing import BrokerProcess, BrokerThread, free_port
from tests.httpapi import Api

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerThread]:
    cfg = Config(port=0, host="127.0.0.1", http_port=0, prometheus_port=0, vhosts=["/", "other"])
    with BrokerThread(cfg) as b:
        yield b


@pytest.fixture
def api(broker: BrokerThread) -> Api:
    assert broker.broker is not None and broker.broker.http_port
    return Api("127.0.0.1", broker.broker.http_port)


def wait_until(cond: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        time.sleep(0.05)


def publish(url: str, queue: str, bodies: list[bytes], **props: Any) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    for body in bodies:
        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, **props))
    conn.close()


def drain(url: str, queue: str) -> list[tuple[Any, bytes]]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    out = []
    while True:
        _m, props, body = ch.basic_get(queue, auto_ack=True)
        if body is None:
            break
        out.append((props, body))
    conn.close()
    return out


def count(url: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        return -1
    finally:
        if conn.is_open:
            conn.close()


# texts as RabbitMQ 3.10.8 answers them (checked by hand against it)
INVALID = [
    ({"src-uri": "amqp://", "dest-uri": "amqp://"}, "Validation failed\n\nMust specify 'src-exchange' or 'src-queue'\n"),
    (
        {"src-uri": "amqp://", "src-queue": "a", "src-exchange": "b", "dest-uri": "amqp://"},
        "Validation failed\n\nCannot specify 'src-exchange' and 'src-queue'\n",
    ),
    (
        {"src-uri": "foo://x", "src-queue": "a", "dest-uri": "amqp://"},
        'Validation failed\n\n"foo://x" not a valid URI: {{unexpected_uri_scheme,"foo"},"foo://x"}\n',
    ),
    (
        {"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "ack-mode": "bad",
         "src-delete-after": "x", "src-prefetch-count": "z"},
        'Validation failed\n\nsrc-delete-after should be a number greater than or equal to 0, "never" or '
        '"queue-length", actually was &lt;&lt;"x"&gt;&gt;\nsrc-prefetch-count should be a number, actually was '
        '&lt;&lt;"z"&gt;&gt;\nack-mode should be one of [&lt;&lt;"no-ack"&gt;&gt;,&lt;&lt;"on-publish"&gt;&gt;,'
        '&lt;&lt;"on-confirm"&gt;&gt;], actually was &lt;&lt;"bad"&gt;&gt;\n',
    ),
    ({"src-queue": "a", "dest-uri": "amqp://"}, 'Validation failed\n\nKey "src-uri" not found in probe\n'),
    (
        {"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "src-delete-after": 5, "ack-mode": "no-ack"},
        "Validation failed\n\nCannot specify 'no-ack' and numerical 'delete-after'\n",
    ),
    (
        {"src-uri": ["amqp://", 5], "src-queue": "a", "dest-uri": "amqp://", "bogus": 1},
        'Validation failed\n\nUnrecognised terms [{&lt;&lt;"bogus"&gt;&gt;,1}] in probe\n'
        "src-uri should be list, actually was 5\n",
    ),
    (
        {"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "dest-publish-properties": {"delivery_mode": "x"},
         "add-forward-headers": "yes", "reconnect-delay": "1"},
        'Validation failed\n\ndelivery_mode should be a number, actually was &lt;&lt;"x"&gt;&gt;\n'
        'add-forward-headers should be boolean, actually was &lt;&lt;"yes"&gt;&gt;\n'
        'reconnect-delay should be a number, actually was &lt;&lt;"1"&gt;&gt;\n',
    ),
]


@pytest.mark.parametrize("value, reason", INVALID)
def test_invalid_definitions_refused_with_rabbitmq_texts(api: Api, value: dict[str, Any], reason: str) -> None:
    status, body = api.call("PUT", "/parameters/shovel/%2F/probe", {"value": value})
    assert (status, body) == (400, {"error": "bad_request", "reason": reason})
    assert api.get("/shovels") == []


def test_no_value_and_no_vhost(api: Api) -> None:
    status, body = api.call("PUT", "/parameters/shovel/%2F/probe", {})
    assert (status, body) == (400, {"error": "bad_request", "reason": "[{key_missing,value}]"})
    value = {"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://"}
    assert api.call("PUT", "/parameters/shovel/no-such-vhost/x", {"value": value}) == (
        404, {"error": "not_found", "reason": "vhost_not_found"})
    for path in ("/parameters/shovel/no-such-vhost", "/shovels/no-such-vhost"):
        assert api.call("GET", path) == (404, {"error": "Object Not Found", "reason": "Not Found"})
    assert api.call("DELETE", "/shovels/vhost/no-such-vhost/x/restart") == (
        404, {"error": "Object Not Found", "reason": "Not Found"})


def test_local_shovel_moves_a_queue_and_deletes_itself(broker: BrokerThread, api: Api) -> None:
    n = 2000
    publish(broker.url, "mv.src", [b"%d" % i for i in range(n)], content_type="text/plain", headers={"h": 1})
    value = {"src-protocol": "amqp091", "src-uri": "amqp://", "src-queue": "mv.src",
             "src-delete-after": "queue-length", "dest-protocol": "amqp091", "dest-uri": "amqp://",
             "dest-queue": "mv.dst"}
    status, _ = api.call("PUT", "/parameters/shovel/%2F/mv", {"value": value})
    assert status == 201
    wait_until(lambda: count(broker.url, "mv.dst") == n, what="every message moved")
    wait_until(lambda: api.get("/shovels") == [], what="the shovel gone")
    assert api.call("GET", "/parameters/shovel/%2F/mv")[0] == 404
    got = drain(broker.url, "mv.dst")
    assert [b for _, b in got] == [b"%d" % i for i in range(n)]  # in order, each once
    props = got[0][0]
    # the message as it was published: no message_id added, headers and properties kept
    assert (props.content_type, props.headers, props.delivery_mode, props.message_id) == (
        "text/plain", {"h": 1}, 2, None)
    assert count(broker.url, "mv.src") == 0


def test_exchange_to_exchange_with_headers_and_properties(broker: BrokerThread, api: Api) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    ch.exchange_declare("sx.in", "topic")
    ch.exchange_declare("sx.out", "direct")
    ch.queue_declare("sx.q", exclusive=True)
    ch.queue_bind("sx.q", "sx.out", "moved")
    value = {"src-uri": "amqp://", "src-exchange": "sx.in", "src-exchange-key": "a.#",
             "dest-uri": "amqp://", "dest-exchange": "sx.out", "dest-exchange-key": "moved",
             "add-forward-headers": True, "dest-add-timestamp-header": True,
             "dest-publish-properties": {"app_id": "shovelled", "delivery_mode": 2}, "ack-mode": "on-publish"}
    assert api.call("PUT", "/parameters/shovel/%2F/sx", {"value": value})[0] == 201
    wait_until(lambda: [s for s in api.get("/shovels/%2F") if s["state"] == "running"], what="running")
    st = api.get("/shovels/%2F")[0]
    assert {k: st[k] for k in ("name", "vhost", "type", "state", "src_uri", "dest_uri", "src_exchange",
                               "src_exchange_key", "dest_exchange", "dest_exchange_key")} == {
        "name": "sx", "vhost": "/", "type": "dynamic", "state": "running", "src_uri": "amqp://",
        "dest_uri": "amqp://", "src_exchange": "sx.in", "src_exchange_key": "a.#",
        "dest_exchange": "sx.out", "dest_exchange_key": "moved"}
    ch.basic_publish("sx.in", "b.x", b"not matched")
    ch.basic_publish("sx.in", "a.x", b"one", pika.BasicProperties(headers={"k": "v"}))
    got: list[Any] = []

    def take() -> bool:
        _m, props, body = ch.basic_get("sx.q", auto_ack=True)
        if body is not None:
            got.append((props, body))
        return bool(got)

    wait_until(take, what="the shovelled message")
    props, body = got[0]
    assert body == b"one" and props.app_id == "shovelled" and props.delivery_mode == 2
    assert props.headers["k"] == "v"
    hop = props.headers["x-shovelled"][0]
    assert {k: hop[k] for k in ("shovel-name", "shovel-vhost", "shovel-type", "src-uri", "dest-uri",
                                "src-exchange", "dest-exchange")} == {
        "shovel-name": "sx", "shovel-vhost": "/", "shovel-type": "dynamic", "src-uri": "amqp://",
        "dest-uri": "amqp://", "src-exchange": "sx.in", "dest-exchange": "sx.out"}
    assert "x-shovelled-timestamp" in props.headers
    assert ch.basic_get("sx.q")[2] is None  # the unmatched key was not bound
    # restart: a new session, same definition
    assert api.call("DELETE", "/shovels/vhost/%2F/sx/restart")[0] == 204
    assert api.call("DELETE", "/shovels/vhost/%2F/nope/restart")[0] == 404
    wait_until(lambda: [s for s in api.get("/shovels/%2F") if s["state"] == "running"], what="running again")
    assert api.call("DELETE", "/parameters/shovel/%2F/sx")[0] == 204
    assert api.call("DELETE", "/parameters/shovel/%2F/sx")[0] == 404
    assert api.get("/shovels") == []
    conn.close()


def test_unreachable_destination_terminated_then_retried(broker: BrokerThread, api: Api) -> None:
    dead = free_port()
    publish(broker.url, "un.src", [b"kept"])
    value = {"src-uri": "amqp://", "src-queue": "un.src", "dest-uri": f"amqp://guest:secret@127.0.0.1:{dead}",
             "dest-queue": "x", "reconnect-delay": 0.2}
    assert api.call("PUT", "/parameters/shovel/%2F/un", {"value": value})[0] == 201
    st = wait_until(lambda: [s for s in api.get("/shovels") if s["state"] == "terminated"], what="terminated")
    assert st[0]["reason"]
    assert "secret" not in str(api.get("/shovels"))
    assert count(broker.url, "un.src") == 1  # left at the source
    # the same definition is shown as given (with its credentials, as RabbitMQ does)
    assert api.get("/parameters/shovel/%2F/un")["value"]["dest-uri"].endswith(f"@127.0.0.1:{dead}")
    assert api.call("DELETE", "/parameters/shovel/%2F/un")[0] == 204


def test_permissions(broker: BrokerThread, api: Api) -> None:
    for user, tags in (("sh-mgmt", "management"), ("sh-policy", "policymaker"), ("sh-far", "policymaker")):
        assert api.call("PUT", f"/users/{user}", {"password": "pw", "tags": tags})[0] in (201, 204)
    for user in ("sh-mgmt", "sh-policy"):
        assert api.call("PUT", f"/permissions/other/{user}", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    value = {"src-uri": "amqp:///other", "src-queue": "a", "dest-uri": "amqp://", "dest-queue": "b"}
    port = int(api.base.rsplit(":", 1)[1].split("/")[0])
    mgmt = Api("127.0.0.1", port, "sh-mgmt", "pw")
    policy = Api("127.0.0.1", port, "sh-policy", "pw")
    far = Api("127.0.0.1", port, "sh-far", "pw")
    not_auth = {"error": "not_authorised", "reason": "User not authorised to access object"}
    assert mgmt.call("PUT", "/parameters/shovel/other/p", {"value": value}) == (401, not_auth)
    # a policymaker without access to the vhost of the parameter
    assert far.call("PUT", "/parameters/shovel/other/p", {"value": value}) == (401, not_auth)
    # ... and one whose local URI names a vhost it may not open ("amqp://" is "/")
    assert policy.call("PUT", "/parameters/shovel/other/p", {"value": value}) == (
        400, {"error": "bad_request", "reason": 'Validation failed\n\nuser "sh-policy" may not connect to vhost "/"\n'})
    assert policy.get("/parameters/shovel/other") == []
    assert policy.call("GET", "/shovels") == (401, {"error": "not_authorised", "reason": "Not monitor user"})
    ok = {**value, "dest-uri": "amqp:///other"}
    assert policy.call("PUT", "/parameters/shovel/other/p", {"value": ok})[0] == 201
    assert [p["name"] for p in policy.get("/parameters/shovel/other")] == ["p"]
    # the shovel connects to this broker as its owner, with the owner's permissions
    wait_until(lambda: [s for s in api.get("/shovels/other") if s["state"] == "running"], what="running")
    assert policy.call("DELETE", "/parameters/shovel/other/p")[0] == 204
    for user in ("sh-mgmt", "sh-policy", "sh-far"):
        api.call("DELETE", f"/users/{user}")


def test_definitions_export_and_import(broker: BrokerThread, api: Api) -> None:
    value = {"src-uri": "amqp:///other", "src-queue": "d.src", "dest-uri": "amqp:///other", "dest-queue": "d.dst"}
    assert api.call("PUT", "/parameters/shovel/other/d", {"value": value})[0] == 201
    defs = api.get("/definitions")
    assert {"value": value, "vhost": "other", "component": "shovel", "name": "d"} in defs["parameters"]
    assert api.get("/definitions/other")["parameters"] == [
        {"value": value, "vhost": "other", "component": "shovel", "name": "d"}]
    assert api.call("DELETE", "/parameters/shovel/other/d")[0] == 204
    # imported into another broker: the shovel runs there
    with BrokerThread(Config(port=0, host="127.0.0.1", http_port=0)) as b2:
        assert b2.broker is not None and b2.broker.http_port
        api2 = Api("127.0.0.1", b2.broker.http_port)
        status, body = api2.call("POST", "/definitions", defs)
        assert status in (200, 201, 204), body
        publish(b2.url_for("other"), "d.src", [b"x"])
        wait_until(lambda: count(b2.url_for("other"), "d.dst") == 1, what="moved on the importing broker")
        bad = {"parameters": [{"vhost": "/", "component": "shovel", "name": "z", "value": {"src-uri": "amqp://"}}]}
        status, body = api2.call("POST", "/definitions", bad)
        assert status == 400 and "Must specify 'src-exchange' or 'src-queue'" in body["reason"]


def test_leveret_to_leveret_survives_kill_9_of_either(tmp_path: Any) -> None:
    """A shovel in A moves A's queue to B's; B is killed (-9) and started again, then A
    is: every message arrives, none are left, duplicates are counted."""
    http = free_port()
    a = BrokerProcess(args=["--data-dir", str(tmp_path / "a"), "--http-port", str(http)])
    b = BrokerProcess(args=["--data-dir", str(tmp_path / "b")])
    os.makedirs(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    a.start()
    b.start()
    try:
        api = Api("127.0.0.1", http)
        n = 3000
        publish(a.url, "in", [b"%d" % i for i in range(n)])
        value = {"src-uri": "amqp://", "src-queue": "in", "src-prefetch-count": 100,
                 "dest-uri": f"amqp://guest:guest@127.0.0.1:{b.port}", "dest-queue": "out", "reconnect-delay": 0.5}
        assert api.call("PUT", "/parameters/shovel/%2F/ab", {"value": value})[0] == 201
        wait_until(lambda: count(b.url, "out") > 0, what="the first messages at B")
        b.kill()  # the destination dies mid-way
        time.sleep(0.5)
        b.start()
        wait_until(lambda: count(a.url, "in") == 0 and count(b.url, "out") >= n, timeout=60, what="all at B")
        publish(a.url, "in", [b"%d" % i for i in range(n, 2 * n)])
        wait_until(lambda: count(b.url, "out") > n, what="more at B")
        a.kill()  # the shovel's own broker dies mid-way
        a.start()  # its shovel comes back from the data directory
        wait_until(lambda: count(a.url, "in") == 0 and count(b.url, "out") >= 2 * n, timeout=60, what="all at B")
        # (all may have left A before the kill: the shovel then still connects, "starting")
        wait_until(lambda: [s["state"] for s in api.get("/shovels")] == ["running"], what="the shovel running again")
        bodies = [int(body) for _, body in drain(b.url, "out")]
        assert set(bodies) == set(range(2 * n))  # nothing lost
        duplicates = len(bodies) - 2 * n
        print(f"leveret->leveret, kill -9 of B then of A: {2 * n} messages, {duplicates} duplicates")
        assert duplicates <= 2 * 100 + 2 * 100  # at most what was in flight (prefetch) at each kill
    finally:
        a.stop()
        b.stop()


def _ctl(api: Api, *args: str) -> subprocess.CompletedProcess[str]:
    port = api.base.rsplit(":", 1)[1].split("/")[0]
    return subprocess.run([sys.executable, "-m", "leveret.ctl", "-H", "127.0.0.1", "-P", port, *args],
                          capture_output=True, text=True, timeout=30)


def test_ctl_prometheus_and_rabbitmqadmin(broker: BrokerThread, api: Api) -> None:
    publish(broker.url, "ops.src", [b"a", b"b", b"c"])
    value = {"src-uri": "amqp://", "src-queue": "ops.src", "dest-uri": "amqp://", "dest-queue": "ops.dst"}
    assert api.call("PUT", "/parameters/shovel/%2F/ops", {"value": value})[0] == 201
    wait_until(lambda: count(broker.url, "ops.dst") == 3, what="moved")
    r = _ctl(api, "shovel_status")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("Shovel status on node leveret@")
    head, row = r.stdout.splitlines()
    assert head.split("\t") == ["name", "vhost", "type", "state", "source", "destination", "termination_reason",
                                 "destination_protocol", "source_protocol", "last_changed", "source_address",
                                 "destination_address"]
    cells = row.split("\t")
    assert cells[:6] == ["ops", "/", "dynamic", "running", "ops.src", "ops.dst"]
    # Prometheus: what it moved
    assert broker.broker is not None and broker.broker.prometheus_port
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.broker.prometheus_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'leveret_shovel_messages_forwarded_total{vhost="/",shovel="ops"} 3' in text
    assert 'leveret_shovel_messages_acknowledged_total{vhost="/",shovel="ops"} 3' in text
    assert 'leveret_shovels{state="running"} 1' in text
    r = _ctl(api, "restart_shovel", "ops")
    assert r.returncode == 0 and r.stderr.startswith("Restarting dynamic Shovel ops in virtual host / on node "), r
    r = _ctl(api, "delete_shovel", "ops")
    assert (r.returncode, r.stderr) == (0, "Deleting shovel ops in vhost /\n")
    r = _ctl(api, "delete_shovel", "ops")
    assert r.returncode == 69
    assert "Shovel with the given name was not found on the target node 'leveret@" in r.stderr
    assert "and / or virtual host '/'" in r.stderr
    # rabbitmqadmin's declare/delete parameter (the v1 script, unchanged), when installed
    script = os.environ.get("RABBITMQADMIN") or shutil.which("rabbitmqadmin")
    if script is None:
        return
    port = api.base.rsplit(":", 1)[1].split("/")[0]
    base = [sys.executable, script, "-H", "127.0.0.1", "-P", port, "-u", "guest", "-p", "guest"]
    value = {"src-uri": "amqp://", "src-queue": "ops.dst", "dest-uri": "amqp://", "dest-queue": "ops.back"}
    import json as _json

    r = subprocess.run([*base, "declare", "parameter", "component=shovel", "name=adm",
                        "value=" + _json.dumps(value)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "parameter declared" in r.stdout, (r.stdout, r.stderr)
    wait_until(lambda: count(broker.url, "ops.back") == 3, what="moved back by the rabbitmqadmin shovel")
    r = subprocess.run([*base, "delete", "parameter", "component=shovel", "name=adm"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "parameter deleted" in r.stdout, (r.stdout, r.stderr)
    assert api.get("/shovels") == []


def test_refusing_destination_keeps_messages_at_the_source(broker: BrokerThread, api: Api) -> None:
    """A destination that refuses the publishes (its exchange is missing: channel closed
    404) leaves every message at the source; once it accepts, they move."""
    publish(broker.url, "rf.src", [b"%d" % i for i in range(50)])
    value = {"src-uri": "amqp://", "src-queue": "rf.src", "dest-uri": "amqp://", "dest-exchange": "rf.missing",
             "dest-exchange-key": "k", "reconnect-delay": 0.3}
    assert api.call("PUT", "/parameters/shovel/%2F/rf", {"value": value})[0] == 201
    st = wait_until(lambda: [s for s in api.get("/shovels") if s["state"] == "terminated"], what="terminated")
    assert "NOT_FOUND - no exchange 'rf.missing' in vhost '/'" in st[0]["reason"]
    time.sleep(0.5)
    assert count(broker.url, "rf.src") == 50  # nothing lost, nothing acked
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    ch.exchange_declare("rf.missing", "direct")
    ch.queue_declare("rf.dst", exclusive=True)
    ch.queue_bind("rf.dst", "rf.missing", "k")
    wait_until(lambda: ch.queue_declare("rf.dst", passive=True).method.message_count >= 50, what="moved")
    assert count(broker.url, "rf.src") == 0
    assert api.call("DELETE", "/parameters/shovel/%2F/rf")[0] == 204
    ch.exchange_delete("rf.missing")
    conn.close()


def test_a_list_of_source_uris_is_tried_in_turn(broker: BrokerThread, api: Api) -> None:
    dead = free_port()
    publish(broker.url, "li.src", [b"x", b"y"])
    value = {"src-uri": [f"amqp://guest:guest@127.0.0.1:{dead}", "amqp://"], "src-queue": "li.src",
             "dest-uri": "amqp://", "dest-queue": "li.dst", "reconnect-delay": 0.2}
    assert api.call("PUT", "/parameters/shovel/%2F/li", {"value": value})[0] == 201
    wait_until(lambda: count(broker.url, "li.dst") == 2, what="moved through the second URI")
    st = api.get("/shovels/%2F")[0]
    assert (st["state"], st["src_uri"]) == ("running", "amqp://")
    assert api.call("DELETE", "/parameters/shovel/%2F/li")[0] == 204


def test_source_queue_deleted_then_back(broker: BrokerThread, api: Api) -> None:
    """The source queue deleted under a running shovel: its consumer is cancelled, the
    shovel is terminated, then starts again (declaring the queue, as RabbitMQ's does)."""
    publish(broker.url, "gone.src", [b"1"])
    value = {"src-uri": "amqp://", "src-queue": "gone.src", "dest-uri": "amqp://", "dest-queue": "gone.dst",
             "reconnect-delay": 0.3}
    assert api.call("PUT", "/parameters/shovel/%2F/gone", {"value": value})[0] == 201
    wait_until(lambda: count(broker.url, "gone.dst") == 1, what="moved")
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    conn.channel().queue_delete("gone.src")
    conn.close()
    # a new session (the queue declared again): the shovel carries on with new messages
    wait_until(lambda: count(broker.url, "gone.src") == 0, what="the source queue back")
    publish(broker.url, "gone.src", [b"2"])
    wait_until(lambda: count(broker.url, "gone.dst") == 2, what="moved after the queue came back")
    assert api.get("/shovels/%2F")[0]["state"] == "running"
    assert api.call("DELETE", "/parameters/shovel/%2F/gone")[0] == 204


def test_non_ascii_passwords_still_log_in(broker: BrokerThread, api: Api) -> None:
    """The shovel's own-login check runs first for every login: a non-ASCII password
    must reach the usual check (and a wrong one be refused as before)."""
    assert api.call("PUT", "/users/sh-uni", {"password": "pässwörd-ü", "tags": ""})[0] == 201
    assert api.call("PUT", "/permissions/%2F/sh-uni", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    port = broker.port
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", port, credentials=pika.PlainCredentials("sh-uni", "pässwörd-ü")))
    assert conn.is_open
    conn.close()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", port, credentials=pika.PlainCredentials("sh-uni", "wröng")))
    api.call("DELETE", "/users/sh-uni")


@pytest.mark.parametrize("ack_mode", ["on-confirm", "on-publish"])
def test_numeric_delete_after_moves_that_many(broker: BrokerThread, api: Api, ack_mode: str) -> None:
    src, dst = f"num.{ack_mode}.src", f"num.{ack_mode}.dst"
    publish(broker.url, src, [b"%d" % i for i in range(10)])
    value = {"src-uri": "amqp://", "src-queue": src, "src-delete-after": 4, "src-prefetch-count": 3,
             "dest-uri": "amqp://", "dest-queue": dst, "ack-mode": ack_mode}
    assert api.call("PUT", f"/parameters/shovel/%2F/num-{ack_mode}", {"value": value})[0] == 201
    wait_until(lambda: api.get("/shovels") == [], what="the shovel done and gone")
    wait_until(lambda: count(broker.url, src) == 6, what="the rest back at the source")
    assert [b for _, b in drain(broker.url, dst)] == [b"0", b"1", b"2", b"3"]
    assert [b for _, b in drain(broker.url, src)] == [b"%d" % i for i in range(4, 10)]
