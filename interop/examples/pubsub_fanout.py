"""Publish/subscribe through a fanout exchange (RabbitMQ tutorial 3, through Leveret).

Each subscriber declares its own server-named, exclusive queue and binds it to the
``example.events`` fanout exchange: every subscriber gets every event.  A subscriber that
joins late misses what was published before it bound its queue -- that is pub/sub.
"""

from __future__ import annotations

import json
import threading
import time

import pika
from _common import broker, parser

EXCHANGE = "example.events"


def subscriber(url: str, name: str, got: dict, ready: threading.Event,
               stop: threading.Event) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, "fanout")
    q = ch.queue_declare("", exclusive=True).method.queue  # amq.gen-...
    ch.queue_bind(q, EXCHANGE)
    ready.set()
    for method, _props, body in ch.consume(q, auto_ack=True, inactivity_timeout=0.1):
        if method is not None:
            got.setdefault(name, []).append(json.loads(body)["n"])
        if stop.is_set():
            break
    conn.close()


def main() -> None:
    args = parser(__doc__).parse_args()
    with broker(args.url) as url:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.exchange_declare(EXCHANGE, "fanout")
        got: dict[str, list[int]] = {}
        stop = threading.Event()
        threads = []

        def join(name: str) -> None:
            ready = threading.Event()
            t = threading.Thread(target=subscriber, args=(url, name, got, ready, stop))
            t.start()
            ready.wait(10)
            threads.append(t)

        join("audit")
        join("mailer")
        for n in range(5):
            ch.basic_publish(EXCHANGE, "", json.dumps({"n": n}).encode())
        join("latecomer")
        for n in range(5, 8):
            ch.basic_publish(EXCHANGE, "", json.dumps({"n": n}).encode())
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(10)
        for name, ns in sorted(got.items()):
            print(f"{name:10} got {ns}")
        assert got["audit"] == got["mailer"] == list(range(8))
        assert got["latecomer"] == [5, 6, 7]
        ch.exchange_delete(EXCHANGE)
        conn.close()
        print("ok")


if __name__ == "__main__":
    main()
