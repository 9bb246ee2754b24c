"""The payload of one message record in a queue log.

``u8 flags | f64 publish time | u16 len(a) | u32 len(b) | a | b | body``

The storage layer knows no AMQP: ``a`` and ``b`` are opaque byte strings to it (the broker
stores the exchange/routing-key short strings and the raw content header there).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

#: the head of a payload (big-endian, no padding: it can follow another struct's format)
HEAD_FORMAT = "BdHI"
_REC = struct.Struct(">" + HEAD_FORMAT)
HEAD_SIZE = _REC.size

Decoded = tuple[int, float, bytes, bytes, bytes]

#: the record only keeps a transient message's place in queue order while it is paged
#: out; recovery drops it
F_TRANSIENT = 1


def encode(flags: int, ts: float, a: bytes, b: bytes, body: bytes | bytearray | memoryview) -> bytes:
    return b"".join((_REC.pack(flags, ts, len(a), len(b)), a, b, body))


def head(flags: int, ts: float, a: bytes, b: bytes) -> bytes:
    """A payload's bytes before its body (a record written from its parts is this head
    and the body's pieces: ``QueueLog.append_parts``)."""
    return b"".join((_REC.pack(flags, ts, len(a), len(b)), a, b))


def encode_parts(flags: int, ts: float, a: bytes, b: bytes, body: Iterable[bytes | memoryview]) -> bytes:
    """:func:`encode` of a body given as pieces (joined once, into the record)."""
    return b"".join((_REC.pack(flags, ts, len(a), len(b)), a, b, *body))


def decode(payload: bytes) -> Decoded:
    """``(flags, ts, a, b, body)``."""
    flags, ts, al, bl = _REC.unpack_from(payload)
    o = HEAD_SIZE
    return flags, ts, payload[o : o + al], payload[o + al : o + al + bl], payload[o + al + bl :]


def body_size(payload: bytes | memoryview) -> int:
    """Size of the body in a record payload (0 for a short, damaged one)."""
    if len(payload) < HEAD_SIZE:
        return 0
    _, _, al, bl = _REC.unpack_from(payload)
    return max(0, len(payload) - HEAD_SIZE - al - bl)
