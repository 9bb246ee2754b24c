"""A publish whose three frames (method, content header, one body frame) arrive in one read
is taken in one step (``PublishAssembly.whole``); any other arrival goes frame by frame.
Both must give the same outcome, errors included: every case here is sent once with all
frames in one write and once a frame per write.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import pytest
from pamqp import commands as C

from leveret.broker import Config
from leveret.testing import BrokerThread
from tests.rawamqp import RawClient, build_frame, content_frames, method_frame

ARRIVALS = ["one-read", "frame-by-frame"]


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerThread]:
    with BrokerThread(Config(port=0, max_message_size=4096)) as b:
        yield b


@pytest.fixture
def client(broker: BrokerThread) -> Iterator[RawClient]:
    with RawClient.connect(broker.port) as c:
        c.handshake()
        c.open_channel(1)
        yield c


def send(client: RawClient, frames: list[bytes], arrival: str) -> None:
    if arrival == "one-read":
        client.send(b"".join(frames))
        return
    for f in frames:
        client.send(f)
        time.sleep(0.02)  # (TCP_NODELAY: a read per frame)


def header(class_id: int, size: int) -> bytes:
    return build_frame(2, 1, struct.pack(">HHQH", class_id, 0, size, 0))


def publish(rk: str, **kw: bool) -> bytes:
    return method_frame(1, C.Basic.Publish(exchange="", routing_key=rk, **kw))


@pytest.mark.parametrize("arrival", ARRIVALS)
def test_immediate_is_540(client: RawClient, arrival: str) -> None:
    send(client, [publish("q", immediate=True), header(60, 1), build_frame(3, 1, b"x")], arrival)
    m = client.expect_connection_close(540, 60, 40)
    assert m.reply_text == "NOT_IMPLEMENTED - immediate=true"


@pytest.mark.parametrize("arrival", ARRIVALS)
def test_header_of_another_class_is_505(client: RawClient, arrival: str) -> None:
    send(client, [publish("q"), header(50, 1), build_frame(3, 1, b"x")], arrival)
    m = client.expect_connection_close(505, 60, 40)
    assert m.reply_text == "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead"


@pytest.mark.parametrize("arrival", ARRIVALS)
def test_body_in_two_frames_arrives_whole(client: RawClient, arrival: str) -> None:
    q = client.declare_queue(1, exclusive=True).queue
    send(client, [publish(q), header(60, 6), build_frame(3, 1, b"abc"), build_frame(3, 1, b"def")], arrival)
    got = client.get(1, q)
    assert got is not None and got[2] == b"abcdef"


@pytest.mark.parametrize("arrival", ARRIVALS)
def test_body_frame_longer_than_announced_completes_nothing(client: RawClient, arrival: str) -> None:
    q = client.declare_queue(1, exclusive=True).queue
    send(client, [publish(q), header(60, 3), build_frame(3, 1, b"abcdef")], arrival)
    client.open_channel(2)
    assert client.declare_queue(2, q, passive=True).message_count == 0
    client.send_method(1, C.Basic.Qos(prefetch_count=1))
    m = client.expect_connection_close(505, 60, 40)
    assert m.reply_text == "UNEXPECTED_FRAME - expected content body, got non content body frame instead"


@pytest.mark.parametrize("arrival", ARRIVALS)
def test_empty_body_then_a_body_frame_is_505(client: RawClient, arrival: str) -> None:
    """A header announcing 0 bytes completes the message: a body frame after it is a frame
    out of place (the message itself was published)."""
    q = client.declare_queue(1, exclusive=True).queue
    send(client, [publish(q), header(60, 0), build_frame(3, 1, b"")], arrival)
    m = client.expect_connection_close(505, 0, 0)
    assert m.reply_text == "UNEXPECTED_FRAME - expected method frame, got non method frame instead"


@pytest.mark.parametrize("arrival", ARRIVALS)
def test_body_over_max_message_size_is_406(client: RawClient, broker: BrokerThread, arrival: str) -> None:
    body = b"x" * 5000
    send(client, [publish("q"), content_frames(1, body)], arrival)
    m = client.expect_channel_close(1, 406, 60, 40)
    assert m.reply_text == "PRECONDITION_FAILED - message size 5000 is larger than configured max size 4096"


@pytest.mark.parametrize("arrival", ARRIVALS)
def test_content_for_another_channel_in_between_is_an_error(client: RawClient, arrival: str) -> None:
    """Header and body must follow their publish on its channel: a header on channel 2
    (never opened) between them is RabbitMQ's 505 on the connection."""
    send(client, [publish("q"), build_frame(2, 2, struct.pack(">HHQH", 60, 0, 1, 0)), build_frame(3, 1, b"x")], arrival)
    m = client.expect_connection_close(505, 0, 0)
    assert m.reply_text == "UNEXPECTED_FRAME - expected method frame, got non method frame instead"


