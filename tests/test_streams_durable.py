"""A stream under kill -9 (issue 24): a publisher with confirms sends transient messages
(a stream persists every message), the broker is killed and restarted: every confirmed
message is there, at its offset, and the stream takes new messages after them."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest

from tests.helpers import confirmed_publisher, start_durable

S = {"x-queue-type": "stream"}





def read_all(url: str, name: str, expect_at_least: int) -> list[tuple[int, bytes]]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1000)
    got: list[tuple[int, bytes]] = []

    def cb(c: object, m: pika.spec.Basic.Deliver, p: pika.BasicProperties, b: bytes) -> None:
        got.append((p.headers["x-stream-offset"], b))
        ch.basic_ack(m.delivery_tag)

    ch.basic_consume(name, cb, arguments={"x-stream-offset": "first"})
    deadline = time.monotonic() + 20
    last = -1
    while time.monotonic() < deadline:
        conn.process_data_events(0.2)
        if len(got) >= expect_at_least and len(got) == last:
            break
        last = len(got)
    conn.close()
    return got


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_keeps_every_confirmed_message_at_its_offset(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    data_dir = str(tmp_path / "data")
    b = start_durable(data_dir)
    try:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        conn.channel().queue_declare("scrash", durable=True, arguments={**S, "x-stream-max-segment-size-bytes": 20_000})
        conn.close()
        script = tmp_path / "pub.py"
        script.write_text(confirmed_publisher('scrash', 1))
        pub = subprocess.Popen([sys.executable, str(script), b.url, "100000"], stdout=subprocess.PIPE, text=True)
        assert pub.stdout is not None
        first = pub.stdout.readline()  # publishing has started and confirms flow
        time.sleep(rnd.uniform(0.3, 0.9))
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGKILL)
        b.proc.wait(5)
        out, _ = pub.communicate(timeout=30)
        confirmed = [int(x) for x in (first + out).split()]
        assert confirmed, "the publisher got no confirm before the kill"
        b = start_durable(data_dir, b.port)
        got = read_all(b.url, "scrash", len(confirmed))
        # every record at its offset, in order, no gap, no duplicate: message i at offset i
        assert [off for off, _ in got] == list(range(len(got)))
        assert all(int(body) == off for off, body in got)
        assert len(got) >= len(confirmed), f"{len(confirmed) - len(got)} confirmed messages lost"
        # the stream goes on after them
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", "scrash", b"after")
        conn.close()
        again = read_all(b.url, "scrash", len(got) + 1)
        assert again[-1] == (len(got), b"after") and len(again) == len(got) + 1
    finally:
        b.kill()
