"""Running the tests against a real RabbitMQ instead of Leveret, to check the tests
themselves: ``LEVERET_REFERENCE_URL`` (see tests/conftest.py for what uses it)."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import pytest

#: the reference broker's AMQP URL, e.g. amqp://guest:guest@127.0.0.1:5672/ (None: Leveret)
REFERENCE = os.environ.get("LEVERET_REFERENCE_URL") or None

#: host and port of the reference broker, for the raw-frame tests
REFERENCE_HOST, REFERENCE_PORT = "127.0.0.1", 5672
if REFERENCE:
    _u = urlparse(REFERENCE)
    if _u.scheme != "amqp" or not _u.hostname:
        raise RuntimeError(f"LEVERET_REFERENCE_URL={REFERENCE!r}: expected amqp://user:password@host:port/")
    REFERENCE_HOST, REFERENCE_PORT = _u.hostname, _u.port or 5672

leveret_only = pytest.mark.skipif(REFERENCE is not None, reason="needs a Leveret broker of its own")
