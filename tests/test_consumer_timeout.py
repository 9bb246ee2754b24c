"""consumer_timeout as RabbitMQ 3.10 (issue 22): a delivery left unacknowledged past it
closes its channel with 406 and RabbitMQ's text, its messages requeued; checked on a
timer; configurable (--consumer-timeout, the config file) and off with 0."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from leveret.broker import Config
from leveret.broker.configfile import ConfigError, load_config_file
from leveret.testing import BrokerThread

pytestmark = pytest.mark.slow  # waits for timeouts

TIMEOUT_MS = 400


def text(channel: int, ms: int = TIMEOUT_MS) -> str:
    return (f"PRECONDITION_FAILED - delivery acknowledgement on channel {channel} timed out. Timeout value used: "
            f"{ms} ms. This timeout value can be configured, see consumers doc guide to learn more")


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    with BrokerThread(Config(port=0, consumer_timeout=TIMEOUT_MS)) as b:
        yield b


def run_until(conn: pika.BlockingConnection, pred: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        conn.process_data_events(0.02)


def test_an_unacked_delivery_closes_its_channel_and_is_requeued(broker: BrokerThread) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    other = conn.channel()
    ch = conn.channel()
    ch.queue_declare("ct", durable=True, arguments={"x-queue-type": "quorum"})
    ch.basic_publish("", "ct", b"slow")
    got: list[Any] = []
    closed: list[Any] = []
    ch._impl.add_on_close_callback(lambda c, reason: closed.append((reason, time.monotonic())))
    ch.basic_consume("ct", lambda c, m, p, b: got.append(time.monotonic()))
    run_until(conn, lambda: closed, 5)
    assert got and closed
    reason, at = closed[0]
    assert isinstance(reason, ChannelClosedByBroker)
    assert (reason.reply_code, reason.reply_text) == (406, text(ch.channel_number))
    waited = at - got[0]
    assert TIMEOUT_MS / 1000 - 0.05 <= waited <= TIMEOUT_MS / 1000 + 0.5, waited
    # the connection and its other channel go on; the message was requeued (and, the
    # queue being a quorum queue, its return counted)
    assert conn.is_open and other.is_open
    m, p, b = other.basic_get("ct", auto_ack=True)
    assert (b, m.redelivered, p.headers["x-delivery-count"]) == (b"slow", True, 1)
    conn.close()


def test_acking_in_time_keeps_the_channel_and_get_counts_too(broker: BrokerThread) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    ch.queue_declare("ct2")
    for i in range(12):
        ch.basic_publish("", "ct2", b"%d" % i)
    ch.basic_qos(prefetch_count=2)
    pending: list[int] = []
    ch.basic_consume("ct2", lambda c, m, p, b: pending.append(m.delivery_tag))
    # each delivery acked after ~half the timeout: 12 of them take well past the timeout
    start = time.monotonic()
    acked = 0
    while acked < 12:
        run_until(conn, lambda: bool(pending), 2)
        assert pending, "no delivery"
        conn.sleep(TIMEOUT_MS / 1000 / 4)
        ch.basic_ack(pending.pop(0))
        acked += 1
    assert time.monotonic() - start > 2 * TIMEOUT_MS / 1000
    assert ch.is_open
    # an unacked basic.get counts as well
    ch.queue_declare("ct2-get")
    ch.basic_publish("", "ct2-get", b"got")
    conn.sleep(0.05)
    closed: list[Any] = []
    ch2 = conn.channel()
    ch2._impl.add_on_close_callback(lambda c, reason: closed.append(reason))
    m, _, _ = ch2.basic_get("ct2-get")
    assert m is not None
    run_until(conn, lambda: closed, 5)
    assert closed and closed[0].reply_text == text(ch2.channel_number)
    assert ch.is_open
    conn.close()


def test_zero_turns_it_off() -> None:
    with BrokerThread(Config(port=0, consumer_timeout=0)) as b:
        assert b.broker is not None and b.broker.ack_timeout is None
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.queue_declare("ct3")
        ch.basic_publish("", "ct3", b"x")
        m, _, _ = ch.basic_get("ct3")
        conn.sleep(0.3)
        assert ch.is_open
        conn.close()


def test_default_and_settings(tmp_path: Path) -> None:
    assert Config().consumer_timeout == 1_800_000
    p = tmp_path / "c.toml"
    p.write_text("[amqp]\nconsumer_timeout = 60000\n")
    assert load_config_file(str(p))[0].consumer_timeout == 60000
    p.write_text("consumer_timeout = -1\n")
    with pytest.raises(ConfigError, match="must be between 0 and 2147483647, got -1"):
        load_config_file(str(p))
    p.write_text("consumer_timeout = 4294967296\n")
    with pytest.raises(ConfigError, match="must be between 0"):
        load_config_file(str(p))
    r = subprocess.run([sys.executable, "-m", "leveret", "--print-config", "--consumer-timeout", "5000"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "consumer_timeout = 5000" in r.stdout
    r = subprocess.run([sys.executable, "-m", "leveret", "--consumer-timeout", "-5", "--in-memory", "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--consumer-timeout" in r.stderr
