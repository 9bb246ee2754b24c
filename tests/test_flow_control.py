"""Flow control (leveret.broker.core.flow): a publisher that outruns the consumers of a
queue is slowed by reading its socket less, and is never held for ever.

The brokers here use ``flow_cpu=0``: the node counts as busy all the time, so the
mechanism engages without having to saturate a core (the CPU test is what makes a real
broker engage it only under load).  The checks are on behaviour, not timings.
"""

from __future__ import annotations

import select
import threading
import time

import pika
import pytest
from pamqp import commands as C
from rawamqp import RawClient, publish_frames

from leveret.broker import Config
from leveret.broker.core.flow import CREDIT_INITIAL, FLOW_LEN
from leveret.broker.wire import connection
from leveret.testing import BrokerThread
from tests.polling import pump_until, wait_until

N = 30_000
BODY = b"m" * 100


def _raw_publisher(port: int, queue: str, n: int, done: threading.Event) -> threading.Thread:
    """A raw client that writes n publishes as fast as the socket takes them."""

    def run() -> None:
        with RawClient.connect(port, timeout=60) as raw:
            raw.handshake()
            raw.open_channel(1)
            frame = publish_frames(1, "", queue, BODY)
            batch = frame * 500
            for _ in range(n // 500):
                raw.send(batch)
            # a round trip: everything before it has been handled
            raw.rpc(1, C.Queue.Declare(queue=queue, passive=True), C.Queue.DeclareOk)
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _consume(url: str, queue: str, stop: threading.Event, pace: list[float], got: list[int]) -> threading.Thread:
    """A manual-ack pika consumer (prefetch 10) that sleeps pace[0] s per message."""

    def run() -> None:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=10)

        def on_msg(ch: object, method: object, props: object, body: bytes) -> None:
            got[0] += 1
            if pace[0]:
                time.sleep(pace[0])
            ch.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

        ch.basic_consume(queue, on_msg)
        while not stop.is_set():
            conn.process_data_events(0.05)
        conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _depth(b: BrokerThread, queue: str) -> int:
    assert b.broker is not None
    q = b.broker.vhosts["/"].queues[queue]
    return q.store.total()


@pytest.mark.slow
def test_fast_publisher_is_slowed_while_the_consumer_lags_and_released_when_it_catches_up() -> None:
    with BrokerThread(Config(port=0, flow_cpu=0)) as b:
        with pika.BlockingConnection(pika.URLParameters(b.url)) as c:
            c.channel().queue_declare("fc")
        stop, done = threading.Event(), threading.Event()
        pace, got = [0.001], [0]
        consumer = _consume(b.url, "fc", stop, pace, got)
        wait_until(lambda: b.broker and b.broker.vhosts["/"].queues["fc"].consumers, 10, what="the consumer on fc")
        publisher = _raw_publisher(b.port, "fc", N, done)
        # the consumer lags (about 1 ms per message): the publisher waits for credit
        peak, saw_flow = 0, False
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not done.is_set():
            peak = max(peak, _depth(b, "fc"))
            saw_flow = saw_flow or bool(b.broker and b.broker.in_flow)
            time.sleep(0.005)
        assert saw_flow, "the publisher never waited for credit"
        assert not done.is_set(), "the publisher was not slowed"
        # held near the consumer's pace: the backlog stays near FLOW_LEN, far below N
        assert peak < FLOW_LEN + 4 * CREDIT_INITIAL + 3000, peak
        # the consumer catches up: the publisher gets everything through
        pace[0] = 0
        assert done.wait(30), "the publisher was held for ever"
        publisher.join(5)
        wait_until(lambda: got[0] >= N, 30, what=f"the consumer to get {N} messages")
        assert got[0] == N
        assert not b.broker.in_flow
        stop.set()
        consumer.join(5)


