"""pytest plugin: an in-process Leveret broker instead of RabbitMQ.

Registered through the ``pytest11`` entry point, so installing Leveret is enough::

    def test_publish(amqp_url):            # a fresh vhost of its own, deleted afterwards
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))

    def test_publish_2(leveret):           # the same vhost, with inspection and faults
        ...
        assert leveret.peek("jobs")[0].json() == {"id": 1}

Fixtures:

``leveret_broker`` (session)
    One broker per test session (per xdist worker): a :class:`leveret.testing.BrokerThread`
    on an ephemeral port with in-memory storage; ``host``, ``port``, ``url`` and the whole
    inspection/fault API.  ``--leveret-subprocess`` runs it in a child process instead
    (:class:`leveret.testing.SubprocessBroker`), ``--leveret-durable`` gives it durable
    storage in a temporary directory.
``leveret`` (function)
    A :class:`leveret.testing.VhostView`: a uniquely named vhost on that broker, created
    for the test and deleted after it (its connections closed, its queues gone), with
    ``url`` and the inspection/fault API scoped to it.
``amqp_url`` (function)
    ``leveret.url``.

Markers (the marked test gets a broker of its own instead of the session one):
``@pytest.mark.leveret_subprocess``, ``@pytest.mark.leveret_durable`` (storage in the
test's ``tmp_path``) and ``@pytest.mark.leveret_config(**Config fields)``.

Nothing here starts a broker unless a test asks for one of these fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from leveret.testing import BrokerHandle, VhostView

_MARKERS = (
    "leveret_subprocess: run this test's Leveret broker in a subprocess of its own",
    "leveret_durable: give this test a Leveret broker of its own with durable storage in tmp_path",
    "leveret_config(**fields): give this test a Leveret broker of its own with these "
    "broker.config.Config fields (e.g. heartbeat=5, memory_high_watermark=1000)",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("leveret", "Leveret AMQP broker (replaces RabbitMQ in tests)")
    group.addoption(
        "--leveret-subprocess",
        action="store_true",
        default=None,
        help="run the session's Leveret broker in a subprocess instead of a thread",
    )
    group.addoption(
        "--leveret-durable",
        action="store_true",
        default=None,
        help="give the session's Leveret broker durable storage in a temporary directory",
    )
    parser.addini(
        "leveret_subprocess", "default for --leveret-subprocess", type="bool", default=False
    )
    parser.addini("leveret_durable", "default for --leveret-durable", type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    for line in _MARKERS:
        config.addinivalue_line("markers", line)


def _flag(config: pytest.Config, name: str) -> bool:
    value = config.getoption(f"--leveret-{name}")
    if value is None:
        value = config.getini(f"leveret_{name}")
    return bool(value)


def _start(subprocess: bool, **fields: Any) -> BrokerHandle:
    from leveret.broker.config import Config
    from leveret.testing import BrokerThread, SubprocessBroker

    config = Config(**{"port": 0, **fields})
    handle: BrokerHandle = SubprocessBroker(config) if subprocess else BrokerThread(config)
    return handle.start()


@pytest.fixture(scope="session")
def leveret_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerHandle]:
    """The session's Leveret broker (one per xdist worker)."""
    fields: dict[str, Any] = {}
    if _flag(request.config, "durable"):
        fields["data_dir"] = str(tmp_path_factory.mktemp("leveret-data"))
    handle = _start(_flag(request.config, "subprocess"), **fields)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def leveret(request: pytest.FixtureRequest) -> Iterator[VhostView]:
    """A fresh vhost for this test (deleted afterwards) with inspection and faults."""
    node = request.node
    sub = node.get_closest_marker("leveret_subprocess") is not None
    durable = node.get_closest_marker("leveret_durable") is not None
    cfg = node.get_closest_marker("leveret_config")
    own: BrokerHandle | None = None
    if sub or durable or cfg is not None:
        fields: dict[str, Any] = dict(cfg.kwargs) if cfg is not None else {}
        if durable:
            fields.setdefault("data_dir", str(request.getfixturevalue("tmp_path") / "leveret-data"))
            os.makedirs(fields["data_dir"], exist_ok=True)
        own = _start(sub, **fields)
        handle = own
    else:
        handle = request.getfixturevalue("leveret_broker")
    try:
        view = handle.isolated_vhost(prefix=node.name)
        try:
            yield view
        finally:
            try:
                view.clear_faults()
                view.unblock_publishers()
                view.close()
            except RuntimeError:
                if own is None:  # the session broker is gone: that is worth an error
                    raise
    finally:
        if own is not None:
            own.stop()


@pytest.fixture
def amqp_url(leveret: VhostView) -> str:
    """``amqp://guest:guest@127.0.0.1:PORT/VHOST``: a fresh, isolated vhost per test."""
    return leveret.url
