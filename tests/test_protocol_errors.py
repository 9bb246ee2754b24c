"""Protocol errors with raw frames: the exact reply code, which close (channel or
connection), the class/method ids, and that the broker and its other clients carry on.

Every expectation was checked against RabbitMQ 3.10.
``LEVERET_REFERENCE_URL=amqp://guest:guest@127.0.0.1:5672/`` runs the same tests against a
real RabbitMQ (tests that need a Leveret of their own are skipped then; see
tests/conftest.py).
"""

from __future__ import annotations

import logging
import signal
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from pamqp import commands as C
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from leveret.broker import Config
from leveret.protocol.constants import FRAME_BODY_PART
from leveret.protocol.frames import FrameError, FrameParser
from leveret.testing import BrokerProcess, BrokerThread
from tests.rawamqp import (
    PROTOCOL_HEADER,
    Closed,
    RawClient,
    build_frame,
    content_frames,
    method_frame,
    publish_frames,
)
from tests.reference import leveret_only


@pytest.fixture(autouse=True)
def no_internal_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing in the broker may crash: no ERROR log (``log.exception``) during a test."""
    caplog.set_level(logging.ERROR, logger="leveret")
    yield
    errors = [r for r in caplog.records if r.name.startswith("leveret") and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


class Bystander:
    """A well-behaved client connected before the misbehaving one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.c = RawClient.connect(port)
        self.c.handshake()
        self.c.open_channel(1)
        self.c.rpc(1, C.Confirm.Select(), C.Confirm.SelectOk)
        self.queue = self.c.declare_queue(1, exclusive=True).queue
        self.sent = 0

    def check(self) -> None:
        """Still publishes (confirmed) and gets; and a new connection still opens."""
        self.sent += 1
        body = b"still alive %d" % self.sent
        self.c.publish(1, "", self.queue, body)
        assert self.c.expect(C.Basic.Ack, 1).delivery_tag == self.sent
        got = self.c.get(1, self.queue)
        assert got is not None and got[2] == body
        with RawClient.connect(self.port) as fresh:
            fresh.handshake()
            fresh.open_channel(1)
            assert fresh.declare_queue(1, exclusive=True).queue.startswith("amq.gen-")


@pytest.fixture
def bystander(port: int) -> Iterator[Bystander]:
    b = Bystander(port)
    yield b
    b.c.close()


def no_close_frame(frames: list) -> None:
    assert not [o for _, o in frames if isinstance(o, C.Connection.Close)], frames


# ---------------------------------------------------------------------- before the handshake


@pytest.mark.parametrize(
    "data",
    [b"AMQP\x00\x00\x08\x00", b"AMQP\x01\x01\x00\x0a", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 8],
    ids=["amqp-0-8", "amqp-1-0", "http", "zeros"],
)
def test_wrong_protocol_header_answered_with_ours_then_closed(port: int, bystander: Bystander, data: bytes) -> None:
    with RawClient.connect(port) as c:
        c.send(data)
        got = b""
        while len(got) < 8:
            chunk = c.recv_raw()
            assert chunk, f"closed after {got!r}"
            got += chunk
        assert got == PROTOCOL_HEADER
        assert c.recv_raw() == b""
    bystander.check()


# ---------------------------------------------------------------------- framing: 501


def test_garbage_after_handshake_is_frame_error(client: RawClient, bystander: Bystander) -> None:
    client.send(b"\xff" * 32)
    m = client.expect_connection_close(501, 0, 0)
    assert m.reply_text.startswith("FRAME_ERROR")
    bystander.check()


def test_bad_frame_end_octet(client: RawClient, bystander: Bystander) -> None:
    client.send(build_frame(1, 1, method_frame(1, C.Basic.Qos(prefetch_count=1))[7:-1], end=0x00))
    client.expect_connection_close(501, 0, 0)
    bystander.check()


def test_frames_before_a_bad_frame_in_the_same_write_still_count(client: RawClient, bystander: Bystander) -> None:
    q = client.declare_queue(1, exclusive=False, auto_delete=False).queue
    client.send(publish_frames(1, "", q, b"before the bad frame") + build_frame(1, 1, b"\x00\x3c\x00\x0a", end=0x00))
    client.expect_connection_close(501, 0, 0)
    with RawClient.connect(client.sock.getpeername()[1]) as other:
        other.handshake()
        other.open_channel(1)
        got = other.get(1, q)
        assert got is not None and got[2] == b"before the bad frame"
        other.rpc(1, C.Queue.Delete(queue=q), C.Queue.DeleteOk)
    bystander.check()


