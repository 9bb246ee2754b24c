"""Reading and rewriting content-header properties.

A content header payload is ``class(2) weight(2) body_size(8) flags(2..) properties``.
The broker passes the property bytes through untouched; when it needs a field
(delivery_mode, priority, expiration, headers, ...) it reads it here, lazily, without
decoding the rest.  Rewriting (direct reply-to, BCC, x-death) goes through pamqp.
"""

from __future__ import annotations

from struct import Struct
from typing import Any

from pamqp import decode, encode
from pamqp.commands import Basic

_U16 = Struct(">H")
_U32 = Struct(">I")
_HEADER = Struct(">HHQ")

# property flag bits, in wire order
F_CONTENT_TYPE = 1 << 15
F_CONTENT_ENCODING = 1 << 14
F_HEADERS = 1 << 13
F_DELIVERY_MODE = 1 << 12
F_PRIORITY = 1 << 11
F_CORRELATION_ID = 1 << 10
F_REPLY_TO = 1 << 9
F_EXPIRATION = 1 << 8
F_MESSAGE_ID = 1 << 7
F_TIMESTAMP = 1 << 6
F_TYPE = 1 << 5
F_USER_ID = 1 << 4
F_APP_ID = 1 << 3
F_CLUSTER_ID = 1 << 2

# The fast paths test one flag byte of a raw content-header payload (class u16, weight
# u16, body size u64, then the property flags): ``header[FLAGS_HI] & HI_EXPIRATION``.
FLAGS_HI = 12  # offset of the first flag byte (flags 15..8)
FLAGS_LO = 13  # offset of the second (flags 7..0)
HI_HEADERS = F_HEADERS >> 8
HI_DELIVERY_MODE = F_DELIVERY_MODE >> 8
HI_PRIORITY = F_PRIORITY >> 8
HI_REPLY_TO = F_REPLY_TO >> 8
HI_EXPIRATION = F_EXPIRATION >> 8
LO_USER_ID = F_USER_ID
#: delivery_mode is the first property present when the first flag byte is exactly this
#: (nothing before it): its value is then the byte right after the flags
HI_ONLY_DELIVERY_MODE_FIRST = 0x10

_FIELDS = (
    (F_CONTENT_TYPE, "content_type", "s"),
    (F_CONTENT_ENCODING, "content_encoding", "s"),
    (F_HEADERS, "headers", "t"),
    (F_DELIVERY_MODE, "delivery_mode", "o"),
    (F_PRIORITY, "priority", "o"),
    (F_CORRELATION_ID, "correlation_id", "s"),
    (F_REPLY_TO, "reply_to", "s"),
    (F_EXPIRATION, "expiration", "s"),
    (F_MESSAGE_ID, "message_id", "s"),
    (F_TIMESTAMP, "timestamp", "q"),
    (F_TYPE, "message_type", "s"),
    (F_USER_ID, "user_id", "s"),
    (F_APP_ID, "app_id", "s"),
    (F_CLUSTER_ID, "cluster_id", "s"),
)


class PropertyError(Exception):
    """The content header's property list is malformed."""


def body_size(header_payload: bytes) -> tuple[int, int]:
    """(class_id, body_size) of a content header payload."""
    if len(header_payload) < 14:
        raise PropertyError("content header too short")
    class_id, _weight, size = _HEADER.unpack_from(header_payload)
    return class_id, size


def scan(header_payload: bytes) -> dict[str, Any]:
    """Decode the scalar properties (not the headers table) into a dict.

    Only the fields present appear.  ``headers`` is given as the raw table bytes offset
    (key ``_headers_at``) so the table is decoded only if someone asks for it.
    """
    data = header_payload
    try:
        flags = _U16.unpack_from(data, 12)[0]
        pos = 14
        while data[pos - 1] & 1:  # continuation flag words (none are defined for basic)
            pos += 2
        out: dict[str, Any] = {}
        if not flags:
            return out
        for bit, name, kind in _FIELDS:
            if not flags & bit:
                continue
            if kind == "s":
                n = data[pos]
                out[name] = data[pos + 1 : pos + 1 + n].decode("utf-8", "surrogateescape")
                pos += 1 + n
            elif kind == "o":
                out[name] = data[pos]
                pos += 1
            elif kind == "q":
                out[name] = int.from_bytes(data[pos : pos + 8], "big")
                pos += 8
            else:  # table
                n = _U32.unpack_from(data, pos)[0]
                out["_headers_at"] = pos
                pos += 4 + n
        if pos > len(data):
            raise PropertyError("property list runs past the content header")
        return out
    except (IndexError, ValueError) as exc:
        raise PropertyError(f"malformed properties: {exc}") from None


def headers(header_payload: bytes, at: int) -> dict[str, Any]:
    """Decode the headers table found at offset ``at`` (from :func:`scan`)."""
    try:
        return decode.field_table(header_payload[at:])[1]
    except Exception as exc:
        raise PropertyError(f"malformed headers table: {exc}") from None


def decode_properties(header_payload: bytes) -> Basic.Properties:
    """All properties as a pamqp object (slow path)."""
    flags = _U16.unpack_from(header_payload, 12)[0]
    props = Basic.Properties()
    props.unmarshal(flags, header_payload[14:])
    return props


def _encode_value(v: Any) -> bytes:
    # pamqp alone cannot do these: a longstr that is not UTF-8 (decoded to bytes) and
    # doubles (it writes every float as a 32-bit 'f', losing precision)
    if isinstance(v, bytes):
        return b"S" + _U32.pack(len(v)) + v
    if isinstance(v, float):
        return b"d" + Struct(">d").pack(v)
    if isinstance(v, dict):
        return b"F" + field_table(v)
    if isinstance(v, list):
        items = b"".join(_encode_value(i) for i in v)
        return b"A" + _U32.pack(len(items)) + items
    return encode.encode_table_value(v)


def field_table(table: dict[str, Any]) -> bytes:
    """A field table as pamqp decoded it, encoded back without loss."""
    fields = b"".join(encode.short_string(k) + _encode_value(v) for k, v in table.items())
    return _U32.pack(len(fields)) + fields


def encode_properties(props: Basic.Properties, body_size_: int) -> bytes:
    """A content header payload for pamqp properties (slow path)."""
    headers = props.headers
    if headers is None:
        return _HEADER.pack(60, 0, body_size_) + props.marshal()
    # the headers table (third property) is encoded here, exactly
    props.headers = None
    try:
        raw = props.marshal()
    finally:
        props.headers = headers
    at = 2
    flags = _U16.unpack_from(raw)[0]
    for bit in (F_CONTENT_TYPE, F_CONTENT_ENCODING):
        if flags & bit:
            at += 1 + raw[at]
    return (
        _HEADER.pack(60, 0, body_size_)
        + _U16.pack(flags | F_HEADERS)
        + raw[2:at]
        + field_table(headers)
        + raw[at:]
    )


def with_body_size(header_payload: bytes, size: int) -> bytes:
    return _HEADER.pack(60, 0, size) + header_payload[12:]
