"""The in-memory message.

One ``Message`` per published message, shared by every queue it is routed to.  The
content header is kept exactly as the publisher sent it (``header``: class, weight,
body size, property flags and property bytes) and written back verbatim on delivery;
``ex_rk`` is the exchange and routing key as the two short strings from basic.publish,
reused verbatim in basic.deliver / basic.get-ok / basic.return.  Properties are only
decoded when the broker needs one (``props``).
"""

from __future__ import annotations

from typing import Any

from leveret.protocol import properties as P


class Message:
    __slots__ = ("ex_rk", "exchange", "routing_key", "header", "body", "_props", "size", "ts", "bcc")

    def __init__(self, ex_rk: bytes, exchange: str, routing_key: str, header: bytes, body: bytes) -> None:
        self.ex_rk = ex_rk
        self.exchange = exchange
        self.routing_key = routing_key
        self.header = header
        self.body = body
        self.size = len(body)
        self._props: dict[str, Any] | None = None
        self.ts = 0.0  # publish time (wall clock), set when a queue needs it (TTL)
        self.bcc: list[str] | None = None  # BCC routing keys (the header itself is stripped)

    @property
    def props(self) -> dict[str, Any]:
        """Scalar properties present in the header (decoded once, on first use)."""
        p = self._props
        if p is None:
            # flags == 0 is by far the most common case: skip the scan entirely
            p = self._props = P.scan(self.header) if self.header[12:14] != b"\x00\x00" else {}
        return p

    @property
    def priority(self) -> int:
        return self.props.get("priority", 0) if self.header[12] & 0x08 else 0

    @property
    def expiration_ms(self) -> int | None:
        """Per-message TTL from the ``expiration`` property (validated at publish)."""
        if not self.header[12] & 0x01:
            return None
        try:
            return int(self.props["expiration"])
        except (KeyError, ValueError):
            return None

    @property
    def persistent(self) -> bool:
        flags = self.header[12]
        if flags & 0xF0 == 0x10:  # delivery_mode is the first property present
            return self.header[14] == 2
        return self.props.get("delivery_mode") == 2

    @property
    def headers(self) -> dict[str, Any]:
        at = self.props.get("_headers_at")
        if at is None:
            return {}
        return P.headers(self.header, at)
