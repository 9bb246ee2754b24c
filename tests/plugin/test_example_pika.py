"""pika: test blocking publisher and worker code, with Leveret instead of RabbitMQ."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pika
import pika.exceptions
import pytest

from leveret.testing import VhostView

# ---- the code under test ---------------------------------------------------------------


class InvoiceSender:
    """Queues invoices for the billing worker on one long-lived connection, with
    publisher confirms."""

    def __init__(self, url: str, blocked_timeout: float = 30.0) -> None:
        params = pika.URLParameters(url)
        params.blocked_connection_timeout = blocked_timeout  # give up if the broker blocks us
        self.connection = pika.BlockingConnection(params)
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.channel.queue_declare("invoices", durable=True)

    def send(self, invoice: dict) -> None:
        self.channel.basic_publish(
            exchange="",
            routing_key="invoices",
            body=json.dumps(invoice).encode(),
            properties=pika.BasicProperties(content_type="application/json", delivery_mode=2),
        )

    def close(self) -> None:
        try:
            self.connection.close()
        except pika.exceptions.AMQPError:  # closed already (by us or by the broker)
            pass


def bill_invoices(url: str, handle: Callable[[dict], None], idle: float = 0.2) -> int:
    """The billing worker: handle invoices until the queue stays idle; return how many.
    Reconnects once if the broker closes the connection."""
    done = 0
    for _attempt in range(2):
        try:
            with pika.BlockingConnection(pika.URLParameters(url)) as connection:
                channel = connection.channel()
                channel.queue_declare("invoices", durable=True)
                channel.basic_qos(prefetch_count=5)
                for method, _props, body in channel.consume("invoices", inactivity_timeout=idle):
                    if method is None:  # idle: stop
                        return done
                    handle(json.loads(body))
                    channel.basic_ack(method.delivery_tag)
                    done += 1
        except pika.exceptions.ConnectionClosedByBroker:
            continue
    return done


# ---- the tests -------------------------------------------------------------------------


@pytest.fixture
def sender(amqp_url: str) -> Iterator[InvoiceSender]:
    s = InvoiceSender(amqp_url, blocked_timeout=0.3)
    yield s
    s.close()


def test_sender_queues_a_persistent_json_message(sender: InvoiceSender, leveret: VhostView) -> None:
    sender.send({"id": 1, "total": 9.5})

    [message] = leveret.peek("invoices")
    assert message.json() == {"id": 1, "total": 9.5}
    assert message.content_type == "application/json"
    assert message.delivery_mode == 2
    assert leveret.queue("invoices").durable


def test_worker_acks_every_invoice(
    amqp_url: str, sender: InvoiceSender, leveret: VhostView
) -> None:
    for i in range(3):
        sender.send({"id": i})
    seen: list[int] = []

    assert bill_invoices(amqp_url, lambda invoice: seen.append(invoice["id"])) == 3

    assert seen == [0, 1, 2]
    assert leveret.message_count("invoices") == 0
    assert leveret.stats().acked == 3


def test_worker_reconnects_when_the_broker_closes_its_connection(
    amqp_url: str, sender: InvoiceSender, leveret: VhostView
) -> None:
    sender.send({"id": 0})
    sender.send({"id": 1})
    seen: list[int] = []

    def handle(invoice: dict) -> None:
        if not seen:  # while the first invoice is being handled: kick the worker out
            leveret.close_connections(code=320, text="maintenance")
        seen.append(invoice["id"])

    bill_invoices(amqp_url, handle)

    assert seen == [0, 0, 1]  # the unacked invoice came back and was handled again


def test_sender_gives_up_while_the_broker_blocks_publishers(
    sender: InvoiceSender, leveret: VhostView
) -> None:
    leveret.block_publishers()  # connection.blocked, as RabbitMQ's memory alarm sends

    started = time.monotonic()
    with pytest.raises(pika.exceptions.ConnectionBlockedTimeout):
        sender.send({"id": 2})
    assert time.monotonic() - started < 2
    assert leveret.message_count("invoices") == 0
