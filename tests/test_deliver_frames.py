"""basic.deliver and its content frames (``methods.Deliveries``, one per channel): a
delivery like the last one (same consumer tag, exchange and routing key, header, body size)
reuses the bytes around the delivery tag.  Whatever the sequence, the bytes are those of
``deliver_frame`` followed by ``content_frames``, and a consumer sees each delivery as
itself."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import pytest
from pamqp import commands as C
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from leveret.broker import Config
from leveret.protocol.body import Body
from leveret.protocol.methods import Deliveries, content_frames, deliver_frame
from leveret.testing import BrokerThread
from tests.rawamqp import RawClient, method_frame
from tests.rawamqp import content_frames as client_content_frames


def test_deliveries_give_the_bytes_of_deliver_frame_and_content_frames() -> None:
    rnd = random.Random(7)
    ctags = [b"\x03abc", b"\x1famq.ctag-" + b"x" * 21]
    ex_rks = [b"\x00\x01q", b"\x05names\x03a.b"]
    headers = [struct.pack(">HHQH", 60, 0, 0, 0), struct.pack(">HHQH", 60, 0, 0, 0x8000) + b"\x0atext/plain"]
    for ch in (1, 7):
        d = Deliveries(ch)
        tag = 0
        for i in range(3000):
            # mostly runs of like deliveries, with every field changing now and then
            if i == 0 or rnd.random() < 0.3:
                ctag, ex_rk, header = rnd.choice(ctags), rnd.choice(ex_rks), rnd.choice(headers)
                size = rnd.choice([0, 1, 1024, 4088, 4089, 200_000])
                frame_max = rnd.choice([4096, 131072])
                data = rnd.randbytes(size)
                body: bytes | Body = data
                if size > 2 and rnd.random() < 0.3:
                    cut = rnd.randrange(1, size)
                    body = Body((memoryview(data)[:cut], data[cut:]), size)
            tag += rnd.choice([1, 1, 1, 1000, 2**40])
            redelivered = rnd.random() < 0.2
            got = d.frames(ctag, tag, redelivered, ex_rk, header, body, frame_max)
            want = content_frames(ch, header, body, frame_max, deliver_frame(ch, ctag, tag, redelivered, ex_rk))
            assert b"".join(bytes(p) for p in got) == b"".join(bytes(p) for p in want)


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerThread]:
    with BrokerThread(Config(port=0)) as b:
        yield b


def test_consumers_on_one_channel_each_get_their_own_deliveries(broker: BrokerThread) -> None:
    """Three no-ack consumers on one channel (two taking turns on one queue), fed runs of
    like messages and changes (routing key, a property, the size) in one write: every
    delivery carries its own consumer tag, routing key, delivery tag (1, 2, 3, ... on the
    channel), properties and body."""
    with RawClient.connect(broker.port) as c:
        c.handshake()
        c.open_channel(1)
        qa = c.declare_queue(1, exclusive=True).queue
        qb = c.declare_queue(1, exclusive=True).queue
        c.rpc(1, C.Basic.Consume(queue=qa, consumer_tag="ctag-a", no_ack=True), C.Basic.ConsumeOk)
        c.rpc(1, C.Basic.Consume(queue=qa, consumer_tag="ctag-A", no_ack=True), C.Basic.ConsumeOk)
        c.rpc(1, C.Basic.Consume(queue=qb, consumer_tag="the-b-consumer", no_ack=True), C.Basic.ConsumeOk)
        sent = []
        for i in range(60):
            q = qa if (i // 7) % 2 == 0 else qb
            props = {"content_type": "text/plain"} if i % 11 == 5 else {}
            body = (b"%d:" % i) * (1 if i % 13 else 300)
            sent.append((q, body, props.get("content_type")))
        c.send(
            b"".join(
                method_frame(1, C.Basic.Publish(exchange="", routing_key=q)) + client_content_frames(1, body, **(
                    {"content_type": ct} if ct else {}))
                for q, body, ct in sent
            )
        )
        got = []
        for _ in sent:
            deliver = c.expect(C.Basic.Deliver, 1)
            header = c.expect(ContentHeader, 1)
            body = b""
            while len(body) < header.body_size:
                body += c.expect(ContentBody, 1).value
            got.append((deliver, header, body))
        a_tags = []
        for n, ((q, body, ct), (deliver, header, got_body)) in enumerate(zip(sent, got, strict=True), 1):
            assert deliver.delivery_tag == n and not deliver.redelivered
            assert deliver.routing_key == q and deliver.exchange == ""
            if q == qa:
                a_tags.append(deliver.consumer_tag)
            else:
                assert deliver.consumer_tag == "the-b-consumer"
            assert (got_body, header.properties.content_type) == (body, ct)
        # qa's two consumers take turns: consecutive like deliveries with another consumer tag
        assert set(a_tags) == {"ctag-a", "ctag-A"}
        assert all(x != y for x, y in zip(a_tags, a_tags[1:], strict=False)), a_tags
