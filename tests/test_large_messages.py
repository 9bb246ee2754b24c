"""Large messages: bodies of many frames arrive in pieces of many reads and are kept as
those pieces (``leveret.protocol.body.Body``), not copied; they must come out byte for byte
whatever the publisher's and the consumer's frame_max, through basic.deliver, basic.get,
dead lettering, the queue log (written from the pieces, read back as views), paging to the
overflow log or the durable log and back, a restart, and the management API's get."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from pamqp import commands as C
from rawamqp import RawClient, build_frame, method_frame

from leveret.broker import Config
from leveret.protocol.body import Body
from leveret.protocol.constants import FRAME_BODY_PART
from leveret.protocol.frames import FrameParser
from leveret.protocol.methods import content_frames
from leveret.testing import BrokerThread
from tests.polling import wait_until

MiB = 1 << 20


@pytest.fixture(scope="module")
def bt() -> Iterator[BrokerThread]:
    with BrokerThread(Config(port=0)) as b:
        yield b


def _connect(port: int, frame_max: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, frame_max=frame_max))


def _bodies() -> list[bytes]:
    rnd = random.Random(7)
    sizes = [MiB, 5 * MiB, 1, 0, 4089, 131064, 131065, MiB + 3, 300_000]
    return [rnd.randbytes(n) for n in sizes]


@pytest.mark.parametrize(
    "publisher_frame_max,consumer_frame_max",
    [(131072, 4096), (4096, 131072), (8192, 8192), (131072, 131072)],
    ids=["131072-to-4096", "4096-to-131072", "8192-both", "131072-both"],
)
def test_large_bodies_round_trip_byte_exact(bt: BrokerThread, publisher_frame_max: int, consumer_frame_max: int) -> None:
    bodies = _bodies()
    pub = _connect(bt.port, publisher_frame_max)
    con = _connect(bt.port, consumer_frame_max)
    try:
        pch = pub.channel()
        q = pch.queue_declare("").method.queue
        for body in bodies:
            pch.basic_publish("", q, body, pika.BasicProperties(content_type="application/octet-stream"))
        cch = con.channel()
        got = []
        for method, props, body in cch.consume(q, inactivity_timeout=10):
            assert method is not None, "timed out"
            assert props.content_type == "application/octet-stream"
            got.append(body)
            cch.basic_ack(method.delivery_tag)
            if len(got) == len(bodies):
                break
        cch.cancel()
        assert [len(b) for b in got] == [len(b) for b in bodies]
        assert got == bodies
        # basic.get, and the same bodies again on the way back (published by the consumer)
        for body in bodies:
            cch.basic_publish("", q, body)
        cch.queue_declare(q, passive=True)  # a round trip: the broker has queued them all
        for body in bodies:
            method, _, got_body = pch.basic_get(q, auto_ack=True)
            assert method is not None and got_body == body
        pch.queue_delete(q)
    finally:
        pub.close()
        con.close()


def test_body_kept_as_the_reads_not_copied(bt: BrokerThread) -> None:
    """A 1 MiB body sent with frame_max 131072 is queued as a Body of views of the reads."""
    body = os.urandom(MiB)
    with _connect(bt.port, 131072) as conn:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, body)
        ch.queue_declare(q, passive=True)  # a round trip: the message is queued

        def head() -> object:
            assert bt.broker is not None
            return bt.broker.vhosts["/"].queues[q].store.messages[0][1].body

        kept = bt.call(head)
        assert isinstance(kept, Body) and len(kept) == MiB
        viewed = sum(len(p) for p in kept.parts if isinstance(p, memoryview))
        # (how the kernel splits the reads varies with load; pieces much smaller than
        # their read are copied on purpose, so only most of the body is a view)
        assert viewed >= 0.5 * MiB, [(type(p).__name__, len(p)) for p in kept.parts]
        assert bytes(kept) == body
        method, _, got = ch.basic_get(q, auto_ack=True)
        assert got == body


def test_interleaved_channels_odd_writes(bt: BrokerThread) -> None:
    """Two channels' bodies interleaved frame by frame, written in odd-sized pieces."""
    rnd = random.Random(3)
    bodies = {1: rnd.randbytes(3 * MiB + 17), 2: rnd.randbytes(2 * MiB + 5)}
    with RawClient.connect(bt.port, timeout=30) as c:
        c.handshake()
        q = None
        for ch in bodies:
            c.open_channel(ch)
        q = c.declare_queue(1, exclusive=True).queue
        frames: dict[int, list[bytes]] = {}
        for ch, body in bodies.items():
            pub = method_frame(ch, C.Basic.Publish(exchange="", routing_key=q))
            header = build_frame(2, ch, struct.pack(">HHQH", 60, 0, len(body), 0))
            chunk = c.frame_max - 8
            frames[ch] = [pub, header] + [build_frame(3, ch, body[i : i + chunk]) for i in range(0, len(body), chunk)]
        stream = []
        a, b = frames[1], frames[2]
        for i in range(max(len(a), len(b))):
            stream += a[i : i + 1] + b[i : i + 1]
        data = b"".join(stream)
        pos = 0
        while pos < len(data):
            n = rnd.choice([1, 7, 8, 999, 65_536, 100_003, 262_144])
            c.send(data[pos : pos + n])
            pos += n
        got = []
        for _ in bodies:
            r = c.get(1, q)
            assert r is not None
            got.append(r[2])
        assert sorted(got, key=len) == sorted(bodies.values(), key=len)