def test_frame_larger_than_negotiated_frame_max(port: int, bystander: Bystander) -> None:
    with RawClient.connect(port) as c:
        c.handshake(frame_max=4096)
        c.open_channel(1)
        c.send(build_frame(3, 1, b"x" * 5000))
        c.expect_connection_close(501, 0, 0)
    bystander.check()


def test_unknown_frame_type(client: RawClient, bystander: Bystander) -> None:
    client.send(build_frame(9, 1, b"abc"))
    client.expect_connection_close(501, 0, 0)
    bystander.check()


# ---------------------------------------------------------------------- silence


@leveret_only
def test_truncated_frame_then_silence_during_handshake_times_out() -> None:
    with BrokerThread(Config(port=0, handshake_timeout=0.5)) as bt, RawClient.connect(bt.port) as c:
        c.send(PROTOCOL_HEADER)
        c.expect(C.Connection.Start, 0)
        c.send(method_frame(0, C.Connection.StartOk(mechanism="PLAIN", response="\0guest\0guest"))[:20])
        t0 = time.monotonic()
        no_close_frame(c.expect_socket_closed(5))
        assert 0.3 < time.monotonic() - t0 < 3


@pytest.mark.slow
def test_truncated_frame_then_silence_killed_by_heartbeat(port: int, bystander: Bystander) -> None:
    with RawClient.connect(port) as c:
        c.handshake(heartbeat=1)
        c.open_channel(1)
        c.send(method_frame(1, C.Basic.Qos(prefetch_count=1))[:9])
        t0 = time.monotonic()
        frames = c.expect_socket_closed(6)
        assert 1.5 <= time.monotonic() - t0 < 5
        assert any(isinstance(o, Heartbeat) for _, o in frames)
    bystander.check()


# ---------------------------------------------------------------------- channels: 504


def test_method_on_unopened_channel(port: int, bystander: Bystander) -> None:
    with RawClient.connect(port) as c:
        c.handshake()
        c.send_method(3, C.Queue.Declare(queue="x"))
        m = c.expect_connection_close(504, 50, 10)
        assert m.reply_text == "CHANNEL_ERROR - expected 'channel.open'"
        c.expect_socket_closed()
    bystander.check()


def test_second_channel_open(client: RawClient, bystander: Bystander) -> None:
    client.send_method(1, C.Channel.Open())
    m = client.expect_connection_close(504, 20, 10)
    assert m.reply_text == "CHANNEL_ERROR - second 'channel.open' seen"
    bystander.check()


def test_channel_max_limits_open_channels_not_numbers(port: int, bystander: Bystander) -> None:
    with RawClient.connect(port) as c:
        c.handshake(channel_max=2)
        c.open_channel(1)
        c.open_channel(60000)  # any number, as long as fewer than channel_max are open
        c.send_method(3, C.Channel.Open())
        m = c.expect_connection_close(530, 0, 0)
        assert "channel_max (2)" in m.reply_text
    bystander.check()


def test_channel_closed_then_number_reusable(client: RawClient) -> None:
    client.rpc(1, C.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), C.Channel.CloseOk)
    client.open_channel(1)
    assert client.declare_queue(1, exclusive=True).message_count == 0


def test_unsolicited_channel_close_ok(client: RawClient) -> None:
    client.send_method(1, C.Channel.CloseOk())
    client.expect_connection_close(503, 20, 41)


def test_channel_method_on_channel_zero(port: int) -> None:
    with RawClient.connect(port) as c:
        c.handshake()
        c.send_method(0, C.Queue.Declare(queue="x"))
        c.expect_connection_close(504, 50, 10)


def test_connection_method_on_a_channel(client: RawClient) -> None:
    client.send_method(1, C.Connection.Open())
    client.expect_connection_close(503, 10, 40)


@pytest.mark.parametrize("frame", [build_frame(8, 1, b""), content_frames(0, b"abc")], ids=["heartbeat", "content"])
def test_frame_on_wrong_channel(port: int, frame: bytes) -> None:
    with RawClient.connect(port) as c:
        c.handshake()
        c.send(frame)
        c.expect_connection_close(505, 0, 0)