def test_no_flow_without_a_backlog_or_without_consumers() -> None:
    # a burst into a queue nobody consumes from runs at full speed: nothing to wait for
    with BrokerThread(Config(port=0, flow_cpu=0)) as b:
        with pika.BlockingConnection(pika.URLParameters(b.url)) as c:
            c.channel().queue_declare("burst")
        done = threading.Event()
        _raw_publisher(b.port, "burst", N, done).join(30)
        assert done.is_set()
        assert _depth(b, "burst") == N
        assert b.broker is not None
        assert not b.broker.in_flow
        assert all(conn.flow_events == 0 for conn in b.broker.connections)


def test_purge_or_cancel_releases_a_waiting_publisher_and_others_are_unaffected() -> None:
    with BrokerThread(Config(port=0, flow_cpu=0)) as b:
        # a consumer that takes 10 messages and never acks: the queue is stuck
        stuck = pika.BlockingConnection(pika.URLParameters(b.url))
        sch = stuck.channel()
        sch.queue_declare("stuck")
        sch.basic_qos(prefetch_count=10)
        sch.basic_consume("stuck", lambda *a: None)
        stuck.process_data_events(0.1)
        done = threading.Event()
        publisher = _raw_publisher(b.port, "stuck", N, done)
        pump_until(stuck, lambda: b.broker and b.broker.in_flow, 10, what="flow to engage", pump=0.01)
        assert b.broker is not None and b.broker.in_flow, "flow never engaged"
        # another connection, another queue: not slowed
        with pika.BlockingConnection(pika.URLParameters(b.url)) as other:
            och = other.channel()
            och.queue_declare("cold")
            for i in range(100):
                och.basic_publish("", "cold", b"%d" % i)
            assert och.queue_declare("cold", passive=True).method.message_count == 100
        assert not done.is_set()
        # the stuck consumer goes away: the queue is no longer in flow, the publisher runs
        sch.basic_cancel(sch.consumer_tags[0])
        assert done.wait(30), "the publisher stayed blocked after the consumer left"
        publisher.join(5)
        assert not b.broker.in_flow
        assert sch.queue_declare("stuck", passive=True).method.message_count == N - 10
        stuck.close()


def test_a_broker_that_is_no_longer_busy_releases_waiting_publishers(monkeypatch: pytest.MonkeyPatch) -> None:
    # flow engages (flow_cpu 0: always busy) against a consumer stuck with a full
    # prefetch window; then the node stops counting as busy (a threshold no loop can
    # reach): the next load samples release the publisher, which gets everything through
    monkeypatch.setattr(connection, "FLOW_MAX_PAUSE", 120.0)  # no release by timeout here
    with BrokerThread(Config(port=0, flow_cpu=0)) as b:
        stuck = pika.BlockingConnection(pika.URLParameters(b.url))
        sch = stuck.channel()
        sch.queue_declare("idle")
        sch.basic_qos(prefetch_count=10)
        sch.basic_consume("idle", lambda *a: None)
        stuck.process_data_events(0.1)
        done = threading.Event()
        publisher = _raw_publisher(b.port, "idle", N, done)
        pump_until(stuck, lambda: b.broker and b.broker.in_flow, 10, what="flow to engage", pump=0.01)
        assert b.broker is not None and b.broker.in_flow, "flow never engaged"
        b.broker.config.flow_cpu = 1000.0
        assert done.wait(20), "the publisher was not released when the node went idle"
        publisher.join(5)
        assert not b.broker.busy and not b.broker.in_flow
        stuck.close()


def _stuck_queue_in_flow(b: BrokerThread, queue: str) -> tuple[pika.BlockingConnection, RawClient]:
    """A queue in flow (FLOW_LEN messages, a consumer stuck with 10 unacked) and a raw
    publisher that filled it, its credit (nearly) whole: it ran into flow only at the end."""
    stuck = pika.BlockingConnection(pika.URLParameters(b.url))
    sch = stuck.channel()
    sch.queue_declare(queue)
    sch.basic_qos(prefetch_count=10)
    sch.basic_consume(queue, lambda *a: None)
    stuck.process_data_events(0.1)
    raw = RawClient.connect(b.port, timeout=30)
    raw.handshake()
    raw.open_channel(1)
    raw.send(publish_frames(1, "", queue, BODY) * (FLOW_LEN + 10))
    raw.rpc(1, C.Queue.Declare(queue=queue, passive=True), C.Queue.DeclareOk)
    assert b.broker is not None and b.broker.vhosts["/"].queues[queue].in_flow()
    return stuck, raw