def test_dead_lettered_large_body(bt: BrokerThread) -> None:
    body = os.urandom(2 * MiB + 1)
    with _connect(bt.port, 131072) as conn:
        ch = conn.channel()
        dlq = ch.queue_declare("", exclusive=True).method.queue
        q = ch.queue_declare(
            "", exclusive=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
        ).method.queue
        ch.basic_publish("", q, body)
        method, _, got = ch.basic_get(q)
        assert got == body
        ch.basic_reject(method.delivery_tag, requeue=False)
        ch.queue_declare(dlq, passive=True)
        method, props, got = ch.basic_get(dlq, auto_ack=True)
        assert method is not None and got == body
        assert props.headers["x-death"][0]["reason"] == "rejected"


def test_persistent_large_body_survives_restart(tmp_path: Path) -> None:
    bodies = [os.urandom(MiB), os.urandom(3 * MiB + 1), b"small"]
    config = Config(port=0, data_dir=str(tmp_path / "data"))
    with BrokerThread(config) as b:
        with _connect(b.port, 131072) as conn:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare("big", durable=True)
            for body in bodies:
                ch.basic_publish("", "big", body, pika.BasicProperties(delivery_mode=2))
    with BrokerThread(Config(port=0, data_dir=str(tmp_path / "data"))) as b:
        with _connect(b.port, 4096) as conn:
            ch = conn.channel()
            got = []
            for _ in bodies:
                method, _, body = ch.basic_get("big", auto_ack=True)
                assert method is not None
                got.append(body)
            assert got == bodies


def _sizes_paged() -> list[bytes]:
    # 64 KiB, 1 MiB, 8 MiB and sizes that split frames and reads at odd places
    rnd = random.Random(21)
    sizes = [64 << 10, MiB, 8 * MiB, (64 << 10) + 1, 131064 * 3 + 7, MiB - 1, 4089, 300_001, 17]
    return [rnd.randbytes(n) for n in sizes]


def _paged(b: BrokerThread, queue: str) -> int:
    def count() -> int:
        assert b.broker is not None
        s = b.broker.vhosts["/"].queues[queue].store
        return len(s.tail) - s.tail_start

    return b.call(count)


def _consume_all(ch: pika.adapters.blocking_connection.BlockingChannel, q: str, n: int) -> list[bytes]:
    ch.basic_qos(prefetch_count=3)
    got = []
    for method, _, body in ch.consume(q, inactivity_timeout=30):
        assert method is not None, f"timed out after {len(got)}"
        got.append(body)
        ch.basic_ack(method.delivery_tag)
        if len(got) == n:
            break
    ch.cancel()
    return got


@pytest.mark.slow
@pytest.mark.parametrize("frame_max", [4096, 131072])
def test_paged_large_bodies_round_trip_byte_exact(tmp_path: Path, frame_max: int) -> None:
    """A small memory budget: transient large bodies page to the overflow log, persistent
    ones to the durable queue's log (written there from their pieces, read back as views);
    both come back byte for byte by consume and basic.get, the durable ones after a restart."""
    bodies = _sizes_paged()
    rounds = 3
    config = Config(port=0, data_dir=str(tmp_path / "data"), memory_budget=2 << 20)
    with BrokerThread(config) as b:
        with _connect(b.port, frame_max) as pub, _connect(b.port, 131072 if frame_max == 4096 else 4096) as con:
            pch = pub.channel()
            pch.queue_declare("paged-t")
            pch.queue_declare("paged-d", durable=True)
            for _ in range(rounds):
                for body in bodies:
                    pch.basic_publish("", "paged-t", body)
                    pch.basic_publish("", "paged-d", body, pika.BasicProperties(delivery_mode=2))
            assert pch.queue_declare("paged-t", passive=True).method.message_count == rounds * len(bodies)
            assert _paged(b, "paged-t") > 0 and _paged(b, "paged-d") > 0
            cch = con.channel()
            assert _consume_all(cch, "paged-t", rounds * len(bodies)) == bodies * rounds
            # the durable queue: half by basic.get (the rest stays, paged, over a restart)
            for body in bodies:
                method, _, got = cch.basic_get("paged-d", auto_ack=True)
                assert method is not None and got == body
    with BrokerThread(Config(port=0, data_dir=str(tmp_path / "data"), memory_budget=2 << 20)) as b:
        with _connect(b.port, frame_max) as con:
            cch = con.channel()
            assert _consume_all(cch, "paged-d", (rounds - 1) * len(bodies)) == bodies * (rounds - 1)


