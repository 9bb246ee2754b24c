"""Running tests against a real RabbitMQ instead of Leveret (see tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

REFERENCE = os.environ.get("LEVERET_REFERENCE_PORT")
leveret_only = pytest.mark.skipif(REFERENCE is not None, reason="needs a Leveret broker of its own")
