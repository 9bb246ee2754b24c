"""Push (basic.consume) vs pull (basic.get polling), and a batch consumer.

* push: the broker sends deliveries as they come, up to ``prefetch`` unacked at a time;
  no request per message.
* pull: one basic.get round trip per message, and a poll interval when the queue is
  empty (latency or wasted requests: pick one).  Fine for occasional draining, slow for
  a stream.
* batch: push with a large prefetch; collect up to BATCH deliveries (or until a short
  timeout), process them together, then one ``basic.ack(multiple=True)`` for the batch.
"""

from __future__ import annotations

import time

import pika
from _common import broker, parser

QUEUE = "example.push_pull"
N = 2000
BATCH = 100


def fill(ch) -> None:
    ch.queue_purge(QUEUE)
    for i in range(N):
        ch.basic_publish("", QUEUE, str(i).encode())


def push(conn, ch) -> list[int]:
    ch.basic_qos(prefetch_count=50)
    got: list[int] = []

    def on_message(ch, method, _props, body) -> None:
        got.append(int(body))
        ch.basic_ack(method.delivery_tag)
        if len(got) == N:
            ch.stop_consuming()

    ch.basic_consume(QUEUE, on_message)
    ch.start_consuming()
    return got


def pull(conn, ch, poll_interval: float = 0.05) -> tuple[list[int], int]:
    got: list[int] = []
    requests = 0
    while len(got) < N:
        method, _props, body = ch.basic_get(QUEUE)
        requests += 1
        if method is None:
            time.sleep(poll_interval)  # empty: wait before asking again
            continue
        got.append(int(body))
        ch.basic_ack(method.delivery_tag)
    return got, requests


def batch(conn, ch) -> tuple[list[int], int]:
    ch.basic_qos(prefetch_count=BATCH)
    got: list[int] = []
    batches = 0
    pending: list[tuple[int, int]] = []
    for method, _props, body in ch.consume(QUEUE, inactivity_timeout=0.05):
        if method is not None:
            pending.append((method.delivery_tag, int(body)))
        if pending and (len(pending) >= BATCH or method is None):
            got.extend(n for _, n in pending)  # "process" the whole batch at once
            ch.basic_ack(pending[-1][0], multiple=True)
            batches += 1
            pending = []
        if len(got) == N:
            break
    ch.cancel()
    return got, batches


def main() -> None:
    args = parser(__doc__).parse_args()
    with broker(args.url) as url:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.queue_declare(QUEUE)
        results = {}
        for mode in ("push", "pull", "batch"):
            fill(ch)
            t0 = time.perf_counter()
            if mode == "push":
                got, extra = push(conn, ch), ""
            elif mode == "pull":
                got, requests = pull(conn, ch)
                extra = f", {requests} basic.get requests"
            else:
                got, batches = batch(conn, ch)
                extra = f", {batches} batches of up to {BATCH}, one ack each"
            elapsed = time.perf_counter() - t0
            results[mode] = got
            print(f"{mode:5}: {len(got)} messages in {elapsed:.3f} s "
                  f"({len(got) / elapsed:,.0f} msg/s{extra})")
            ch = conn.channel()
        for mode, got in results.items():
            assert got == list(range(N)), f"{mode}: messages missing or out of order"
        ch.queue_delete(QUEUE)
        conn.close()
        print("ok")


if __name__ == "__main__":
    main()
