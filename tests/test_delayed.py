"""The ``x-delayed-message`` exchange (rabbitmq_delayed_message_exchange's semantics)
over real sockets: pika against a broker in a thread, a subprocess broker killed with
SIGKILL, the management API, and kombu (Celery's messaging library) end to end.

The plugin is not installed on the reference RabbitMQ here; its texts come from its
source (rabbit_exchange_type_delayed_message.erl, rabbit_delayed_message_utils.erl)."""

from __future__ import annotations

import decimal
import os
import random
import struct
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pika
import pytest
from pamqp import commands as C
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker

from leveret.broker import Config
from leveret.testing import BrokerProcess, BrokerThread
from tests.helpers import start_durable
from tests.httpapi import Api
from tests.polling import wait_until
from tests.rawamqp import RawClient, build_frame, header_table, longstr_array, method_frame

DIRECT = {"x-delayed-type": "direct"}


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    with BrokerThread(Config(port=0, host="127.0.0.1", http_port=0)) as b:
        yield b


@pytest.fixture
def conn(broker: BrokerThread) -> Iterator[pika.BlockingConnection]:
    c = pika.BlockingConnection(pika.URLParameters(broker.url))
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def api(broker: BrokerThread) -> Api:
    assert broker.broker is not None and broker.broker.http_port
    return Api("127.0.0.1", broker.broker.http_port)


def delayed(ms: Any, **props: Any) -> pika.BasicProperties:
    return pika.BasicProperties(headers={"x-delay": ms}, **props)


def collect(ch: Any, queue: str, n: int, timeout: float = 10.0) -> list[tuple[bytes, float, Any]]:
    """(body, arrival wall time, headers) of ``n`` messages consumed from ``queue``."""
    got: list[tuple[bytes, float, Any]] = []

    def on(c: Any, m: Any, p: Any, body: bytes) -> None:
        got.append((body, time.time(), p.headers))

    tag = ch.basic_consume(queue, on, auto_ack=True)
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.01)
    ch.basic_cancel(tag)
    return got


# ---------------------------------------------------------------- declaration


@pytest.mark.parametrize(
    "arguments, text",
    [
        ({}, "Invalid argument, 'x-delayed-type' must be an existing exchange type"),
        ({"x-delayed-type": 5}, "Invalid argument, 'x-delayed-type' must be an existing exchange type"),
        ({"x-delayed-type": "x-delayed-message"}, "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'"),
        ({"x-delayed-type": "x-consistent-hash", "hash-property": "app_id"}, "Unsupported property: app_id"),
    ],
)
def test_declare_checks_x_delayed_type(conn: pika.BlockingConnection, arguments: dict[str, Any], text: str) -> None:
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare("dx", "x-delayed-message", arguments=arguments)
    assert (e.value.reply_code, e.value.reply_text) == (406, "PRECONDITION_FAILED - " + text)
    ch = conn.channel()  # only the channel was closed
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare("dx", "direct", passive=True)
    assert e.value.reply_code == 404  # and nothing was declared


def test_an_unknown_x_delayed_type_closes_the_connection_503(broker: BrokerThread, conn: pika.BlockingConnection) -> None:
    other = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    with pytest.raises(ConnectionClosedByBroker) as e:
        ch.exchange_declare("dx", "x-delayed-message", arguments={"x-delayed-type": "nosuch"})
    assert (e.value.reply_code, e.value.reply_text) == (503, "COMMAND_INVALID - unknown exchange type 'nosuch'")
    other.channel().exchange_declare("ok", "x-delayed-message", arguments=DIRECT)  # others unaffected
    other.close()


# ---------------------------------------------------------------- routing


