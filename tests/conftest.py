from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from rabbitmq_node import rabbit_fixture  # noqa: F401  (the `rabbit` fixture: a private RabbitMQ node)

from leveret.broker import Broker, Config
from leveret.testing import BrokerThread, broker_url, running_broker


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    """An in-process broker on the test's event loop (port chosen by the OS)."""
    async with running_broker(Config(port=0)) as b:
        yield b


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    """URL of the broker under test.  With REFERENCE_AMQP_URL set (e.g. a local
    RabbitMQ), the same tests run against that broker instead, to check them."""
    ref = os.environ.get("REFERENCE_AMQP_URL")
    if ref:
        return ref
    return broker_url(request.getfixturevalue("broker"))


@pytest.fixture
def broker_thread() -> Iterator[BrokerThread]:
    """A broker in a background thread, for blocking clients such as pika."""
    with BrokerThread(Config(port=0)) as b:
        yield b