# ---------------------------------------------------------------------- content: 505


@pytest.mark.parametrize("what", ["header", "body"])
def test_content_without_publish(client: RawClient, bystander: Bystander, what: str) -> None:
    client.send(content_frames(1, b"abc") if what == "header" else build_frame(3, 1, b"abc"))
    m = client.expect_connection_close(505, 0, 0)
    assert m.reply_text == "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
    bystander.check()


def test_method_while_content_header_expected(client: RawClient, bystander: Bystander) -> None:
    client.send(method_frame(1, C.Basic.Publish(exchange="", routing_key="q")))
    client.send_method(1, C.Basic.Qos(prefetch_count=1))
    m = client.expect_connection_close(505, 60, 40)
    assert "expected content header for class 60" in m.reply_text
    bystander.check()


def test_method_while_content_body_expected(client: RawClient, bystander: Bystander) -> None:
    frames = publish_frames(1, "", "q", b"abcdef")
    client.send(frames[: -(8 + 6)])  # publish + header, no body
    client.send_method(1, C.Basic.Qos(prefetch_count=1))
    m = client.expect_connection_close(505, 60, 40)
    assert m.reply_text == "UNEXPECTED_FRAME - expected content body, got non content body frame instead"
    bystander.check()


def test_content_header_for_another_class(client: RawClient) -> None:
    client.send(method_frame(1, C.Basic.Publish(exchange="", routing_key="q")))
    client.send(build_frame(2, 1, struct.pack(">HHQH", 50, 0, 0, 0)))
    m = client.expect_connection_close(505, 60, 40)
    assert "got one for class 50" in m.reply_text


def test_body_larger_than_declared_size_never_completes(client: RawClient, bystander: Bystander) -> None:
    """RabbitMQ keeps waiting for the rest of the body: nothing is enqueued, the other
    channels carry on, and the next method on that channel is a 505."""
    q = client.declare_queue(1, exclusive=True).queue
    client.open_channel(2)
    client.send(method_frame(1, C.Basic.Publish(exchange="", routing_key=q)))
    client.send(build_frame(2, 1, struct.pack(">HHQH", 60, 0, 3, 0)))
    client.send(build_frame(3, 1, b"ab") + build_frame(3, 1, b"cdef"))
    assert client.declare_queue(2, q, passive=True).message_count == 0
    client.send_method(1, C.Basic.Qos(prefetch_count=1))
    m = client.expect_connection_close(505, 60, 40)
    assert "expected content body" in m.reply_text
    bystander.check()


# ---------------------------------------------------------------------- undecodable methods


@pytest.mark.parametrize(
    "channel,ids", [(1, (60, 999)), (1, (77, 10)), (0, (10, 99)), (5, (60, 999))],
    ids=["unknown-method", "unknown-class", "channel-0", "unopened-channel"],
)
def test_unknown_class_or_method_drops_the_socket(port: int, bystander: Bystander, channel: int, ids: tuple[int, int]) -> None:
    """RabbitMQ cannot parse these and closes the socket without a connection.close."""
    with RawClient.connect(port) as c:
        c.handshake()
        c.open_channel(1)
        c.send(build_frame(1, channel, struct.pack(">HH", *ids)))
        no_close_frame(c.expect_socket_closed())
    bystander.check()


@pytest.mark.parametrize(
    "ids,args", [((50, 10), b"\x00\x00\x40abc"), ((60, 40), b"\x00\x00\x40abc"), ((60, 80), b"\x00\x00")],
    ids=["queue.declare", "basic.publish", "basic.ack"],
)
def test_malformed_method_arguments_are_frame_error(client: RawClient, bystander: Bystander, ids: tuple[int, int], args: bytes) -> None:
    client.send(build_frame(1, 1, struct.pack(">HH", *ids) + args))
    m = client.expect_connection_close(501, *ids)
    assert m.reply_text.startswith("FRAME_ERROR - ")
    bystander.check()


# ---------------------------------------------------------------------- not implemented: 540


def test_publish_immediate(client: RawClient, bystander: Bystander) -> None:
    client.send(method_frame(1, C.Basic.Publish(exchange="", routing_key="q", immediate=True)) + content_frames(1, b"x"))
    m = client.expect_connection_close(540, 60, 40)
    assert m.reply_text == "NOT_IMPLEMENTED - immediate=true"
    bystander.check()