@pytest.mark.parametrize(
    "xtype, key, bind_args, props",
    [
        ("direct", "a.b", None, {}),
        ("fanout", "", None, {}),
        ("topic", "a.#", None, {}),
        ("headers", "", {"x-match": "any", "kind": "job"}, {"kind": "job"}),
        ("x-consistent-hash", "1", None, {}),
    ],
)
def test_every_routing_type_delays_and_rewrites_x_delay(
    conn: pika.BlockingConnection, xtype: str, key: str, bind_args: Any, props: dict[str, Any]
) -> None:
    ch = conn.channel()
    ch.exchange_declare("dx", "x-delayed-message", arguments={"x-delayed-type": xtype})
    ch.queue_declare("q")
    ch.queue_bind("q", "dx", key, arguments=bind_args)
    t0 = time.time()
    ch.basic_publish("dx", "a.b", b"later", pika.BasicProperties(headers={"x-delay": 400, **props}))
    ch.basic_publish("dx", "a.b", b"now", pika.BasicProperties(headers=props or None))
    got = collect(ch, "q", 2)
    assert [b for b, _, _ in got] == [b"now", b"later"]
    assert got[0][1] - t0 < 0.3
    assert 0.4 <= got[1][1] - t0 < 1.0
    assert got[1][2] == {"x-delay": -400, **props}  # as the plugin: the header becomes -delay


@pytest.mark.parametrize(
    "value, held_ms",
    [
        (300, 300),
        ("300", 300),  # a string holding an integer
        (decimal.Decimal("300.9"), 300),  # a decimal (or float), truncated
        (0, 0),
        (-500, 0),
        ("soon", 0),
        (True, 0),
        (4294967296, 0),  # past the plugin's limit (2^32 - 1 ms): not delayed
    ],
)
def test_x_delay_values(conn: pika.BlockingConnection, value: Any, held_ms: int) -> None:
    ch = conn.channel()
    ch.exchange_declare("dx", "x-delayed-message", arguments=DIRECT)
    ch.queue_declare("q")
    ch.queue_bind("q", "dx", "k")
    t0 = time.time()
    ch.basic_publish("dx", "k", b"m", delayed(value))
    [(_, at, headers)] = collect(ch, "q", 1)
    assert held_ms / 1000 <= at - t0 < held_ms / 1000 + 0.25
    if held_ms:
        assert headers["x-delay"] == -held_ms
    else:
        assert headers["x-delay"] == value  # untouched


