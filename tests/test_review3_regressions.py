"""Regression tests for bugs found in the third review (each failed before its fix;
expected behaviour checked against RabbitMQ 3.10)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aio_pika
from aio_pika import DeliveryMode, Message

from leveret.broker import Config
from leveret.testing import broker_url, running_broker


async def test_priority_queue_recovered_messages_come_before_ones_published_after_restart(tmp_path: Path) -> None:
    # a durable priority queue recovers its messages as a paged-out tail; one published
    # after the restart (before any consumer) must not jump ahead of older messages of
    # the same or a higher priority
    data = str(tmp_path / "d")
    args = {"x-max-priority": 3}
    async with running_broker(Config(port=0, data_dir=data)) as broker:
        async with await aio_pika.connect(broker_url(broker)) as conn:
            ch = await conn.channel(publisher_confirms=True)
            await ch.declare_queue("r3.pq", durable=True, arguments=args)
            for i in range(6):
                await ch.default_exchange.publish(
                    Message(b"old%d" % i, priority=3 if i % 2 else 0, delivery_mode=DeliveryMode.PERSISTENT), "r3.pq")
    async with running_broker(Config(port=0, data_dir=data)) as broker:
        async with await aio_pika.connect(broker_url(broker)) as conn:
            ch = await conn.channel(publisher_confirms=True)
            q = await ch.declare_queue("r3.pq", durable=True, arguments=args)
            await ch.default_exchange.publish(Message(b"new-p0", priority=0), "r3.pq")
            await ch.default_exchange.publish(Message(b"new-p3", priority=3), "r3.pq")
            got = []
            while (m := await q.get(fail=False, no_ack=True)) is not None:
                got.append(m.body)
    assert got == [b"old1", b"old3", b"old5", b"new-p3", b"old0", b"old2", b"old4", b"new-p0"]


def test_ctl_unreadable_cacert_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    # --cacert naming a missing or non-PEM file: rabbitmqctl's "input missing" (66) with
    # a message, not a Python traceback (exit 1)
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("hello\n")
    for cafile in (str(tmp_path / "missing.pem"), str(bad)):
        r = subprocess.run([sys.executable, "-m", "leveret.ctl", "--scheme", "https", "--port", "1", "--cacert", cafile,
                            "list_vhosts"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 66, (r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and cafile in r.stderr
