"""unittest (and so Django's test runner): a broker in a background thread for the
module, a fresh vhost per test, and Celery's own test helper `start_worker` on it."""

from __future__ import annotations

import unittest

import pika
from celery import Celery
from celery.contrib.testing.worker import start_worker

from leveret.testing import BrokerThread

BROKER = BrokerThread()  # in-memory broker on a free port


def setUpModule() -> None:  # noqa: N802 (unittest's name)
    BROKER.start()


def tearDownModule() -> None:  # noqa: N802
    BROKER.stop()


class GreetingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.vhost = BROKER.isolated_vhost("greetings")  # deleted again by the cleanup
        self.addCleanup(self.vhost.close)

    def test_publish_is_visible_without_consuming(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.vhost.url))
        self.addCleanup(connection.close)
        channel = connection.channel()
        channel.queue_declare("greetings")
        channel.basic_publish("", "greetings", b"hello")

        message = self.vhost.wait_for_message("greetings", timeout=2)
        self.assertEqual(message.body, b"hello")
        self.assertEqual(self.vhost.message_count("greetings"), 1)

    def test_each_test_gets_an_empty_vhost(self) -> None:
        self.assertEqual(self.vhost.queues(), [])


class CeleryWorkerTests(unittest.TestCase):
    def test_task_round_trip_through_the_broker(self) -> None:
        vhost = BROKER.isolated_vhost("celery")
        self.addCleanup(vhost.close)
        app = Celery("unittest-example", broker=vhost.url, backend="rpc://")
        app.conf.broker_heartbeat = 0  # as Celery's TestApp: else the worker thread stops slowly
        self.addCleanup(app.close)

        @app.task(name="double")
        def double(x: int) -> int:
            return 2 * x

        with start_worker(app, pool="solo", perform_ping_check=False):
            self.assertEqual(double.delay(21).get(timeout=10), 42)
