"""Small helpers shared by several test files."""

from __future__ import annotations

import sys

import aio_pika

from leveret.testing import BrokerProcess


async def ready_count(ch: aio_pika.abc.AbstractChannel, name: str) -> int:
    """The ready message count of queue ``name`` (a passive declare)."""
    q = await ch.declare_queue(name, passive=True)
    assert q.declaration_result.message_count is not None
    return q.declaration_result.message_count


def leveret_command(port: int, *args: str) -> list[str]:
    """The command line of a ``python -m leveret`` broker on ``port`` (HTTP and Prometheus on
    free ports, info logging), with ``args`` added."""
    return [sys.executable, "-m", "leveret", "--port", str(port), "--log-level", "info",
            "--http-port", "off", "--prometheus-port", "off", *args]


def start_durable(data_dir: str, port: int | None = None, *extra: str) -> BrokerProcess:
    """A broker subprocess on ``data_dir`` (fsync every 50 ms), on ``port`` if given: the
    kill -9 and restart tests."""
    return BrokerProcess(port=port, args=["--data-dir", data_dir, "--fsync-interval", "0.05", *extra]).start()


def confirmed_publisher(queue: str, delivery_mode: int) -> str:
    """A publisher script (``python SCRIPT URL N``): publishes ``b"0"``, ``b"1"`` ... to
    ``queue`` with confirms, printing each index once confirmed, until N or an error."""
    return f'''
import sys, pika
url, n = sys.argv[1], int(sys.argv[2])
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
ch.confirm_delivery()
props = pika.BasicProperties(delivery_mode={delivery_mode})
for i in range(n):
    try:
        ch.basic_publish("", {queue!r}, b"%d" % i, props)
    except Exception:
        break
    print(i, flush=True)   # confirmed
'''
