"""Small helpers shared by several test files."""

from __future__ import annotations

import sys

import aio_pika


async def ready_count(ch: aio_pika.abc.AbstractChannel, name: str) -> int:
    """The ready message count of queue ``name`` (a passive declare)."""
    q = await ch.declare_queue(name, passive=True)
    assert q.declaration_result.message_count is not None
    return q.declaration_result.message_count


def leveret_command(port: int, *args: str) -> list[str]:
    """The command line of a ``python -m leveret`` broker on ``port`` (HTTP and Prometheus on
    free ports, info logging), with ``args`` added."""
    return [sys.executable, "-m", "leveret", "--port", str(port), "--log-level", "info",
            "--http-port", "off", "--prometheus-port", "off", *args]
