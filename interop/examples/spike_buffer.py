"""A traffic spike absorbed by a durable queue and drained later.

A burst of 20,000 persistent messages arrives (publisher confirms: each one is safely in
the broker when the producer moves on) while the consumer is offline.  The durable queue
holds them.  When this program runs its own Leveret, it then restarts the broker: the
backlog survives on disk.  Finally a consumer with a fixed processing budget drains the
backlog at its own pace -- the producer never had to wait for it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time

import aio_pika
import pika
from _common import ROOT, parser

QUEUE = "example.spike"
SPIKE = 20_000
DRAIN_RATE = 10_000  # messages per second the consumer can handle
WINDOW = 1000  # publishes in flight, awaiting confirms


def depth(url: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    n = conn.channel().queue_declare(QUEUE, durable=True, passive=True).method.message_count
    conn.close()
    return n


def spike(url: str) -> float:
    """Publish the burst with aio-pika: up to WINDOW publishes awaiting their confirm."""

    async def burst() -> float:
        conn = await aio_pika.connect(url)
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            q = await ch.declare_queue(QUEUE, durable=True)
            await q.purge()
            t0 = time.perf_counter()
            pending: list = []
            for i in range(SPIKE):
                msg = aio_pika.Message(b'{"order": %d, "items": [1, 2, 3]}' % i,
                                       delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                       content_type="application/json")
                pending.append(ch.default_exchange.publish(msg, QUEUE))
                if len(pending) == WINDOW:
                    await asyncio.gather(*pending)  # every one confirmed by the broker
                    pending = []
            await asyncio.gather(*pending)
            return time.perf_counter() - t0

    return asyncio.run(burst())


def drain(url: str) -> tuple[int, float]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=500)
    seen = 0
    expected = 0
    in_order = True
    t0 = time.perf_counter()
    next_report = t0
    for method, _props, body in ch.consume(QUEUE, inactivity_timeout=1.0):
        if method is None:
            break
        in_order &= body.startswith(b'{"order": %d,' % expected)
        expected += 1
        seen += 1
        if seen % 100 == 0 or seen == SPIKE:
            ch.basic_ack(method.delivery_tag, multiple=True)
            # pace ourselves: the consumer is slower than the spike
            ahead = seen / DRAIN_RATE - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
        now = time.perf_counter()
        if now >= next_report:
            left = ch.queue_declare(QUEUE, durable=True, passive=True).method.message_count
            print(f"  t={now - t0:4.1f} s  consumed {seen:6}  backlog {left:6}")
            next_report = now + 0.5
        if seen == SPIKE:
            break
    elapsed = time.perf_counter() - t0
    ch.cancel()
    conn.close()
    assert in_order, "messages out of order"
    return seen, elapsed


def main() -> None:
    args = parser(__doc__).parse_args()
    if args.url:
        run(args.url, None)
        return
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from leveret.testing import BrokerProcess

    with tempfile.TemporaryDirectory(prefix="leveret-spike-") as data:
        help_text = subprocess.run([sys.executable, "-m", "leveret", "--help"], cwd=ROOT,
                                   capture_output=True, text=True).stdout
        extra = ["--data-dir", os.path.join(data, "d")] if "--data-dir" in help_text else []
        b = BrokerProcess(args=extra).start()
        try:
            run(b.url, b)
        finally:
            b.stop()


def run(url: str, process) -> None:
    took = spike(url)
    print(f"spike: {SPIKE} confirmed persistent messages in {took:.2f} s "
          f"({SPIKE / took:,.0f} msg/s); backlog {depth(url)}")
    if process is not None:
        process.stop()
        process.start()
        print(f"broker restarted: backlog {depth(url)}")
    seen, took = drain(url)
    print(f"drained {seen} messages in {took:.2f} s at ~{seen / took:,.0f} msg/s; "
          f"backlog {depth(url)}")
    assert seen == SPIKE
    conn = pika.BlockingConnection(pika.URLParameters(url))
    conn.channel().queue_delete(QUEUE)
    conn.close()
    print("ok")


if __name__ == "__main__":
    main()
