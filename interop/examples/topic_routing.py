"""Topic routing (RabbitMQ tutorial 5, through Leveret): logs by ``<facility>.<severity>``.

Bindings on the ``example.logs`` topic exchange: ``*.critical`` (the pager), ``kern.*``
(the kernel log) and ``#`` (the archive).  ``*`` matches exactly one word, ``#`` zero or
more.  A message goes to every queue with a matching binding, once per queue.
"""

from __future__ import annotations

import time

import pika
from _common import broker, parser

EXCHANGE = "example.logs"
BINDINGS = {"pager": ["*.critical"], "kernel": ["kern.*"], "archive": ["#"]}
MESSAGES = ["kern.critical", "kern.info", "auth.critical", "auth.info", "app.web.error", "boot"]


def main() -> None:
    args = parser(__doc__).parse_args()
    with broker(args.url) as url:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.exchange_declare(EXCHANGE, "topic")
        queues = {}
        for name, keys in BINDINGS.items():
            queues[name] = ch.queue_declare("", exclusive=True).method.queue
            for key in keys:
                ch.queue_bind(queues[name], EXCHANGE, routing_key=key)
        for rk in MESSAGES:
            ch.basic_publish(EXCHANGE, rk, f"{rk}: something happened".encode())
        time.sleep(0.1)
        got = {}
        for name, q in queues.items():
            got[name] = []
            while True:
                method, _props, _body = ch.basic_get(q, auto_ack=True)
                if method is None:
                    break
                got[name].append(method.routing_key)
            print(f"{name:8} ({', '.join(BINDINGS[name])}): {got[name]}")
        assert got["pager"] == ["kern.critical", "auth.critical"]
        assert got["kernel"] == ["kern.critical", "kern.info"]
        assert got["archive"] == MESSAGES
        ch.exchange_delete(EXCHANGE)
        conn.close()
        print("ok")


if __name__ == "__main__":
    main()
