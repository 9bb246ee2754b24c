"""Reading and rewriting content-header properties.

A content header payload is ``class(2) weight(2) body_size(8) flags(2..) properties``.
The broker passes the property bytes through untouched; when it needs a field
(delivery_mode, priority, expiration, headers, ...) it reads it here, lazily, without
decoding the rest.  Rewriting (direct reply-to, BCC, x-death) splices raw bytes
(:func:`rewrite`): what the broker does not change keeps its exact wire form.
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


def body_size(header_payload: bytes | memoryview) -> tuple[int, int]:
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


# ---------------------------------------------------------------------- raw rewriting
#
# What the broker writes into a content header itself (x-death, the x-first-death-*
# headers, BCC removal, direct reply-to) is spliced into the raw bytes: every other
# property and every header field keeps its exact wire form (field types included:
# decoding with pamqp and encoding back would turn a 64-bit ``l`` 5 into an 8-bit ``b``).

_FIXED_SIZE = {
    0x74: 1, 0x62: 1, 0x42: 1,  # t b B
    0x73: 2, 0x75: 2,  # s u
    0x49: 4, 0x69: 4, 0x66: 4,  # I i f
    0x6C: 8, 0x4C: 8, 0x64: 8, 0x54: 8,  # l L d T
    0x44: 5,  # D
    0x56: 0,  # V
    0x00: 0,  # (a void pamqp accepts too)
}
_SIZED = frozenset(b"SxFA")
_I64 = Struct(">q")
_U64 = Struct(">Q")
_I32 = Struct(">i")


def _value_end(data: bytes, pos: int) -> int:
    """The end of the field value (type octet first) that starts at ``pos``."""
    t = data[pos]
    n = _FIXED_SIZE.get(t)
    if n is not None:
        end = pos + 1 + n
    elif t in _SIZED:
        end = pos + 5 + _U32.unpack_from(data, pos + 1)[0]
    else:
        raise PropertyError(f"unknown field type {chr(t)!r}")
    if end > len(data):
        raise PropertyError("field value runs past its table")
    return end


def table_fields(data: bytes, at: int = 0) -> dict[bytes, bytes]:
    """The field table at ``at`` (its u32 size first) as raw key -> raw value (type octet
    and data), in wire order."""
    try:
        end = at + 4 + _U32.unpack_from(data, at)[0]
        if end > len(data):
            raise PropertyError("field table runs past its data")
        pos = at + 4
        out: dict[bytes, bytes] = {}
        while pos < end:
            n = data[pos]
            key = bytes(data[pos + 1 : pos + 1 + n])
            vend = _value_end(data, pos + 1 + n)
            out[key] = bytes(data[pos + 1 + n : vend])
            pos = vend
        if pos != end:
            raise PropertyError("field table size mismatch")
        return out
    except (IndexError, ValueError) as exc:  # struct.error is a ValueError
        raise PropertyError(f"malformed field table: {exc}") from None


def array_items(value: bytes) -> list[bytes]:
    """The raw items of a raw array value (``A``)."""
    if value[:1] != b"A":
        raise PropertyError("not a field array")
    try:
        end = 5 + _U32.unpack_from(value, 1)[0]
        pos, out = 5, []
        while pos < end:
            vend = _value_end(value, pos)
            out.append(value[pos:vend])
            pos = vend
        return out
    except (IndexError, ValueError) as exc:
        raise PropertyError(f"malformed field array: {exc}") from None


def field_value(value: bytes) -> Any:
    """A raw field value decoded (pamqp's types: ints lose their width)."""
    try:
        return decode.embedded_value(value)[1]
    except Exception as exc:
        raise PropertyError(f"malformed field value: {exc}") from None


def table_bytes(fields: dict[bytes, bytes] | list[tuple[bytes, bytes]]) -> bytes:
    """A field table (u32 size first) from raw key -> raw value pairs."""
    items = fields.items() if isinstance(fields, dict) else fields
    body = b"".join(bytes((len(k),)) + k + v for k, v in items)
    return _U32.pack(len(body)) + body


def longstr_value(s: str | bytes) -> bytes:
    """``S``: a long string."""
    raw = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s
    return b"S" + _U32.pack(len(raw)) + raw


def long_value(n: int) -> bytes:
    """``l``: a 64-bit signed integer (RabbitMQ's ``long``)."""
    return b"l" + _I64.pack(n)


def signedint_value(n: int) -> bytes:
    """``I``: a 32-bit signed integer (RabbitMQ's ``signedint``)."""
    return b"I" + _I32.pack(n)


def timestamp_value(seconds: int) -> bytes:
    """``T``: a timestamp, seconds since the epoch."""
    return b"T" + _U64.pack(seconds)


def array_value(items: list[bytes]) -> bytes:
    """``A``: an array of raw values."""
    body = b"".join(items)
    return b"A" + _U32.pack(len(body)) + body


def table_value(fields: dict[bytes, bytes] | list[tuple[bytes, bytes]]) -> bytes:
    """``F``: a nested table of raw values."""
    return b"F" + table_bytes(fields)


def shortstr_property(s: str) -> bytes:
    """A shortstr property's raw bytes (for :func:`rewrite`)."""
    raw = s.encode("utf-8", "surrogateescape")
    if len(raw) > 255:
        raise PropertyError("short string longer than 255 bytes")
    return bytes((len(raw),)) + raw


def rewrite(header_payload: bytes, changes: dict[int, bytes | None]) -> bytes:
    """The content header with the properties of ``changes`` (flag bit -> the property's
    raw bytes, e.g. :func:`table_bytes` or :func:`shortstr_property`; None removes it)
    replaced, added or removed; every other byte as it was."""
    data = header_payload
    try:
        flags = _U16.unpack_from(data, 12)[0]
        pos = 14
        parts: dict[int, bytes] = {}
        for bit, _name, kind in _FIELDS:
            if not flags & bit:
                continue
            if kind == "s":
                end = pos + 1 + data[pos]
            elif kind == "o":
                end = pos + 1
            elif kind == "q":
                end = pos + 8
            else:
                end = pos + 4 + _U32.unpack_from(data, pos)[0]
            parts[bit] = data[pos:end]
            pos = end
    except (IndexError, ValueError) as exc:
        raise PropertyError(f"malformed properties: {exc}") from None
    for bit, raw in changes.items():
        if raw is None:
            parts.pop(bit, None)
        else:
            parts[bit] = raw
    new_flags = 0
    out = []
    for bit, _name, _kind in _FIELDS:
        raw = parts.get(bit)
        if raw is not None:
            new_flags |= bit
            out.append(raw)
    return data[:12] + _U16.pack(new_flags) + b"".join(out)