def test_paged_large_bodies_are_read_back_as_views_a_few_at_a_time(tmp_path: Path) -> None:
    """1 MiB bodies paged to the overflow log come back as views of the reads of the log
    (a Body, not a copy), and only a few MiB of them at a time, not a whole batch."""
    n = 40
    bodies = [bytes([i]) * MiB for i in range(n)]
    with BrokerThread(Config(port=0, data_dir=str(tmp_path / "data"), memory_budget=2 << 20)) as b:
        with _connect(b.port, 131072) as conn:
            ch = conn.channel()
            ch.queue_declare("paged-views")
            for body in bodies:
                ch.basic_publish("", "paged-views", body)
            ch.queue_declare("paged-views", passive=True)
            assert _paged(b, "paged-views") > n // 2

            def in_ram() -> tuple[int, list[Body | bytes]]:
                assert b.broker is not None
                s = b.broker.vhosts["/"].queues["paged-views"].store
                return s.ready_bytes, [e[1].body for e in s.messages]

            got = []
            most = views = 0
            while True:
                method, _, body = ch.basic_get("paged-views", auto_ack=True)
                if method is None:
                    break
                got.append(body)
                ready, kept = b.call(in_ram)
                most = max(most, ready)
                views += sum(isinstance(k, Body) and isinstance(k.parts[0], memoryview) for k in kept)
                assert [bytes(k) for k in kept] == bodies[len(got) : len(got) + len(kept)]
            assert got == bodies
            # a batch: PAGE_BATCH_BYTES (16 MiB) and the last chunk of ~4 MiB that passed it
            # (before: all 37 that were paged, as one chunk was 256 records whatever their size)
            assert most <= 24 * MiB, most
            assert views >= n // 2, views


def test_large_bodies_through_the_http_api_get(tmp_path: Path) -> None:
    """The management API's get returns a large body (in pieces, or paged and read back
    as a view) whole: base64, byte for byte."""
    import base64

    from tests.httpapi import Api

    rnd = random.Random(4)
    bodies = [rnd.randbytes(n) for n in (64 << 10, MiB + 5, 3 * MiB)]
    config = Config(port=0, http_port=0, data_dir=str(tmp_path / "data"), memory_budget=2 << 20)
    with BrokerThread(config) as b, _connect(b.port, 4096) as conn:
        assert b.broker is not None
        ch = conn.channel()
        ch.queue_declare("api-big")
        for body in bodies * 2:
            ch.basic_publish("", "api-big", body)
        ch.queue_declare("api-big", passive=True)
        assert _paged(b, "api-big") > 0
        api = Api("127.0.0.1", b.broker.http_port)
        status, got = api.call("POST", "/queues/%2F/api-big/get",
                               {"count": 6, "ackmode": "ack_requeue_false", "encoding": "base64"})
        assert status == 200, got
        assert [base64.b64decode(m["payload"]) for m in got] == bodies * 2
        assert [m["payload_bytes"] for m in got] == [len(x) for x in bodies * 2]


@pytest.mark.slow
def test_a_128_mib_body_round_trips_at_the_default_limit(tmp_path: Path) -> None:
    """RabbitMQ's default max_message_size, 128 MiB, is Leveret's: a body of exactly that
    size is taken, kept as its pieces, persisted into a durable queue and delivered byte
    for byte; one byte more is refused with 406."""
    body = random.Random(128).randbytes(128 * MiB)
    with BrokerThread(Config(port=0, data_dir=str(tmp_path / "data"))) as b:
        with _connect(b.port, 131072) as conn:
            ch = conn.channel()
            ch.queue_declare("huge", durable=True)
            ch.basic_publish("", "huge", body, pika.BasicProperties(delivery_mode=2))
            method, _, got = ch.basic_get("huge", auto_ack=True)
            assert method is not None and got == body
            del got
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
                ch.basic_publish("", "huge", body + b"!")
                ch.queue_declare("huge", passive=True)
            assert exc.value.reply_code == 406


# ---------------------------------------------------------------------- units