def _numbered(n: int, start: int = 0) -> bytes:
    return b"".join(publish_frames(1, "", "held", b"%08d" % i) for i in range(start, start + n))


@pytest.mark.slow
def test_a_publisher_out_of_credit_mid_read_has_the_rest_of_the_read_held_then_handled_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read is hundreds of publishes: once the publisher's credit is used up the rest of
    the read waits (held, not handled) until the queue's consumers make room, then goes in
    order, nothing lost."""
    monkeypatch.setattr(connection, "FLOW_MAX_PAUSE", 120.0)  # no credit by timeout here
    with BrokerThread(Config(port=0, flow_cpu=0)) as b:
        stuck, raw = _stuck_queue_in_flow(b, "held")
        start = _depth(b, "held")
        raw.send(_numbered(3000))  # one write: reads of up to 256 KiB, ~2,000 publishes each
        time.sleep(0.5)
        taken = _depth(b, "held") - start
        assert 0 < taken <= CREDIT_INITIAL, taken  # the credit's worth, not the whole read
        conn = next(c for c in b.broker.connections if c.flow_gates)  # type: ignore[union-attr]
        assert conn._held, "nothing held"
        # the queue leaves flow (purged): everything held is handled, in order
        purged = stuck.channel().queue_purge("held").method.message_count
        raw.rpc(1, C.Queue.Declare(queue="held", passive=True), C.Queue.DeclareOk)
        assert purged == start + taken
        bodies = []
        with pika.BlockingConnection(pika.URLParameters(b.url)) as c:
            ch = c.channel()
            while (m := ch.basic_get("held", auto_ack=True))[0] is not None:
                bodies.append(int(m[2]))
        assert bodies == list(range(taken, 3000))
        raw.close()
        stuck.close()


def test_a_framing_error_after_held_publishes_comes_after_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "FLOW_MAX_PAUSE", 120.0)
    with BrokerThread(Config(port=0, flow_cpu=0)) as b:
        stuck, raw = _stuck_queue_in_flow(b, "held")
        start = _depth(b, "held")
        raw.send(_numbered(3000) + b"\x01\x00\x01\x00\x00\x00\x00\x00")  # a bad frame-end octet last
        # (a loaded machine may take a while to read: wait for the first publishes, then
        # give the rest time to show they are held)
        wait_until(lambda: _depth(b, "held") > start, timeout=10, what="the first publishes in the queue")
        time.sleep(0.5)
        taken = _depth(b, "held") - start
        assert 0 < taken <= CREDIT_INITIAL, taken
        assert not _readable(raw), "the error came before the held publishes"
        stuck.channel().queue_purge("held")
        m = raw.expect_connection_close(501)
        assert m.reply_text.startswith("FRAME_ERROR")
        with pika.BlockingConnection(pika.URLParameters(b.url)) as c:
            count = c.channel().queue_declare("held", passive=True).method.message_count
        assert count == 3000 - taken  # every publish before the error went in
        raw.close()
        stuck.close()


def _readable(raw: RawClient) -> bool:
    r, _, _ = select.select([raw.sock], [], [], 0)
    return bool(r)


def test_a_publisher_held_by_a_stuck_consumer_still_gets_a_credit_window_per_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Flow slows, it never blocks: against a consumer that never acks, a publisher waiting
    longer than FLOW_MAX_PAUSE gets a whole CREDIT_INITIAL each time (held frames go on)."""
    monkeypatch.setattr(connection, "FLOW_MAX_PAUSE", 0.2)
    with BrokerThread(Config(port=0, flow_cpu=0)) as b:
        stuck, raw = _stuck_queue_in_flow(b, "held")
        start = _depth(b, "held")
        raw.send(_numbered(3000))
        time.sleep(1.0)  # the credit at once, then about four timeouts
        taken = _depth(b, "held") - start
        assert taken >= 3 * CREDIT_INITIAL, taken
        raw.close()
        stuck.close()