def test_many_routing_keys_route_by_their_own_names(client: RawClient) -> None:
    """The decoded names of publishes are cached (``message.NAMES``, a few hundred):
    past the cache's size, and with non-ASCII names, every message still goes where its
    own exchange and routing key say, and is delivered with them."""
    client.rpc(1, C.Exchange.Declare(exchange="names", exchange_type="topic", auto_delete=True), C.Exchange.DeclareOk)
    qa = client.declare_queue(1, exclusive=True).queue
    qb = client.declare_queue(1, exclusive=True).queue
    client.rpc(1, C.Queue.Bind(queue=qa, exchange="names", routing_key="a.#"), C.Queue.BindOk)
    client.rpc(1, C.Queue.Bind(queue=qb, exchange="names", routing_key="b.#"), C.Queue.BindOk)
    keys = [f"{'a' if i % 3 else 'b'}.{i}.é" for i in range(700)]
    client.send(
        b"".join(
            method_frame(1, C.Basic.Publish(exchange="names", routing_key=k)) + content_frames(1, k.encode())
            for k in keys
        )
    )
    for q, want in ((qa, [k for k in keys if k[0] == "a"]), (qb, [k for k in keys if k[0] == "b"])):
        got = []
        while (m := client.get(1, q)) is not None:
            method, _, body = m
            assert method.exchange == "names" and method.routing_key == body.decode()
            got.append(body.decode())
        assert got == want


@pytest.mark.parametrize("arrival", ARRIVALS)
def test_repeated_publishes_each_keep_their_own_flags_headers_and_sizes(broker: BrokerThread, arrival: str) -> None:
    """A publisher's publishes repeat the same method and header bytes, and the broker
    decodes a repeat once (``PublishAssembly.whole``): a publish that differs only in its
    mandatory or immediate bit, a header that differs only in the size or a property,
    still counts as itself (and a header announcing a body in two frames is not taken
    for the last one whose size its first frame matches).  Sent in one write: the returns are exactly the mandatory
    unroutable ones, the queue holds its messages in order with their own sizes and
    properties, and the immediate one at the end closes the connection with 540 after
    the others were handled."""
    q = f"repeat-{arrival}"
    with RawClient.connect(broker.port) as c:
        c.handshake()
        c.open_channel(1)
        c.declare_queue(1, q)
        frames = []
        for rk, body, kw, props in (
            (q, b"a1", {}, {}),
            (q, b"a1", {}, {}),
            (q, b"a22", {}, {}),
            (q, b"am", {"mandatory": True}, {}),
            ("nowhere", b"r1", {"mandatory": True}, {}),
            ("nowhere", b"lost", {}, {}),
            ("nowhere", b"r2", {"mandatory": True}, {}),
            (q, b"a3", {}, {"content_type": "text/plain"}),
            (q, b"a1", {}, {}),
        ):
            frames += [publish(rk, **kw), content_frames(1, body, **props)]
        # the same publish again, its header announcing 3 bytes, which come in two body frames
        frames += [publish(q), header(60, 3), build_frame(3, 1, b"xy"), build_frame(3, 1, b"z")]
        frames += [publish(q, immediate=True), content_frames(1, b"no")]
        send(c, frames, arrival)
        returned = []
        while True:
            _, m = c.read_until(lambda ch, o: isinstance(o, C.Basic.Return | C.Connection.Close))
            if isinstance(m, C.Connection.Close):
                assert (m.reply_code, m.class_id, m.method_id) == (540, 60, 40)
                c.send_method(0, C.Connection.CloseOk())
                break
            assert (m.reply_code, m.routing_key) == (312, "nowhere")
            returned.append(c.read_content(1)[2])
        assert returned == [b"r1", b"r2"]
    with RawClient.connect(broker.port) as c:
        c.handshake()
        c.open_channel(1)
        got = []
        while (m := c.get(1, q)) is not None:
            _, head, body = m
            assert head.body_size == len(body)
            got.append((body, head.properties.content_type))
        assert got == [(b"a1", None), (b"a1", None), (b"a22", None), (b"am", None), (b"a3", "text/plain"), (b"a1", None), (b"xyz", None)]
        c.rpc(1, C.Queue.Delete(queue=q), C.Queue.DeleteOk)
