"""Network helpers for the tests."""

from __future__ import annotations

import socket

from leveret.broker.core import access as A


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (to connect to ourselves)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if A.is_loopback(addr) else addr