def _publish_stream(body: bytes, frame_max: int, queue: str = "q") -> bytes:
    header = struct.pack(">HHQH", 60, 0, len(body), 0)
    out = content_frames(1, header, body, frame_max)
    return method_frame(1, C.Basic.Publish(exchange="", routing_key=queue)) + b"".join(bytes(p) for p in out)


def test_content_frames_of_a_body_in_pieces_match_the_bytes() -> None:
    rnd = random.Random(11)
    for _ in range(300):
        size = rnd.choice([1, 100, 4088, 4089, 9000, 131064, 131065, 400_000])
        data = rnd.randbytes(size)
        cuts = sorted(rnd.sample(range(1, size), min(size - 1, rnd.randint(0, 5)))) if size > 1 else []
        bounds = [0, *cuts, size]
        parts = tuple(memoryview(data)[x:y] if rnd.random() < 0.5 else data[x:y] for x, y in zip(bounds, bounds[1:], strict=False))
        frame_max = rnd.choice([4096, 8192, 131072])
        header = struct.pack(">HHQH", 60, 0, size, 0)
        pieces = content_frames(1, header, Body(parts, size), frame_max)
        assert b"".join(bytes(p) for p in pieces) == b"".join(bytes(p) for p in content_frames(1, header, data, frame_max))


def test_parser_pieces_of_a_large_body_are_views() -> None:
    body = os.urandom(MiB)
    data = _publish_stream(body, 131072)
    p = FrameParser(131072)
    frames = []
    for i in range(0, len(data), 256_000):
        frames += p.feed(data[i : i + 256_000])
    pieces = [f for f in frames if f[0] in (3, FRAME_BODY_PART)]
    # (the last frame, 64 bytes, is small enough to be copied)
    assert all(isinstance(f[2], memoryview) for f in pieces if len(f[2]) >= 4096 or f[0] == FRAME_BODY_PART)
    assert b"".join(bytes(f[2]) for f in pieces) == body


# ---------------------------------------------------------------------- flow control


@pytest.mark.slow
def test_large_messages_engage_flow_control_by_bytes() -> None:
    """A publisher of 256 KiB messages outrunning a lagging consumer is held once the
    backlog passes FLOW_BYTES, long before FLOW_LEN messages (or the memory alarm), and
    gets everything through once the consumer catches up."""
    import threading
    import time

    from leveret.broker.core.flow import CREDIT_INITIAL, FLOW_BYTES, FLOW_LEN

    size, n = 256 * 1024, 1000  # 250 MiB in all
    assert FLOW_BYTES // size + CREDIT_INITIAL < n < FLOW_LEN
    with BrokerThread(Config(port=0, flow_cpu=0)) as b:
        assert b.broker is not None
        broker = b.broker
        pace, got, stop, done = [0.02], [0], threading.Event(), threading.Event()

        def consume() -> None:
            conn = _connect(b.port, 131072)
            ch = conn.channel()
            ch.queue_declare("big-flow")
            ch.basic_qos(prefetch_count=2)

            def on_msg(ch: object, method: object, props: object, body: bytes) -> None:
                assert len(body) == size
                got[0] += 1
                if pace[0]:
                    time.sleep(pace[0])
                ch.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

            ch.basic_consume("big-flow", on_msg)
            while not stop.is_set():
                conn.process_data_events(0.05)
            conn.close()

        def publish() -> None:
            with RawClient.connect(b.port, timeout=60) as raw:
                raw.handshake()
                raw.open_channel(1)
                one = _publish_stream(b"b" * size, raw.frame_max, "big-flow")
                for _ in range(n):
                    raw.send(one)
                raw.rpc(1, C.Queue.Declare(queue="big-flow", passive=True), C.Queue.DeclareOk)
            done.set()

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        wait_until(lambda: broker.vhosts["/"].queues.get("big-flow") and broker.vhosts["/"].queues["big-flow"].consumers,
                   10, what="the consumer on big-flow")
        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        q = broker.vhosts["/"].queues["big-flow"]
        saw_flow, peak = False, 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not done.is_set():
            saw_flow = saw_flow or bool(broker.in_flow)
            peak = max(peak, q.store.ready_bytes)
            time.sleep(0.005)
        assert saw_flow, "the publisher never waited for credit"
        assert not done.is_set(), "the publisher was not slowed"
        assert peak <= FLOW_BYTES + 2 * CREDIT_INITIAL * size, peak
        assert not broker.memory_alarm
        pace[0] = 0
        assert done.wait(60), "the publisher was held for ever"
        publisher.join(5)
        wait_until(lambda: got[0] >= n, 60, what=f"the consumer to get {n} messages")
        assert got[0] == n
        stop.set()
        consumer.join(5)