def test_due_order_not_publish_order(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    ch.exchange_declare("dx", "x-delayed-message", arguments=DIRECT)
    ch.queue_declare("q")
    ch.queue_bind("q", "dx", "k")
    for ms in (500, 100, 300, 200, 400):
        ch.basic_publish("dx", "k", b"%d" % ms, delayed(ms))
    assert [b for b, _, _ in collect(ch, "q", 5)] == [b"100", b"200", b"300", b"400", b"500"]


def test_a_waiting_message_is_not_returned_to_a_mandatory_publisher(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("dx", "x-delayed-message", arguments=DIRECT)
    # held, so not routed (yet): no basic.return, as the plugin documents
    ch.basic_publish("dx", "nowhere", b"m", delayed(100), mandatory=True)
    # not delayed and unroutable: returned as by any exchange
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("dx", "nowhere", b"m", mandatory=True)


def test_due_messages_follow_exchange_bindings_and_the_alternate_exchange(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    ch.exchange_declare("ae", "fanout")
    ch.queue_declare("unrouted")
    ch.queue_bind("unrouted", "ae")
    ch.exchange_declare("dx", "x-delayed-message", arguments={**DIRECT, "alternate-exchange": "ae"})
    ch.exchange_declare("next", "fanout")
    ch.exchange_bind("next", "dx", "k")
    ch.queue_declare("q")
    ch.queue_bind("q", "next")
    # a delayed exchange reached through an exchange binding holds the message too
    ch.exchange_declare("front", "fanout")
    ch.exchange_bind("dx", "front")
    ch.basic_publish("front", "k", b"e2e", delayed(200))
    ch.basic_publish("dx", "other", b"ae", delayed(200))
    time.sleep(0.1)
    assert ch.basic_get("q")[0] is None and ch.basic_get("unrouted")[0] is None
    assert [b for b, _, _ in collect(ch, "q", 1)] == [b"e2e"]
    assert [b for b, _, _ in collect(ch, "unrouted", 1)] == [b"ae"]


def test_cc_and_bcc_keys_route_the_due_message_and_transactions_hold_it(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    ch.exchange_declare("dx", "x-delayed-message", arguments=DIRECT)
    for q in ("main", "copy", "blind"):
        ch.queue_declare(q)
        ch.queue_bind(q, "dx", q)
    ch.tx_select()
    ch.basic_publish("dx", "main", b"m", pika.BasicProperties(headers={"x-delay": 200, "CC": ["copy"], "BCC": ["blind"]}))
    ch.tx_commit()
    time.sleep(0.1)
    assert all(ch.basic_get(q)[0] is None for q in ("main", "copy", "blind"))
    for q in ("main", "copy", "blind"):
        [(body, _, headers)] = collect(ch, q, 1)
        assert body == b"m" and headers["x-delay"] == -200 and "BCC" not in headers and headers["CC"] == ["copy"]


def test_transient_held_messages_count_for_the_memory_alarm(broker: BrokerThread, conn: pika.BlockingConnection) -> None:
    b = broker.broker
    assert b is not None
    ch = conn.channel()
    ch.exchange_declare("dx", "x-delayed-message", arguments=DIRECT)
    ch.queue_declare("q")
    ch.queue_bind("q", "dx", "k")
    base = b.queued_bytes
    for _ in range(10):
        ch.basic_publish("dx", "k", b"x" * 1000, delayed(300))
    ch.basic_publish("dx", "k", b"sync", delayed(1))  # (a round trip: the publishes are in)
    collect(ch, "q", 1)
    assert b.queued_bytes - base >= 10_000
    collect(ch, "q", 10)
    ch.queue_purge("q")
    assert b.queued_bytes == base


def test_deleting_the_vhost_drops_what_its_delayed_exchanges_hold(broker: BrokerThread, api: Api) -> None:
    b = broker.broker
    assert b is not None
    base = b.queued_bytes
    assert api.call("PUT", "/vhosts/dv")[0] in (201, 204)
    assert api.call("PUT", "/permissions/dv/guest", {"configure": ".*", "write": ".*", "read": ".*"})[0] in (201, 204)
    c = pika.BlockingConnection(pika.URLParameters(broker.url_for("dv")))
    ch = c.channel()
    ch.exchange_declare("dx", "x-delayed-message", arguments=DIRECT)
    ch.queue_declare("q")
    ch.queue_bind("q", "dx", "k")
    for _ in range(5):
        ch.basic_publish("dx", "k", b"x" * 1000, delayed(300))
    ch.queue_declare("q", passive=True)  # (a round trip: the publishes are in)
    assert b.queued_bytes - base >= 5000
    assert api.call("DELETE", "/vhosts/dv")[0] == 204
    assert b.queued_bytes == base  # what the exchange held is gone with it
    time.sleep(0.5)  # and its timer does not fire into a deleted vhost
    assert b.queued_bytes == base


# ---------------------------------------------------------------- visible


def test_management_api_shows_type_arguments_and_messages_delayed(conn: pika.BlockingConnection, api: Api) -> None:
    ch = conn.channel()
    ch.exchange_declare("dx", "x-delayed-message", durable=True, arguments=DIRECT)
    for _ in range(3):
        ch.basic_publish("dx", "k", b"m", delayed(60_000))
    ch.basic_publish("dx", "k", b"m")
    x = api.get("/exchanges/%2F/dx")
    assert (x["type"], x["arguments"], x["messages_delayed"]) == ("x-delayed-message", DIRECT, 3)
    listed = [e for e in api.get("/exchanges") if e["name"] == "dx"]
    assert listed[0]["messages_delayed"] == 3
    assert "messages_delayed" not in api.get("/exchanges/%2F/amq.direct")
    port = api.base.rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(
        [sys.executable, "-m", "leveret.ctl", "-H", "127.0.0.1", "-P", port, "list_exchanges", "name", "type", "messages_delayed"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "dx\tx-delayed-message\t3" in out.splitlines()
    # declared over HTTP, kept by the definitions
    assert api.call("PUT", "/exchanges/%2F/ch", {"type": "x-consistent-hash", "arguments": {"hash-header": "h"}})[0] == 201
    status, body = api.call("PUT", "/exchanges/%2F/bad", {"type": "x-delayed-message"})
    assert status == 400 and "x-delayed-type" in body["reason"]
    defs = api.get("/definitions")
    kept = {e["name"]: (e["type"], e["arguments"]) for e in defs["exchanges"]}
    assert kept["dx"] == ("x-delayed-message", DIRECT)
    assert kept["ch"] == ("x-consistent-hash", {"hash-header": "h"})
    with BrokerThread(Config(port=0, host="127.0.0.1", http_port=0)) as other:
        assert other.broker is not None
        api2 = Api("127.0.0.1", other.broker.http_port)
        assert api2.call("POST", "/definitions", defs)[0] == 204
        assert api2.get("/exchanges/%2F/dx")["type"] == "x-delayed-message"
        assert api2.get("/exchanges/%2F/ch")["arguments"] == {"hash-header": "h"}


# ---------------------------------------------------------------- durability


def start(data_dir: str, port: int | None = None) -> BrokerProcess:
    return BrokerProcess(port=port, args=["--data-dir", data_dir, "--fsync-interval", "0.05"]).start()


def durable_dx_to_dq(b: BrokerProcess) -> tuple[pika.BlockingConnection, Any]:
    """A connection to ``b`` and a channel in confirm mode, with the durable delayed
    exchange ``dx`` (direct) bound to the durable queue ``dq`` by ``k``."""
    c = pika.BlockingConnection(pika.URLParameters(b.url))
    ch = c.channel()
    ch.confirm_delivery()
    ch.exchange_declare("dx", "x-delayed-message", durable=True, arguments=DIRECT)
    ch.queue_declare("dq", durable=True)
    ch.queue_bind("dq", "dx", "k")
    return c, ch


def test_kill_9_keeps_confirmed_delayed_messages_and_delivers_them_on_time(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    b = start(data)
    try:
        c = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = c.channel()
        ch.exchange_declare("dx", "x-delayed-message", durable=True, arguments=DIRECT)
        ch.queue_declare("dq", durable=True)
        ch.queue_bind("dq", "dx", "k")
        ch.exchange_declare("tx", "x-delayed-message", durable=False, arguments=DIRECT)
        ch.queue_bind("dq", "tx", "k")
        ch.confirm_delivery()
        due: dict[bytes, float] = {}
        plan = [(f"late-{i}", 100 + 20 * i) for i in range(10)]  # due during the restart
        plan += [(f"ontime-{i}", 4000 + 100 * i) for i in range(10)]  # due after it
        for name, ms in reversed(plan):
            t = time.time()
            ch.basic_publish("dx", "k", name.encode(), delayed(ms, delivery_mode=2))
            due[name.encode()] = t + ms / 1000
        # lost on a crash: transient messages, and persistent ones in a transient exchange
        ch.basic_publish("dx", "k", b"transient", delayed(3000, delivery_mode=1))
        ch.basic_publish("tx", "k", b"transient-x", delayed(3000, delivery_mode=2))
        b.kill()
        time.sleep(0.4)  # every "late" message is due before the broker is back
        b = start(data, b.port)
        restarted = time.time()
        c = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = c.channel()
        got = collect(ch, "dq", 21, timeout=8)
        names = [body for body, _, _ in got]
        assert names == sorted(due, key=due.__getitem__), "not all there, or not in due order"
        for body, at, headers in got:
            assert at >= due[body] - 0.005, f"{body!r} came early"
            if body.startswith(b"late"):
                assert at - restarted < 1.5, f"{body!r} was not routed at once after the restart"
            else:
                assert at - due[body] < 0.5, f"{body!r} came {at - due[body]:.3f} s late"
            assert headers["x-delay"] < 0
        c.close()
        # routed and acked: nothing comes back after another restart
        assert b.stop() == 0
        b = start(data, b.port)
        c = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = c.channel()
        ch.exchange_declare("dx", "x-delayed-message", durable=True, arguments=DIRECT, passive=True)
        time.sleep(0.3)
        assert ch.queue_declare("dq", durable=True, passive=True).method.message_count == 0
        c.close()
    finally:
        b.stop()


def _raw_publish(c: RawClient, rk: str, table: bytes, body: bytes, delivery_mode: int) -> None:
    """basic.publish to ``dx`` whose headers table is exactly ``table`` (types and order as
    given), then its confirm."""
    c.send(method_frame(1, C.Basic.Publish(exchange="dx", routing_key=rk)))
    props = struct.pack(">I", len(table)) + table + bytes((delivery_mode,))
    c.send(build_frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), 0x2000 | 0x1000) + props) + build_frame(3, 1, body))
    c.expect(C.Basic.Ack, 1)


def _raw_get(c: RawClient, queue: str) -> tuple[bytes, bytes]:
    """basic.get (waiting for a message): (raw content header, body)."""
    def got() -> tuple[bytes, bytes] | None:
        c.send_method(1, C.Basic.Get(queue=queue, no_ack=True))
        if isinstance(c.expect(C.Basic.GetOk | C.Basic.GetEmpty, 1), C.Basic.GetEmpty):
            return None
        _, header, body = c.read_content(1)
        return header, body

    return wait_until(got, what=f"a message in {queue}")


def _bcc_table(delay: int) -> bytes:
    """A headers table of many field types, with x-delay, CC and BCC among them."""
    nested = b"\x01kS" + struct.pack(">I", 1) + b"v"
    return b"".join((
        b"\x01ab" + struct.pack(">b", -5),
        b"\x07x-delayI" + struct.pack(">i", delay),
        b"\x02CC" + longstr_array(b"copy"),
        b"\x03BCC" + longstr_array(b"blind"),
        b"\x01tT" + struct.pack(">Q", 1_700_000_000),
        b"\x01fF" + struct.pack(">I", len(nested)) + nested,
        b"\x01ll" + struct.pack(">q", 1 << 40),
    ))


def _released_table(delay: int) -> list[tuple[str, Any]]:
    """What a queue gets of :func:`_bcc_table`: x-delay made -delay, BCC gone, CC kept,
    every other field as it was (type and order)."""
    return [
        ("a", ("b", -5)),
        ("x-delay", ("I", -delay)),
        ("CC", ("A", [("S", b"copy")])),
        ("t", ("T", 1_700_000_000)),
        ("f", ("F", [("k", ("S", b"v"))])),
        ("l", ("l", 1 << 40)),
    ]


def test_bcc_keys_of_a_held_message_route_it_when_due_logged_in_ram_and_after_kill_9(tmp_path: Path) -> None:
    """A BCC header is taken off the message before the exchange holds it (as RabbitMQ
    does on any exchange); its keys must still route the message once due: held in RAM
    (transient), held in the exchange's log (persistent), and read back from that log
    after a kill -9.  No copy has a BCC header; CC and every other field keep their
    bytes."""
    data = str(tmp_path / "data")
    b = start_durable(data)
    try:
        c = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = c.channel()
        ch.exchange_declare("dx", "x-delayed-message", durable=True, arguments=DIRECT)
        for q in ("main", "copy", "blind"):
            ch.queue_declare(q, durable=True)
            ch.queue_bind(q, "dx", q)
        c.close()
        with RawClient.connect(b.port) as raw:
            raw.handshake()
            raw.open_channel(1)
            raw.rpc(1, C.Confirm.Select(), C.Confirm.SelectOk)
            _raw_publish(raw, "main", _bcc_table(300), b"logged", 2)
            _raw_publish(raw, "main", _bcc_table(300), b"in-ram", 1)
            time.sleep(0.1)
            for q in ("main", "copy", "blind"):
                raw.send_method(1, C.Basic.Get(queue=q, no_ack=True))
                raw.expect(C.Basic.GetEmpty, 1)  # held
            for q in ("main", "copy", "blind"):
                got = {}
                for _ in range(2):
                    header, body = _raw_get(raw, q)
                    got[body] = header_table(header)
                assert got == {b"logged": _released_table(300), b"in-ram": _released_table(300)}, q
            # read back from the log after a kill -9
            _raw_publish(raw, "main", _bcc_table(1500), b"restarted", 2)
        b.kill()
        b = start_durable(data, b.port)
        with RawClient.connect(b.port) as raw:
            raw.handshake()
            raw.open_channel(1)
            for q in ("main", "copy", "blind"):
                header, body = _raw_get(raw, q)
                assert body == b"restarted" and header_table(header) == _released_table(1500), q
    finally:
        b.stop()


def _delayed_log_bytes(data: str) -> int:
    """Bytes of the segment and ack files of the (one) delayed exchange's log under the
    data directory."""
    root = os.path.join(data, "queues")
    for d in os.listdir(root):
        key = os.path.join(root, d, "key")
        if os.path.exists(key) and open(key, "rb").read().startswith(b"\x01delayed"):
            path = os.path.join(root, d)
            total = 0
            for f in os.listdir(path):
                if f.startswith(("msgs.", "acks.")) and not f.endswith(".drop"):
                    try:
                        total += os.path.getsize(os.path.join(path, f))
                    except FileNotFoundError:  # (removed since the listing)
                        pass
            return total
    raise AssertionError("no delayed log")


def test_the_delayed_log_is_compacted_and_what_it_holds_still_comes_once_in_due_order(tmp_path: Path) -> None:
    """Records leave a delayed exchange's log in due order, not in log order: the long
    delays among short ones pin every segment.  Compaction shrinks the log once the short
    ones have gone (64 KiB segments here), and moves what is still held (the heap) and
    what was released but not yet acked (waiting for the fsync of its queue): the long
    ones come exactly once, with their bodies, in due order, in the same process and
    after a kill -9; no short one comes back."""
    data = str(tmp_path / "data")
    b = start_durable(data, None, "--segment-size", str(64 * 1024))
    try:
        c = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = c.channel()
        ch.exchange_declare("dx", "x-delayed-message", durable=True, arguments=DIRECT)
        ch.queue_declare("dq", durable=True)
        ch.queue_bind("dq", "dx", "k")
        n = 1000
        rng = random.Random(7)
        # every 8th message long: half due before the kill (first), half after it
        # (second), each group due in the reverse of its publish order (30 ms apart: more
        # than a publish's jitter on a busy machine); the short ones
        # due one a ms in a shuffled order, so they leave every segment at once and the
        # records released but not yet acked are all over the log when it is compacted
        short = [i for i in range(n) if i % 8]
        rng.shuffle(short)
        t0 = time.time()
        due: dict[int, float] = {i: t0 + 3.0 + k / 1000 for k, i in enumerate(short)}
        longs = [i for i in range(n) if not i % 8]
        first, second = longs[::2], longs[1::2]
        for group, at in ((first, 6.0), (second, 11.0)):
            for k, i in enumerate(group):
                due[i] = t0 + at + (len(group) - k) * 0.03

        def body(i: int) -> bytes:
            return b"%06d|" % i + bytes([i % 251]) * 1017

        ch.tx_select()
        for i in range(n):
            ms = int((due[i] - time.time()) * 1000)
            assert ms > 100, "publishing took too long"
            ch.basic_publish("dx", "k", body(i), delayed(ms, delivery_mode=2))
            if i % 100 == 99:
                ch.tx_commit()
        ch.tx_commit()
        full = _delayed_log_bytes(data)
        assert full > n * 1024

        def take(count: int, timeout: float) -> list[int]:
            got = collect(ch, "dq", count, timeout=timeout)
            for b_, _, _ in got:
                assert b_ == body(int(b_[:6])), "a wrong body"
            return [int(b_[:6]) for b_, _, _ in got]

        assert sorted(take(len(short), 10)) == sorted(short)
        # compacted by the persistence tick: the records of an 8th of the messages left,
        # (about) an 8th of the bytes on disk, plus the active segment
        wait_until(lambda: _delayed_log_bytes(data) < full / 2, timeout=5, what="the delayed log shrinking")
        in_due = sorted(first, key=due.__getitem__)
        assert take(len(first), 10) == in_due
        time.sleep(0.5)  # (their acks synced)
        assert ch.basic_get("dq")[0] is None
        c.close()
        b.kill()
        b = start_durable(data, b.port)
        c = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = c.channel()
        assert take(len(second), 10) == sorted(second, key=due.__getitem__)
        time.sleep(0.5)
        assert ch.basic_get("dq")[0] is None, "a message came twice"
        c.close()
    finally:
        b.stop()


def test_deleting_a_durable_delayed_exchange_drops_its_messages(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    b = start(data)
    try:
        c, ch = durable_dx_to_dq(b)
        ch.basic_publish("dx", "k", b"m", delayed(700, delivery_mode=2))
        ch.exchange_delete("dx")
        ch.exchange_declare("dx", "x-delayed-message", durable=True, arguments=DIRECT)
        ch.queue_bind("dq", "dx", "k")
        c.close()
        assert b.stop() == 0
        b = start(data, b.port)
        time.sleep(1.0)
        c = pika.BlockingConnection(pika.URLParameters(b.url))
        assert c.channel().queue_declare("dq", durable=True, passive=True).method.message_count == 0
        c.close()
    finally:
        b.stop()


def test_messages_read_ahead_still_go_in_due_order_after_shorter_delays_held_later(tmp_path: Path) -> None:
    """A logged message held over 2 s leaves the heap a second before it is due (its record
    read ahead, ``DelayedStore._ahead``); messages held after that with shorter delays,
    due before it, still go first: the release merges both in due order."""
    b = start(str(tmp_path / "data"))
    try:
        c, ch = durable_dx_to_dq(b)
        t0 = time.time()
        ch.basic_publish("dx", "k", b"a", delayed(3000, delivery_mode=2))  # due at +3.0 s
        time.sleep(max(0.0, t0 + 2.3 - time.time()))  # (read ahead since +2.0 s)
        t1 = time.time()
        ch.basic_publish("dx", "k", b"b", delayed(300, delivery_mode=2))  # due at ~+2.6 s
        ch.basic_publish("dx", "k", b"c", delayed(450))  # transient, due at ~+2.75 s
        got = collect(ch, "dq", 3)
        assert [m for m, _, _ in got] == [b"b", b"c", b"a"]
        assert got[0][1] >= t1 + 0.3 and got[1][1] >= t1 + 0.45 and got[2][1] >= t0 + 3.0
        c.close()
    finally:
        b.stop()


def test_a_durable_consistent_hash_exchange_keeps_its_ring_across_a_restart(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    b = start(data)
    try:
        def placement(url: str) -> dict[bytes, str]:
            c = pika.BlockingConnection(pika.URLParameters(url))
            ch = c.channel()
            for i in range(300):
                ch.basic_publish("hx", f"key-{i}", b"%d" % i)
            ch.queue_declare("h3", durable=True, passive=True)  # (a round trip)
            out = {}
            for q in ("h1", "h2", "h3"):
                while (m := ch.basic_get(q, auto_ack=True))[0] is not None:
                    out[m[2]] = q
            c.close()
            return out

        c = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = c.channel()
        ch.exchange_declare("hx", "x-consistent-hash", durable=True)
        for q, w in (("h1", "1"), ("h2", "2"), ("h3", "1")):
            ch.queue_declare(q, durable=True)
            ch.queue_bind(q, "hx", w)
        c.close()
        before = placement(b.url)
        assert len(before) == 300 and len(set(before.values())) == 3
        assert b.stop() == 0
        b = start(data, b.port)
        assert placement(b.url) == before
    finally:
        b.stop()


# ---------------------------------------------------------------- client libraries


def test_kombu_publishes_through_a_delayed_exchange(broker: BrokerThread) -> None:
    """kombu (Celery's transport) declares the exchange and publishes with x-delay, as
    MassTransit, EasyNetQ and Spring AMQP do."""
    url = urllib.parse.urlparse(broker.url)
    with kombu.Connection(f"amqp://guest:guest@127.0.0.1:{url.port}//") as kc:
        x = kombu.Exchange("kdx", type="x-delayed-message", arguments={"x-delayed-type": "direct"})
        q = kombu.Queue("kq", exchange=x, routing_key="task")
        t0 = time.time()
        with kc.Producer() as producer:
            producer.publish({"job": 1}, exchange=x, routing_key="task", declare=[q], headers={"x-delay": 300})
        got: list[tuple[Any, float]] = []
        with kc.Consumer(q, callbacks=[lambda body, m: (got.append((body, time.time())), m.ack())]):
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                try:
                    kc.drain_events(timeout=0.1)
                except TimeoutError:
                    pass
    assert got and got[0][0] == {"job": 1}
    assert 0.3 <= got[0][1] - t0 < 0.8


def test_celery_task_through_a_delayed_exchange_runs_on_a_worker_after_its_delay(broker: BrokerThread) -> None:
    """Celery: a task queue bound to a delayed exchange, ``apply_async`` with an ``x-delay``
    header, a real worker: the task runs once the delay is over."""
    import celery
    from celery.contrib.testing.worker import start_worker
    from kombu import Exchange, Queue

    app = celery.Celery("delayed-tests", broker=broker.url, backend="rpc://")
    later = Exchange("celery-later", type="x-delayed-message", arguments={"x-delayed-type": "direct"})
    app.conf.task_queues = [Queue("celery-later", later, routing_key="later")]
    app.conf.task_default_queue = "celery-later"

    @app.task(name="tests.stamp")
    def stamp() -> float:
        return time.time()

    with start_worker(app, perform_ping_check=False, pool="threads", concurrency=1, shutdown_timeout=30):
        t0 = time.time()
        result = stamp.apply_async(exchange="celery-later", routing_key="later", headers={"x-delay": 1000})
        ran_at = result.get(timeout=10)
    assert 1.0 <= ran_at - t0 < 3.0


def test_moves_follow_records_over_several_compactions_of_a_segment(tmp_path: Path) -> None:
    """The delayed store names its held records by the positions they were written at;
    ``Moves`` finds them after each of several rewrites of their segment (records
    released between them, some acked before the next rewrite and some after it), and
    forgets a segment once it is gone."""
    from leveret.broker.core.delayed import Moves
    from leveret.storage import QueueLog

    qlog = QueueLog(tmp_path / "log", 4096)
    qlog.recover()
    written = {qlog.append(b"%05d" % i * 20): b"%05d" % i * 20 for i in range(300)}
    qlog.flush()
    moves = Moves()
    rng = random.Random(3)
    held = sorted(written)
    for _ in range(5):
        rng.shuffle(held)
        released = [moves.take(p) for p in held[: len(held) // 2]]
        held = held[len(held) // 2 :]
        late = released[::3]  # acked after the rewrite: their waiters move them
        for p in released:
            if p not in late:
                assert qlog.ack(p)
        moved = qlog.compact()
        moves.apply(moved, set(late))
        for p in late:
            assert qlog.ack(moved.get(p, p))
        for p in held:
            assert qlog.read(moves.current(p)) == written[p]
    assert moves
    for p in held:
        assert qlog.ack(moves.take(p))
    moves.forget(qlog.has_segment)
    assert not moves
    qlog.close()