def test_channel_flow(client: RawClient, bystander: Bystander) -> None:
    assert client.rpc(1, C.Channel.Flow(active=True), C.Channel.FlowOk).active is True
    client.send_method(1, C.Channel.Flow(active=False))
    m = client.expect_connection_close(540, 20, 20)
    assert m.reply_text == "NOT_IMPLEMENTED - active=false"
    bystander.check()


def test_qos_prefetch_size(client: RawClient) -> None:
    client.rpc(1, C.Basic.Qos(prefetch_count=10, global_=True), C.Basic.QosOk)
    client.send_method(1, C.Basic.Qos(prefetch_size=10))
    client.expect_connection_close(540, 60, 10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pamqp: basic.recover-async
@pytest.mark.parametrize("method,method_id", [(C.Basic.Recover, 110), (C.Basic.RecoverAsync, 100)])
def test_recover_without_requeue(client: RawClient, method: type, method_id: int) -> None:
    assert isinstance(client.rpc(1, C.Basic.Recover(requeue=True), C.Basic.RecoverOk), C.Basic.RecoverOk)
    client.send_method(1, method(requeue=False))
    m = client.expect_connection_close(540, 60, method_id)
    assert m.reply_text == "NOT_IMPLEMENTED - requeue=false"


# ---------------------------------------------------------------------- acks: 406 on the channel


def _three_unacked(c: RawClient) -> str:
    q = c.declare_queue(1, exclusive=True).queue
    for body in (b"a", b"b", b"c"):
        c.publish(1, "", q, body)
    for tag in (1, 2, 3):
        got = c.get(1, q, no_ack=False)
        assert got is not None and got[0].delivery_tag == tag
    return q


@pytest.mark.parametrize(
    "method,method_id",
    [(C.Basic.Ack(delivery_tag=5), 80), (C.Basic.Ack(delivery_tag=5, multiple=True), 80),
     (C.Basic.Nack(delivery_tag=5), 120), (C.Basic.Reject(delivery_tag=5), 90)],
    ids=["ack", "ack-multiple", "nack", "reject"],
)
def test_unknown_delivery_tag_closes_the_channel(client: RawClient, bystander: Bystander, method: object, method_id: int) -> None:
    client.send_method(1, method)
    m = client.expect_channel_close(1, 406, 60, method_id)
    assert m.reply_text == "PRECONDITION_FAILED - unknown delivery tag 5"
    client.open_channel(2)  # the connection survives
    assert client.declare_queue(2, exclusive=True).consumer_count == 0
    bystander.check()


def test_double_ack(client: RawClient) -> None:
    _three_unacked(client)
    client.send_method(1, C.Basic.Ack(delivery_tag=1))
    client.send_method(1, C.Basic.Ack(delivery_tag=1))
    m = client.expect_channel_close(1, 406, 60, 80)
    assert m.reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"


def test_ack_multiple_on_an_acked_tag(client: RawClient) -> None:
    _three_unacked(client)
    client.send_method(1, C.Basic.Ack(delivery_tag=2))
    client.send_method(1, C.Basic.Ack(delivery_tag=2, multiple=True))
    client.expect_channel_close(1, 406, 60, 80)


def test_ack_multiple_over_a_gap_settles_the_rest(client: RawClient) -> None:
    q = _three_unacked(client)
    client.send_method(1, C.Basic.Ack(delivery_tag=2))
    client.send_method(1, C.Basic.Ack(delivery_tag=3, multiple=True))
    client.rpc(1, C.Basic.Recover(requeue=True), C.Basic.RecoverOk)  # would requeue any left
    assert client.declare_queue(1, q, passive=True).message_count == 0
    assert client.get(1, q) is None


# ---------------------------------------------------------------------- consumers


def test_duplicate_consumer_tag_closes_the_connection(client: RawClient, bystander: Bystander) -> None:
    q = client.declare_queue(1, exclusive=True).queue
    client.rpc(1, C.Basic.Consume(queue=q, consumer_tag="t"), C.Basic.ConsumeOk)
    client.send_method(1, C.Basic.Consume(queue=q, consumer_tag="t"))
    m = client.expect_connection_close(530, 60, 20)
    assert m.reply_text == "NOT_ALLOWED - attempt to reuse consumer tag 't'"
    client.expect_socket_closed()
    bystander.check()


# ---------------------------------------------------------------------- handshake


def _login(c: RawClient, password: str, caps: dict[str, bool]) -> None:
    c.send(PROTOCOL_HEADER)
    c.expect(C.Connection.Start, 0)
    c.start_ok("guest", password, caps)


def test_login_failure_with_authentication_failure_close(port: int, bystander: Bystander) -> None:
    with RawClient.connect(port) as c:
        _login(c, "wrong", {"authentication_failure_close": True})
        m = c.expect_connection_close(403, 0, 0)
        assert m.reply_text.startswith("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN")
        c.expect_socket_closed()
    bystander.check()


def test_login_failure_without_capability_just_closes(port: int, bystander: Bystander) -> None:
    with RawClient.connect(port) as c:
        _login(c, "wrong", {})
        assert c.expect_socket_closed() == []
    bystander.check()


def test_unknown_vhost(port: int, bystander: Bystander) -> None:
    with RawClient.connect(port) as c:
        c.send(PROTOCOL_HEADER)
        c.expect(C.Connection.Start, 0)
        c.start_ok("guest", "guest")
        c.expect(C.Connection.Tune, 0)
        c.send_method(0, C.Connection.TuneOk(channel_max=10, frame_max=131072, heartbeat=0))
        c.send_method(0, C.Connection.Open(virtual_host="no-such-vhost"))
        m = c.expect_connection_close(530, 10, 40)
        assert m.reply_text == "NOT_ALLOWED - vhost no-such-vhost not found"
    bystander.check()


@pytest.mark.parametrize(
    "tune", [{"frame_max": 10_000_000}, {"frame_max": 1000}, {"frame_max": 0}, {"channel_max": 5000}, {"channel_max": 0}],
    ids=["frame_max-above", "frame_max-below-min", "frame_max-0", "channel_max-above", "channel_max-0"],
)
def test_tune_ok_outside_the_servers_limits_closes_the_socket(port: int, bystander: Bystander, tune: dict[str, int]) -> None:
    with RawClient.connect(port) as c:
        c.send(PROTOCOL_HEADER)
        c.expect(C.Connection.Start, 0)
        c.start_ok("guest", "guest")
        server = c.expect(C.Connection.Tune, 0)
        values = {"channel_max": server.channel_max, "frame_max": server.frame_max, "heartbeat": 0} | tune
        c.send_method(0, C.Connection.TuneOk(**values))
        c.send_method(0, C.Connection.Open(virtual_host="/"))
        no_close_frame(c.expect_socket_closed())
    bystander.check()


def test_wrong_method_instead_of_tune_ok_closes_the_socket(port: int) -> None:
    with RawClient.connect(port) as c:
        c.send(PROTOCOL_HEADER)
        c.expect(C.Connection.Start, 0)
        c.start_ok("guest", "guest")
        c.expect(C.Connection.Tune, 0)
        c.send_method(0, C.Connection.Open(virtual_host="/"))
        no_close_frame(c.expect_socket_closed())


@pytest.mark.parametrize(
    "channel,method,code,ids",
    [(1, C.Channel.Open(), 505, (0, 0)), (0, C.Queue.Declare(queue="x"), 504, (50, 10))],
    ids=["channel-open", "queue.declare-on-0"],
)
def test_method_before_connection_open(port: int, channel: int, method: object, code: int, ids: tuple[int, int]) -> None:
    with RawClient.connect(port) as c:
        c.send(PROTOCOL_HEADER)
        c.expect(C.Connection.Start, 0)
        c.start_ok("guest", "guest")
        c.expect(C.Connection.Tune, 0)
        c.send_method(0, C.Connection.TuneOk(channel_max=10, frame_max=131072, heartbeat=0))
        c.send_method(channel, method)
        c.expect_connection_close(code, *ids)


# ---------------------------------------------------------------------- heartbeats


@pytest.mark.slow
def test_silent_peer_is_disconnected_and_a_beating_peer_stays(port: int) -> None:
    with RawClient.connect(port) as silent, RawClient.connect(port) as beating:
        silent.handshake(heartbeat=1)
        beating.handshake(heartbeat=1)
        beating.open_channel(1)
        t0 = time.monotonic()
        closed_at = None
        heartbeats = 0
        while time.monotonic() - t0 < 6 and closed_at is None:
            beating.send(build_frame(8, 0, b""))
            try:
                while True:
                    _, obj = silent.read_frame(0.3)
                    heartbeats += isinstance(obj, Heartbeat)
            except TimeoutError:
                pass
            except Closed:
                closed_at = time.monotonic() - t0
        assert closed_at is not None, "a silent peer was not disconnected"
        assert 1.5 <= closed_at < 5  # about two intervals (RabbitMQ: ~3 s)
        assert heartbeats >= 1  # the server beats while the peer is silent
        # the peer that kept sending heartbeats is still fine
        assert beating.declare_queue(1, exclusive=True).queue.startswith("amq.gen-")


# ---------------------------------------------------------------------- incremental parser


def _stream(body_size: int) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    frames = [
        (1, 0, method_frame(0, C.Connection.TuneOk(channel_max=5, frame_max=131072, heartbeat=0))[7:-1]),
        (1, 3, method_frame(3, C.Basic.Publish(exchange="x", routing_key="k"))[7:-1]),
        (2, 3, struct.pack(">HHQH", 60, 0, body_size, 0x8000) + b"\x0atext/plain"),
        (3, 3, bytes(range(256)) * (body_size // 256) + b"z" * (body_size % 256)),
        (8, 0, b""),
        (3, 65535, b""),
    ]
    return b"".join(build_frame(*f) for f in frames), frames


def _whole(frames: list[tuple[int, int, bytes | memoryview]]) -> list[tuple[int, int, bytes]]:
    """The parser's output with each body frame returned in pieces put back together:
    pieces (FRAME_BODY_PART) of one frame come in a row, ending with its FRAME_BODY."""
    out: list[tuple[int, int, bytes]] = []
    part: list[bytes] = []
    part_ch = None
    for ftype, ch, payload in frames:
        if part_ch is not None:
            assert ch == part_ch and ftype in (FRAME_BODY_PART, 3), "a body frame's pieces are interrupted"
        if ftype == FRAME_BODY_PART:
            assert len(payload) > 0
            part.append(bytes(payload))
            part_ch = ch
            continue
        if part_ch is not None:
            out.append((3, ch, b"".join(part) + bytes(payload)))
            part, part_ch = [], None
            continue
        out.append((ftype, ch, bytes(payload)))
    assert part_ch is None, "a body frame's pieces are not finished"
    return out


def test_frame_parser_every_split_position() -> None:
    data, frames = _stream(700)
    assert _whole(FrameParser(131072).feed(data)) == frames
    for i in range(len(data) + 1):
        p = FrameParser(131072)
        assert _whole(p.feed(data[:i]) + p.feed(data[i:])) == frames, f"split at {i}"
        assert p.buffered == 0
    p = FrameParser(131072)
    assert _whole([f for i in range(len(data)) for f in p.feed(data[i : i + 1])]) == frames


def test_frame_parser_large_frame_in_pieces() -> None:
    data, frames = _stream(120_000)  # bigger than the parser's chunk-gathering threshold
    for i in (1, 6, 7, 8, 100, 65_536, 70_000, len(data) - 9, len(data) - 1):
        p = FrameParser(131072)
        assert _whole(p.feed(data[:i]) + p.feed(data[i:])) == frames, f"split at {i}"
    p = FrameParser(131072)
    out = []
    for i in range(0, len(data), 1000):
        out += p.feed(data[i : i + 1000])
    assert _whole(out) == frames and p.buffered == 0


def test_frame_parser_body_frames_are_views_of_the_read() -> None:
    """Large body frames are not copied out of the read, whole or cut by its end."""
    data, frames = _stream(120_000)
    got = FrameParser(131072).feed(data)
    assert [type(f[2]) for f in got if f[0] == 3] == [memoryview, bytes]  # (the empty one is bytes)
    at = data.index(frames[3][2][:64])  # a cut inside the body frame's payload
    p = FrameParser(131072)
    first, second = p.feed(data[: at + 5000]), p.feed(data[at + 5000 :])
    assert first[-1][0] == FRAME_BODY_PART and isinstance(first[-1][2], memoryview)
    assert second[0][0] == 3 and isinstance(second[0][2], memoryview)
    assert _whole(first + second) == frames


def test_frame_parser_whole_stream_every_split_of_large_body() -> None:
    """Three reads cutting a multi-frame body anywhere give the same frames."""
    body_frames = [(3, 1, bytes([i]) * 5000) for i in range(3)]
    frames = [(2, 1, struct.pack(">HHQH", 60, 0, 15000, 0))] + body_frames + [(8, 0, b"")]
    data = b"".join(build_frame(*f) for f in frames)
    for i in range(0, len(data) + 1, 7):
        for j in (i, i + 1, i + 2, i + 4999, i + 5008, len(data)):
            j = min(j, len(data))
            p = FrameParser(8192)
            got = p.feed(data[:i]) + p.feed(data[i:j]) + p.feed(data[j:])
            assert _whole(got) == frames, (i, j)


@pytest.mark.parametrize(
    "bad",
    [build_frame(1, 1, b"abcd", end=0), build_frame(7, 1, b"abcd"), build_frame(3, 1, b"x" * 4089)],
    ids=["frame-end", "type", "too-large"],
)
def test_frame_parser_errors_whatever_the_split(bad: bytes) -> None:
    good = build_frame(8, 0, b"")
    data = good + bad
    for i in range(len(data) + 1):
        p = FrameParser(4096)
        with pytest.raises(FrameError):
            p.feed(data[:i])
            p.feed(data[i:])


def test_publish_sent_one_byte_per_write(client: RawClient, bystander: Bystander) -> None:
    q = client.declare_queue(1, exclusive=True).queue
    body = bytes(range(256)) * 4
    data = publish_frames(1, "", q, body, content_type="application/x-test", headers={"k": "v"})
    for i in range(len(data)):
        client.send(data[i : i + 1])
    got = client.get(1, q)
    assert got is not None
    ok, header, received = got
    assert received == body and isinstance(header, ContentHeader)
    assert header.properties.content_type == "application/x-test"
    assert header.properties.headers == {"k": "v"}
    assert ok.message_count == 0
    bystander.check()


# ---------------------------------------------------------------------- broker shutdown


@leveret_only
def test_broker_stop_sends_connection_forced() -> None:
    bt = BrokerThread(Config(port=0)).start()
    try:
        with RawClient.connect(bt.port) as c:
            c.handshake()
            c.open_channel(1)
            stopper = threading.Thread(target=bt.stop)
            stopper.start()
            m = c.expect_connection_close(320, 0, 0)
            assert m.reply_text == "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
            c.expect_socket_closed()
            stopper.join(5)
            assert not stopper.is_alive()
    finally:
        bt.stop()


@leveret_only
def test_sigterm_sends_connection_forced_and_exits() -> None:
    with BrokerProcess() as bp:
        with RawClient.connect(bp.port) as c:
            c.handshake()
            assert bp.proc is not None
            bp.proc.send_signal(signal.SIGTERM)
            c.expect_connection_close(320, 0, 0)
            c.expect_socket_closed()
        assert bp.proc.wait(10) == 0


# ---------------------------------------------------------------------- content frames and start-ok


def test_channel_close_while_content_expected_is_unexpected_frame(broker_thread: BrokerThread) -> None:
    # RabbitMQ 3.10: a channel.close in the middle of a publish's content is a 505
    with RawClient.connect(broker_thread.port) as c:
        c.handshake()
        c.open_channel(1)
        c.send(
            method_frame(1, C.Basic.Publish(exchange="", routing_key="x"))
            + pframe.marshal(pheader.ContentHeader(0, 10, C.Basic.Properties()), 1)
            + method_frame(1, C.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        )
        c.expect_connection_close(505, 60, 40)


@pytest.mark.parametrize("what", ["header", "body"])
def test_content_frame_on_a_channel_never_opened(port: int, what: str) -> None:
    """RabbitMQ: 505 UNEXPECTED_FRAME, as for content without a publish (the issue
    expected 504; RabbitMQ 3.10 sends 505)."""
    with RawClient.connect(port) as c:
        c.handshake()
        c.send(content_frames(5, b"abc") if what == "header" else build_frame(3, 5, b"abc"))
        m = c.expect_connection_close(505, 0, 0)
        assert m.reply_text == "UNEXPECTED_FRAME - expected method frame, got non method frame instead"


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

