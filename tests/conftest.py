"""Fixtures shared by the test suite.

Run against RabbitMQ
--------------------
``LEVERET_REFERENCE_URL=amqp://guest:guest@127.0.0.1:5672/`` runs the tests that support it
against that broker (a local RabbitMQ 3.10) instead of a Leveret of their own, to check
the tests themselves: what they expect must be what RabbitMQ does.  It is the one switch:

* ``url`` (aio-pika tests) and the semantics tests' ``target_url`` (pika, aio-pika) are
  the URL itself;
* ``port`` and ``client`` (raw-frame tests: tests/test_protocol_errors.py,
  tests/test_connection_lifecycle.py, ...) connect to the URL's host and port;
* tests/test_access.py sets its user and vhost up with ``rabbitmqctl`` (and removes them);
* tests that need a Leveret of their own (its internals, a config, a subprocess) are
  marked ``leveret_only`` (tests/reference.py) and skipped.

Tests that always start their own broker (``broker_thread``, ``running_broker``, ...)
still run against Leveret.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from rabbitmq_node import rabbit_fixture  # noqa: F401  (the `rabbit` fixture: a private RabbitMQ node)

from leveret.broker import Broker, Config
from leveret.testing import BrokerThread, broker_url, running_broker
from tests.rawamqp import RawClient
from tests.reference import REFERENCE, REFERENCE_HOST, REFERENCE_PORT


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    """An in-process broker on the test's event loop (port chosen by the OS)."""
    async with running_broker(Config(port=0)) as b:
        yield b


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    """URL of the broker under test (``LEVERET_REFERENCE_URL`` when set)."""
    if REFERENCE:
        return REFERENCE
    return broker_url(request.getfixturevalue("broker"))


@pytest.fixture
def broker_thread() -> Iterator[BrokerThread]:
    """A broker in a background thread, for blocking clients such as pika."""
    with BrokerThread(Config(port=0)) as b:
        yield b


@pytest.fixture
def port(request: pytest.FixtureRequest) -> int:
    """AMQP port of the broker under test for raw-frame tests (a ``broker_thread``, or
    the port of ``LEVERET_REFERENCE_URL``; the raw tests connect to 127.0.0.1)."""
    if REFERENCE:
        if REFERENCE_HOST not in ("127.0.0.1", "localhost"):
            pytest.fail(f"LEVERET_REFERENCE_URL: the raw-frame tests connect to 127.0.0.1, not {REFERENCE_HOST}")
        return REFERENCE_PORT
    return request.getfixturevalue("broker_thread").port


@pytest.fixture
def client(port: int) -> Iterator[RawClient]:
    """A raw client with the handshake done and channel 1 open."""
    with RawClient.connect(port) as c:
        c.handshake()
        c.open_channel(1)
        yield c
