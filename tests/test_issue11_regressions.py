"""Regression tests for issue 11: differences from RabbitMQ 3.10 (each test failed before
its fix; every expectation was checked against a real RabbitMQ 3.10).

``LEVERET_REFERENCE_PORT=5672`` runs the raw-frame tests against a real RabbitMQ (tests
that need a Leveret of their own are skipped then).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pamqp import commands as C

from leveret.broker import Config
from leveret.storage import DataDirLocked
from leveret.testing import BrokerProcess, BrokerThread, free_port
from tests.rawamqp import (
    PROTOCOL_HEADER,
    RawClient,
    build_frame,
    content_frames,
    method_frame,
    publish_frames,
)

REFERENCE = os.environ.get("LEVERET_REFERENCE_PORT")
leveret_only = pytest.mark.skipif(REFERENCE is not None, reason="needs a Leveret broker of its own")
ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = ROOT / "interop" / "clients" / "node" / "node_modules"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def port(request: pytest.FixtureRequest) -> int:
    if REFERENCE:
        return int(REFERENCE)
    return request.getfixturevalue("broker_thread").port


@pytest.fixture
def client(port: int) -> Iterator[RawClient]:
    """A raw client with the handshake done and channel 1 open."""
    with RawClient.connect(port) as c:
        c.handshake()
        c.open_channel(1)
        yield c


def _close(code: int = 200, text: str = "bye") -> C.Connection.Close:
    return C.Connection.Close(reply_code=code, reply_text=text, class_id=0, method_id=0)


def _still_works(port: int) -> None:
    with RawClient.connect(port) as c:
        c.handshake()
        c.open_channel(1)
        assert c.declare_queue(1, exclusive=True).queue.startswith("amq.gen-")


# ---------------------------------------------------------------------- 1. close: no reset


def _recv_until_eof(sock: socket.socket, timeout: float) -> bytes:
    """Everything up to EOF; a reset (ECONNRESET) fails the test."""
    sock.settimeout(timeout)
    got = b""
    while True:
        chunk = sock.recv(65536)  # ConnectionResetError propagates
        if not chunk:
            return got
        got += chunk


def test_client_close_while_its_frames_still_arrive_gets_close_ok_and_a_clean_eof(port: int) -> None:
    """amqplib's channel frames can follow its connection.close on the wire.  RabbitMQ
    answers close-ok and keeps reading (and dropping) until the client closes: the client
    sees its close-ok and a clean EOF.  Leveret closed the socket at once, with input
    unread, so the kernel reset the connection (EPIPE / ECONNRESET, no close-ok)."""
    with RawClient.connect(port) as c:
        c.handshake()
        c.open_channel(1)
        pub = publish_frames(1, "", "issue11-nowhere", b"x" * 1000)
        # far more than one read of frames after the close: they are still unread when
        # the broker has answered it
        c.send(pub * 20 + method_frame(0, _close()) + pub * 1500)
        for _ in range(10):
            c.send(pub)  # and it goes on writing for a moment (no EPIPE / ECONNRESET)
            time.sleep(0.01)
        c.expect(C.Connection.CloseOk, 0)
        assert c.buf == b""  # nothing after close-ok
        c.sock.shutdown(socket.SHUT_WR)
        if REFERENCE:
            # RabbitMQ closes with SO_LINGER 0 once the client has closed its side: a
            # reset then, harmless as the client is done; Leveret ends with a clean EOF
            try:
                _recv_until_eof(c.sock, 5)
            except ConnectionResetError:
                pass
        else:
            assert _recv_until_eof(c.sock, 5) == b""
    _still_works(port)


def test_client_close_then_silence_the_broker_closes_after_the_heartbeat_interval(port: int) -> None:
    """After close-ok RabbitMQ waits for the client's EOF for at most the heartbeat
    interval (30 s without heartbeats), then closes the socket itself."""
    with RawClient.connect(port) as c:
        c.handshake(heartbeat=1)
        c.send_method(0, _close())
        c.expect(C.Connection.CloseOk, 0)
        t = time.monotonic()
        frames = c.expect_socket_closed(timeout=5)
        assert not [o for _, o in frames if isinstance(o, C.Connection.Close)]
        assert time.monotonic() - t >= 0.5  # not at once: it waited for the client


_CLOSE_BURST_JS = r"""
const amqp = require('amqplib/callback_api');
const [url, n] = [process.argv[2], parseInt(process.argv[3])];
amqp.connect(url, (err, conn) => {
  if (err) { console.log('CONNECT ' + err.message); process.exit(2); }
  conn.on('error', (e) => console.log('ERROR ' + (e.code || e.message)));
  conn.createChannel((err, ch) => {
    if (err) { console.log('CHANNEL ' + err.message); process.exit(2); }
    for (let i = 0; i < n; i++) ch.sendToQueue('issue11-nowhere', Buffer.alloc(1000, 'x'));
    const t = setTimeout(() => { console.log('TIMEOUT: close callback never called'); process.exit(1); }, 10000);
    conn.close((err) => {
      clearTimeout(t);
      if (err) { console.log('CLOSE ' + (err.code || err.message)); process.exit(1); }
      console.log('CLOSED'); process.exit(0);
    });
  });
});
"""


def test_amqplib_close_right_after_a_burst_of_sends(port: int, tmp_path: Path) -> None:
    """Node amqplib (callback API): sendToQueue a few hundred messages, then
    connection.close(cb) at once: the callback is called without error."""
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "amqplib").is_dir():
        if IN_CI:
            pytest.fail("node / amqplib missing in CI (interop/install.sh installs them)")
        pytest.skip("node or amqplib missing: run 'npm ci' in interop/clients/node")
    script = tmp_path / "close_burst.js"
    script.write_text(_CLOSE_BURST_JS)
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    for n in (50, 500):
        r = subprocess.run(
            [node, str(script), f"amqp://guest:guest@127.0.0.1:{port}/", str(n)],
            env=env, capture_output=True, text=True, timeout=30,
        )
        assert r.returncode == 0 and r.stdout.strip() == "CLOSED", (n, r.stdout, r.stderr)


# ---------------------------------------------------------------------- 3. crossing channel.close


def _crossing_close(c: RawClient) -> None:
    """Publish to a missing exchange and close the channel without waiting (amqp091-go):
    the broker's channel.close 404 and the client's channel.close cross."""
    c.send(
        publish_frames(1, "issue11-no-such-exchange", "k", b"x")
        + method_frame(1, C.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
    )
    m = c.expect(C.Channel.Close, 1)
    assert (m.reply_code, m.class_id, m.method_id) == (404, 60, 40)
    assert m.reply_text == "NOT_FOUND - no exchange 'issue11-no-such-exchange' in vhost '/'"
    c.expect(C.Channel.CloseOk, 1)  # the client's close is answered


def test_crossing_channel_close_leaves_the_connection_and_other_channels_alone(client: RawClient) -> None:
    client.open_channel(2)
    q = client.declare_queue(2, exclusive=True).queue
    _crossing_close(client)
    client.send_method(1, C.Channel.CloseOk())  # for the broker's close
    client.publish(2, "", q, b"on channel 2")
    got = client.get(2, q)
    assert got is not None and got[2] == b"on channel 2"
    client.open_channel(1)  # the number is free again
    assert client.declare_queue(1, q, passive=True).message_count == 0


def test_crossing_channel_close_drops_frames_until_close_ok(client: RawClient) -> None:
    client.open_channel(2)
    q = client.declare_queue(2, exclusive=True).queue
    _crossing_close(client)
    client.send_method(1, C.Queue.Declare(queue="", exclusive=True))
    client.send(publish_frames(1, "", q, b"dropped"))
    client.send_method(1, C.Channel.CloseOk())
    assert client.declare_queue(2, q, passive=True).message_count == 0  # nothing answered on 1


def test_crossing_channel_close_then_a_second_close_ok_is_a_connection_error(client: RawClient) -> None:
    """Once the broker's close-ok came the channel is gone: RabbitMQ treats one more
    close-ok like any method on a channel that is not open."""
    _crossing_close(client)
    client.send_method(1, C.Channel.CloseOk())
    client.send_method(1, C.Channel.CloseOk())
    m = client.expect_connection_close(504, 20, 41)
    assert m.reply_text == "CHANNEL_ERROR - expected 'channel.open'"


def test_channel_open_on_a_closing_channel(client: RawClient) -> None:
    _crossing_close(client)
    client.send_method(1, C.Channel.Open())  # before the close-ok the broker waits for
    m = client.expect_connection_close(504, 20, 10)
    assert m.reply_text == "CHANNEL_ERROR - second 'channel.open' seen"


# ---------------------------------------------------------------------- 5. content on a closed channel


@pytest.mark.parametrize("what", ["header", "body"])
def test_content_frame_on_a_channel_never_opened(port: int, what: str) -> None:
    """RabbitMQ: 505 UNEXPECTED_FRAME, as for content without a publish (the issue
    expected 504; RabbitMQ 3.10 sends 505)."""
    with RawClient.connect(port) as c:
        c.handshake()
        c.send(content_frames(5, b"abc") if what == "header" else build_frame(3, 5, b"abc"))
        m = c.expect_connection_close(505, 0, 0)
        assert m.reply_text == "UNEXPECTED_FRAME - expected method frame, got non method frame instead"


# ---------------------------------------------------------------------- 5. start-ok: silent close


@pytest.mark.parametrize(
    "mechanism,response",
    [
        ("EXTERNAL", ""),
        ("FOO", "\0guest\0guest"),
        ("plain", "\0guest\0guest"),
        ("PLAIN", "guestguest"),
        ("PLAIN", "\0guest"),
        ("PLAIN", "x\0guest\0guest"),
        ("PLAIN", "\0guest\0guest\0"),
        ("AMQPLAIN", "garbage"),
    ],
    ids=["external", "unknown", "lowercase", "no-nuls", "one-nul", "authzid", "three-nuls", "amqplain-garbage"],
)
def test_start_ok_with_a_mechanism_not_offered_or_a_malformed_response_closes_the_socket(
    port: int, mechanism: str, response: str
) -> None:
    """Only wrong credentials get connection.close 403 (authentication_failure_close):
    anything else wrong in start-ok is a protocol error, and RabbitMQ closes the socket
    without a connection.close."""
    with RawClient.connect(port) as c:
        c.send(PROTOCOL_HEADER)
        c.expect(C.Connection.Start, 0)
        c.send_method(
            0,
            C.Connection.StartOk(
                client_properties={"capabilities": {"authentication_failure_close": True}},
                mechanism=mechanism,
                response=response,
                locale="en_US",
            ),
        )
        assert c.expect_socket_closed(timeout=8) == []  # RabbitMQ waits 3 s first


# ---------------------------------------------------------------------- 5. x-match


@pytest.mark.parametrize(
    "x_match,text",
    [
        ("bogus", 'Invalid x-match field value <<"bogus">>; expected all, any, all-with-x, or any-with-x'),
        ("ALL", 'Invalid x-match field value <<"ALL">>; expected all, any, all-with-x, or any-with-x'),
        ("", "Invalid x-match field value <<>>; expected all, any, all-with-x, or any-with-x"),
        ("\x01x", "Invalid x-match field value <<1,120>>; expected all, any, all-with-x, or any-with-x"),
        (1, "Invalid x-match field type byte (value 1); expected longstr"),
        (70000, "Invalid x-match field type signedint (value 70000); expected longstr"),
        (True, "Invalid x-match field type bool (value true); expected longstr"),
    ],
    ids=["bogus", "uppercase", "empty", "unprintable", "byte", "signedint", "bool"],
)
def test_headers_binding_with_an_invalid_x_match_is_refused(client: RawClient, x_match: Any, text: str) -> None:
    q = client.declare_queue(1, exclusive=True).queue
    client.send_method(1, C.Queue.Bind(queue=q, exchange="amq.headers", routing_key="", arguments={"x-match": x_match, "a": "b"}))
    m = client.expect_channel_close(1, 406, 50, 20)
    assert m.reply_text == f"PRECONDITION_FAILED - {text}"
    client.open_channel(1)
    for mode in ("all", "any", "all-with-x", "any-with-x"):  # the four valid ones
        client.rpc(1, C.Queue.Bind(queue=q, exchange="amq.headers", routing_key="", arguments={"x-match": mode}), C.Queue.BindOk)
    client.rpc(1, C.Queue.Bind(queue=q, exchange="amq.headers", routing_key="", arguments={"a": "b"}), C.Queue.BindOk)
    # not checked for other exchange types
    client.rpc(1, C.Queue.Bind(queue=q, exchange="amq.direct", routing_key="", arguments={"x-match": "bogus"}), C.Queue.BindOk)


def test_exchange_to_exchange_headers_binding_with_an_invalid_x_match(client: RawClient) -> None:
    client.rpc(1, C.Exchange.Declare(exchange="issue11.hx", exchange_type="fanout", auto_delete=True), C.Exchange.DeclareOk)
    client.send_method(1, C.Exchange.Bind(destination="issue11.hx", source="amq.headers", arguments={"x-match": "bogus"}))
    m = client.expect_channel_close(1, 406, 40, 30)
    assert m.reply_text.startswith('PRECONDITION_FAILED - Invalid x-match field value <<"bogus">>')
    client.open_channel(1)
    client.rpc(1, C.Exchange.Delete(exchange="issue11.hx"), C.Exchange.DeleteOk)


# ---------------------------------------------------------------------- 5. basic.get message_count


def test_basic_get_message_count_leaves_out_expired_messages_now_at_the_head(client: RawClient) -> None:
    q = client.declare_queue(1, exclusive=True).queue
    client.publish(1, "", q, b"long", expiration="100000")
    client.publish(1, "", q, b"short", expiration="1")
    client.publish(1, "", q, b"long2", expiration="100000")
    client.publish(1, "", q, b"short2", expiration="1")
    time.sleep(0.1)
    client.send_method(1, C.Basic.Get(queue=q, no_ack=True))
    ok = client.expect(C.Basic.GetOk, 1)
    assert client.read_content(1)[2] == b"long"
    assert ok.message_count == 2  # "short" went too; "short2" is not at the head yet
    assert client.declare_queue(1, q, passive=True).message_count == 2
    got = client.get(1, q)
    assert got is not None and got[2] == b"long2" and got[0].message_count == 0
    assert client.get(1, q) is None


# ---------------------------------------------------------------------- 5. amq.rabbitmq.reply-to


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "not-passive"])
def test_declare_of_the_direct_reply_to_pseudo_queue(client: RawClient, passive: bool) -> None:
    ok = client.rpc(1, C.Queue.Declare(queue="amq.rabbitmq.reply-to", passive=passive), C.Queue.DeclareOk)
    assert (ok.queue, ok.message_count, ok.consumer_count) == ("amq.rabbitmq.reply-to", 0, 1)
    # nowait: no declare-ok
    client.send_method(1, C.Queue.Declare(queue="amq.rabbitmq.reply-to", passive=passive, nowait=True))
    client.rpc(1, C.Basic.Qos(prefetch_count=1), C.Basic.QosOk)


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "not-passive"])
def test_declare_of_an_unknown_reply_to_name_is_not_found(client: RawClient, passive: bool) -> None:
    client.send_method(1, C.Queue.Declare(queue="amq.rabbitmq.reply-to.abc", passive=passive))
    m = client.expect_channel_close(1, 404, 50, 10)
    assert m.reply_text == "NOT_FOUND - no queue 'amq.rabbitmq.reply-to.abc' in vhost '/'"


# ---------------------------------------------------------------------- 4. x-death field types


_FIXED = {"t": ">B", "b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I", "l": ">q", "f": ">f", "d": ">d", "T": ">Q"}


def _typed_value(buf: bytes, pos: int) -> tuple[tuple[str, Any], int]:
    """One field value as (type letter, value), read straight from the bytes."""
    t = chr(buf[pos])
    pos += 1
    if t in _FIXED:
        f = struct.Struct(_FIXED[t])
        return (t, f.unpack_from(buf, pos)[0]), pos + f.size
    if t == "V":
        return (t, None), pos
    n = struct.unpack_from(">I", buf, pos)[0]
    data, end = buf[pos + 4 : pos + 4 + n], pos + 4 + n
    if t == "S":
        return (t, data), end
    if t == "F":
        return (t, _typed_table(data)), end
    if t == "A":
        items, p = [], 0
        while p < len(data):
            v, p = _typed_value(data, p)
            items.append(v)
        return (t, items), end
    raise AssertionError(f"unexpected field type {t!r}")


def _typed_table(buf: bytes) -> list[tuple[str, tuple[str, Any]]]:
    """A field table (without its size) as [(key, (type letter, value))] in wire order."""
    out, pos = [], 0
    while pos < len(buf):
        n = buf[pos]
        key = buf[pos + 1 : pos + 1 + n].decode()
        value, pos = _typed_value(buf, pos + 1 + n)
        out.append((key, value))
    return out


def _header_table(raw_header: bytes) -> list[tuple[str, tuple[str, Any]]]:
    """The headers table of a raw content header payload (after content-type/-encoding)."""
    flags = struct.unpack_from(">H", raw_header, 12)[0]
    pos = 14
    for bit in (0x8000, 0x4000):
        if flags & bit:
            pos += 1 + raw_header[pos]
    assert flags & 0x2000, "no headers"
    n = struct.unpack_from(">I", raw_header, pos)[0]
    return _typed_table(raw_header[pos + 4 : pos + 4 + n])


def _publish_raw_headers(c: RawClient, queue: str, table: bytes, body: bytes = b"hi", expiration: str | None = None) -> None:
    """basic.publish whose headers table is exactly ``table`` (field types and order as given)."""
    flags, props = 0x2000, struct.pack(">I", len(table)) + table
    if expiration is not None:
        flags |= 0x0100
        props += bytes((len(expiration),)) + expiration.encode()
    c.send(method_frame(1, C.Basic.Publish(exchange="", routing_key=queue)))
    c.send(build_frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), flags) + props) + build_frame(3, 1, body))


def _longstr_array(*items: bytes) -> bytes:
    body = b"".join(b"S" + struct.pack(">I", len(i)) + i for i in items)
    return b"A" + struct.pack(">I", len(body)) + body


# unsorted, with field types pamqp would not choose: they must come back as they are
_CLIENT_TABLE = (
    b"\x02zz" + b"l" + struct.pack(">q", 5)
    + b"\x02CC" + _longstr_array(b"cc-key")
    + b"\x02aa" + b"S" + struct.pack(">I", 1) + b"x"
    + b"\x02mm" + b"I" + struct.pack(">i", 7)
)


def _get_raw(c: RawClient, queue: str, no_ack: bool = True) -> tuple[Any, bytes]:
    """basic.get (waiting for the message to get there): (get-ok, raw content header)."""
    deadline = time.monotonic() + 5
    while True:
        c.send_method(1, C.Basic.Get(queue=queue, no_ack=no_ack))
        ok = c.expect(C.Basic.GetOk | C.Basic.GetEmpty, 1)
        if isinstance(ok, C.Basic.GetOk):
            _, raw, _ = c.read_content(1)
            return ok, raw
        assert time.monotonic() < deadline, f"nothing in {queue}"
        time.sleep(0.02)


def _dl_pair(c: RawClient, stamp: str) -> tuple[str, str]:
    """Queues a and b, each dead-lettering into the other."""
    a, b = f"issue11.dl.{stamp}.a", f"issue11.dl.{stamp}.b"
    c.declare_queue(1, a, exclusive=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": b})
    c.declare_queue(1, b, exclusive=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": a})
    return a, b


def test_x_death_field_types_and_the_first_death_headers(client: RawClient) -> None:
    a, b = _dl_pair(client, str(time.monotonic_ns()))
    t0 = int(time.time())
    _publish_raw_headers(client, a, _CLIENT_TABLE, expiration="1")
    _, raw = _get_raw(client, b)
    table = _header_table(raw)
    # the whole table sorted by key (RabbitMQ's set_table_value); CC gone (dead-letter
    # routing key given); the publisher's fields with their own types
    assert [k for k, _ in table] == [
        "aa", "mm", "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason", "zz",
    ]
    t = dict(table)
    assert t["aa"] == ("S", b"x") and t["mm"] == ("I", 7) and t["zz"] == ("l", 5)
    assert t["x-first-death-exchange"] == ("S", b"")
    assert t["x-first-death-queue"] == ("S", a.encode())
    assert t["x-first-death-reason"] == ("S", b"expired")
    kind, deaths = t["x-death"]
    assert kind == "A" and len(deaths) == 1 and deaths[0][0] == "F"
    entry = deaths[0][1]
    # the first entry in RabbitMQ's own order, not sorted
    assert [k for k, _ in entry] == ["count", "reason", "queue", "time", "exchange", "routing-keys", "original-expiration"]
    e = dict(entry)
    assert e["count"] == ("l", 1)
    assert e["reason"] == ("S", b"expired")
    assert e["queue"] == ("S", a.encode())
    assert e["time"][0] == "T" and t0 - 1 <= e["time"][1] <= time.time() + 1
    assert e["exchange"] == ("S", b"")
    assert e["routing-keys"] == ("A", [("S", a.encode()), ("S", b"cc-key")])
    assert e["original-expiration"] == ("S", b"1")
    assert raw[12] & 0x01 == 0  # the expiration property is gone


def test_x_death_repeated_deaths_count_as_long_in_rabbitmqs_order(client: RawClient) -> None:
    """Expired from a, then rejected back and forth between b and a: count is an ``l``
    each time, an updated or added entry has its keys sorted, and (RabbitMQ 3.10's
    regrouping of an array of two or more entries by queue and reason) the entries
    other than the updated one come out in reverse order."""
    a, b = _dl_pair(client, str(time.monotonic_ns()))
    client.publish(1, "", a, b"hello", expiration="1")
    seen = []
    queue = b
    for _ in range(5):
        ok, raw = _get_raw(client, queue, no_ack=False)
        deaths = dict(_header_table(raw))["x-death"]
        assert deaths[0] == "A"
        summary = []
        for kind, entry in deaths[1]:
            assert kind == "F"
            e = dict(entry)
            summary.append((e["queue"][1][-1:].decode() + "-" + e["reason"][1].decode(), e["count"]))
            if len(seen) > 0 and e["reason"] == ("S", b"rejected"):
                assert [k for k, _ in entry] == sorted(k for k, _ in entry)
        seen.append(summary)
        client.send_method(1, C.Basic.Reject(delivery_tag=ok.delivery_tag, requeue=False))
        queue = b if queue == a else a
    one, two = ("l", 1), ("l", 2)
    assert seen == [
        [("a-expired", one)],
        [("b-rejected", one), ("a-expired", one)],
        [("a-rejected", one), ("a-expired", one), ("b-rejected", one)],
        [("b-rejected", two), ("a-expired", one), ("a-rejected", one)],
        [("a-rejected", two), ("a-expired", one), ("b-rejected", two)],
    ]


def test_bcc_removal_keeps_the_other_header_fields_as_published(client: RawClient) -> None:
    q = client.declare_queue(1, exclusive=True).queue
    table = b"\x02zz" + b"l" + struct.pack(">q", 5) + b"\x03BCC" + _longstr_array(b"nowhere") + b"\x02mm" + b"I" + struct.pack(">i", 7)
    _publish_raw_headers(client, q, table)
    _, raw = _get_raw(client, q)
    assert _header_table(raw) == [("zz", ("l", 5)), ("mm", ("I", 7))]


# ---------------------------------------------------------------------- 2. the data directory lock


def _leveret_cmd(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "leveret", "--port", str(port), "--log-level", "info",
            "--http-port", "off", "--prometheus-port", "off", *args]


@leveret_only
def test_a_second_broker_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    with BrokerProcess(args=["--data-dir", data]) as first:
        assert first.proc is not None
        r = subprocess.run(
            _leveret_cmd(free_port(), "--host", "127.0.0.1", "--data-dir", data),
            capture_output=True, text=True, timeout=30, cwd=ROOT,
        )
        assert r.returncode != 0
        assert f"data directory {data} is in use by another Leveret broker (PID {first.proc.pid}" in r.stderr, r.stderr
        assert "listening on" not in r.stdout + r.stderr
        # in-process too
        with pytest.raises(DataDirLocked) as exc:
            BrokerThread(Config(port=0, data_dir=data)).start()
        assert exc.value.pid == first.proc.pid
        _still_works(first.port)  # the first one carries on
    # stopped: the directory is free again, for a restart in the same directory
    with BrokerProcess(args=["--data-dir", data]) as again:
        _still_works(again.port)
        again.kill()  # kill -9 leaves no stale lock
    with BrokerThread(Config(port=0, data_dir=data)) as b:
        _still_works(b.port)
        with pytest.raises(DataDirLocked):
            BrokerThread(Config(port=0, data_dir=data)).start()
    with BrokerThread(Config(port=0, data_dir=data)) as b:
        _still_works(b.port)


@leveret_only
def test_a_broker_that_fails_to_listen_frees_its_data_dir(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            BrokerThread(Config(port=taken.getsockname()[1], data_dir=data)).start()
    with BrokerThread(Config(port=0, data_dir=data)) as b:
        _still_works(b.port)


# ---------------------------------------------------------------------- 7. the command line


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _run_cli(port: int, *args: str) -> tuple[list[str], str, str]:
    """Start ``python -m leveret`` with ``args``; once it accepts AMQP handshakes on each
    listed host, SIGTERM it.  Returns (the hosts that accepted, stdout, stderr)."""
    hosts = [a for i, a in enumerate(args) if i and args[i - 1] == "--host"] or ["127.0.0.1"]
    proc = subprocess.Popen(
        _leveret_cmd(port, "--in-memory", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    accepted = []
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                socket.create_connection((hosts[0], port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the broker did not start"
                time.sleep(0.05)
        for host in ("127.0.0.1", "127.0.0.2", "::1"):
            try:
                with RawClient.connect(port, host=host, timeout=2) as c:
                    c.handshake()
                accepted.append(host)
            except OSError:
                pass
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return accepted, out, err


def _startup_lines(out: str, err: str) -> list[str]:
    return [line for line in (out + err).splitlines() if "listening on" in line]


@leveret_only
def test_startup_line_printed_once_and_the_default_hosts() -> None:
    port = free_port()
    accepted, out, err = _run_cli(port)
    lines = _startup_lines(out, err)
    assert len(lines) == 1, (out, err)
    assert lines == [ln for ln in out.splitlines() if "listening on" in ln]  # on stdout
    expected = ["127.0.0.1", "::1"] if _has_ipv6_loopback() else ["127.0.0.1"]
    assert accepted == expected
    assert f"127.0.0.1:{port}" in lines[0]
    if _has_ipv6_loopback():
        assert f"[::1]:{port}" in lines[0]


@leveret_only
def test_host_given_more_than_once_listens_on_each() -> None:
    port = free_port()
    hosts = ["127.0.0.1", "127.0.0.2"] + (["::1"] if _has_ipv6_loopback() else [])
    args = [x for h in hosts for x in ("--host", h)]
    accepted, out, err = _run_cli(port, *args)
    assert accepted == hosts
    lines = _startup_lines(out, err)
    assert len(lines) == 1
    for h in hosts:
        assert (f"[{h}]:{port}" if ":" in h else f"{h}:{port}") in lines[0]


@leveret_only
def test_a_single_host_listens_there_only() -> None:
    port = free_port()
    accepted, out, err = _run_cli(port, "--host", "127.0.0.2")
    assert accepted == ["127.0.0.2"]
    assert len(_startup_lines(out, err)) == 1
