"""The in-memory message.

One ``Message`` per published message, shared by every queue it is routed to.  The
content header is kept exactly as the publisher sent it (``header``: class, weight,
body size, property flags and property bytes) and written back verbatim on delivery;
``body`` is ``bytes``, or for a large body received in several pieces a
:class:`~leveret.protocol.body.Body` of them (``len()`` and ``bytes()`` work on both);
``ex_rk`` is the exchange and routing key as the two short strings from basic.publish,
reused verbatim in basic.deliver / basic.get-ok / basic.return.  Properties are only
decoded when the broker needs one (``props``).  :func:`to_record` / :func:`from_record`
turn a message into a queue-log record payload and back (``leveret.storage.record``).
"""

from __future__ import annotations

from typing import Any

from leveret.protocol import properties as P
from leveret.protocol.body import Body
from leveret.storage import record

FLAGS_HI = P.FLAGS_HI


class Message:
    __slots__ = ("ex_rk", "exchange", "routing_key", "header", "body", "_props", "size", "ts", "bcc")

    def __init__(self, ex_rk: bytes, exchange: str, routing_key: str, header: bytes, body: bytes | Body) -> None:
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
            # no property at all is by far the most common case: skip the scan entirely
            h = self.header
            p = self._props = P.scan(h) if h[FLAGS_HI] or h[P.FLAGS_LO] else {}
        return p

    def set_header(self, header: bytes) -> None:
        """The broker rewrote the properties (direct reply-to, BCC removal)."""
        self.header = header
        self._props = None

    @property
    def has_expiration(self) -> bool:
        return bool(self.header[FLAGS_HI] & P.HI_EXPIRATION)

    @property
    def has_headers(self) -> bool:
        return bool(self.header[FLAGS_HI] & P.HI_HEADERS)

    @property
    def priority(self) -> int:
        return self.props.get("priority", 0) if self.header[FLAGS_HI] & P.HI_PRIORITY else 0

    @property
    def expiration_ms(self) -> int | None:
        """Per-message TTL from the ``expiration`` property (validated at publish)."""
        if not self.header[FLAGS_HI] & P.HI_EXPIRATION:
            return None
        try:
            return int(self.props["expiration"])
        except (KeyError, ValueError):
            return None

    @property
    def persistent(self) -> bool:
        flags = self.header[FLAGS_HI]
        if not flags & P.HI_DELIVERY_MODE:
            return False
        if flags & 0xF0 == P.HI_ONLY_DELIVERY_MODE_FIRST:
            return self.header[FLAGS_HI + 2] == 2
        return self.props.get("delivery_mode") == 2

    @property
    def headers(self) -> dict[str, Any]:
        at = self.props.get("_headers_at")
        if at is None:
            return {}
        return P.headers(self.header, at)


def to_record(msg: Message, transient: bool = False) -> bytes:
    """The queue-log record of ``msg`` (``transient``: kept only for paging, not recovered)."""
    flags = record.F_TRANSIENT if transient else 0
    body = msg.body
    if body.__class__ is Body:
        return record.encode_parts(flags, msg.ts, msg.ex_rk, msg.header, body)  # type: ignore[arg-type]
    return record.encode(flags, msg.ts, msg.ex_rk, msg.header, body)  # type: ignore[arg-type]


def record_parts(msg: Message, transient: bool = False) -> list[bytes | memoryview]:
    """:func:`to_record` as its head and the body's pieces, not joined (a large body is
    written to the log from where it is: ``QueueLog.append_parts``)."""
    head = record.head(record.F_TRANSIENT if transient else 0, msg.ts, msg.ex_rk, msg.header)
    body = msg.body
    if body.__class__ is Body:
        return [head, *body.parts]  # type: ignore[union-attr]
    return [head, body]  # type: ignore[list-item]


#: ex_rk -> (exchange, routing key), for the recent ones (publishes, paging back in, recovery)
NAMES: dict[bytes, tuple[str, str]] = {}


def exchange_rk(ex_rk: bytes) -> tuple[str, str]:
    """The exchange and routing key in ``ex_rk`` (two AMQP short strings), remembered in
    ``NAMES``."""
    xl = ex_rk[0]
    names = (ex_rk[1 : 1 + xl].decode("utf-8", "surrogateescape"), ex_rk[2 + xl :].decode("utf-8", "surrogateescape"))
    if len(NAMES) >= 256:
        NAMES.clear()
    NAMES[ex_rk] = names
    return names


def from_record(payload: bytes) -> Message:
    _, ts, ex_rk, header, body = record.decode(payload)
    names = NAMES.get(ex_rk) or exchange_rk(ex_rk)
    msg = Message(ex_rk, names[0], names[1], header, body)
    msg.ts = ts
    return msg
