"""RPC over AMQP (RabbitMQ tutorial 6, through Leveret), two ways.

The server consumes ``example.rpc`` and publishes each answer to the request's
``reply_to`` with the request's ``correlation_id``.  Clients:

* reply queue: the client declares its own exclusive, server-named queue, consumes it and
  sends requests with ``reply_to=<that queue>``.
* direct reply-to: the client consumes the pseudo-queue ``amq.rabbitmq.reply-to``
  (no_ack) and sends requests with ``reply_to="amq.rabbitmq.reply-to"``; the broker routes
  the answers straight back to this channel, no queue declared at all.

Both fire several requests before reading any answer and match them by correlation_id.
"""

from __future__ import annotations

import threading
import uuid

import pika
from _common import broker, parser

QUEUE = "example.rpc"
DIRECT = "amq.rabbitmq.reply-to"


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def server(url: str, ready: threading.Event, stop: threading.Event) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(QUEUE)
    ch.basic_qos(prefetch_count=10)
    ready.set()
    for method, props, body in ch.consume(QUEUE, inactivity_timeout=0.05):
        if stop.is_set():
            break
        if method is None:
            continue
        answer = str(fib(int(body))).encode()
        ch.basic_publish("", props.reply_to, answer,
                         pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)
    ch.cancel()
    conn.close()


class Client:
    def __init__(self, url: str, direct: bool) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        if direct:
            self.reply_to = DIRECT  # must be consumed (no_ack) before publishing
            self.ch.basic_consume(DIRECT, self._on_reply, auto_ack=True)
        else:
            self.reply_to = self.ch.queue_declare("", exclusive=True).method.queue
            self.ch.basic_consume(self.reply_to, self._on_reply, auto_ack=True)
        self.answers: dict[str, int] = {}

    def _on_reply(self, ch, method, props, body) -> None:
        self.answers[props.correlation_id] = int(body)

    def call_many(self, ns: list[int], timeout: float = 10.0) -> list[int]:
        ids = []
        for n in ns:
            cid = uuid.uuid4().hex
            ids.append(cid)
            self.ch.basic_publish("", QUEUE, str(n).encode(), pika.BasicProperties(
                reply_to=self.reply_to, correlation_id=cid))
        self.conn.process_data_events(0)
        waited = 0.0
        while not all(cid in self.answers for cid in ids):
            if waited > timeout:
                raise TimeoutError("no answer")
            self.conn.process_data_events(0.05)
            waited += 0.05
        return [self.answers.pop(cid) for cid in ids]

    def close(self) -> None:
        self.conn.close()


def main() -> None:
    args = parser(__doc__).parse_args()
    with broker(args.url) as url:
        ready, stop = threading.Event(), threading.Event()
        t = threading.Thread(target=server, args=(url, ready, stop))
        t.start()
        ready.wait(10)
        ns = [10, 20, 30, 40, 50, 60, 70, 80, 90]
        try:
            for direct in (False, True):
                client = Client(url, direct)
                got = client.call_many(ns)
                print(f"{'direct reply-to' if direct else 'reply queue':16} reply_to="
                      f"{client.reply_to[:22]:22} fib{ns[:3]}... = {got[:3]}...")
                assert got == [fib(n) for n in ns]
                client.close()
        finally:
            stop.set()
            t.join(10)
        conn = pika.BlockingConnection(pika.URLParameters(url))
        conn.channel().queue_delete(QUEUE)
        conn.close()
        print("ok")


if __name__ == "__main__":
    main()
