from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from leveret.broker import Broker, Config
from leveret.testing import BrokerThread, broker_url, running_broker
from tests.rawamqp import RawClient
from tests.reference import REFERENCE


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


@pytest.fixture
def port(request: pytest.FixtureRequest) -> int:
    """AMQP port of the broker under test for raw-frame tests (a ``broker_thread``)."""
    if REFERENCE:
        return int(REFERENCE)
    return request.getfixturevalue("broker_thread").port


@pytest.fixture
def client(port: int) -> Iterator[RawClient]:
    """A raw client with the handshake done and channel 1 open."""
    with RawClient.connect(port) as c:
        c.handshake()
        c.open_channel(1)
        yield c
