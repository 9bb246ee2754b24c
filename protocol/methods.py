"""Method frames: raw-bytes fast paths for the hot methods, pamqp for the rest.

Inbound hot methods (basic.publish, basic.ack, basic.nack, basic.reject) are decoded
with ``struct`` and slicing; outbound basic.deliver and the content frames are built by
concatenating pre-encoded pieces.  Every other method goes through pamqp's classes
(``decode_method`` / ``encode_method``).  ``encode_method`` skips pamqp's client-side
validation, which rejects names RabbitMQ accepts (e.g. 255-byte queue names).
"""

from __future__ import annotations

from struct import Struct

from pamqp import commands, decode, encode
from pamqp.base import Frame as PamqpMethod

from leveret.protocol.body import Body
from leveret.protocol.constants import (
    FRAME_BODY,
    FRAME_END_BYTE,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_METHOD,
)
from leveret.protocol.frames import pack_head

_U16 = Struct(">H")
_U32 = Struct(">I")
_U64 = Struct(">Q")
_TAG_BIT = Struct(">QB")
_unpack_tag_bit = _TAG_BIT.unpack_from
_pack_tag_bit = _TAG_BIT.pack
_HEADER_SIZE = Struct(">HHQ")

DELIVER_PREFIX = b"\x00\x3c\x00\x3c"  # class 60, method 60
GET_OK_PREFIX = b"\x00\x3c\x00\x47"  # class 60, method 71
RETURN_PREFIX = b"\x00\x3c\x00\x32"  # class 60, method 50
QUEUE_DECLARE_OK_PREFIX = b"\x00\x32\x00\x0b"  # class 50, method 11
ACK_PREFIX = b"\x00\x3c\x00\x50"
NACK_PREFIX = b"\x00\x3c\x00\x78"


class MethodDecodeError(Exception):
    """The method frame's arguments could not be decoded (502 SYNTAX_ERROR)."""


class UnknownMethod(Exception):
    """The class/method id pair is not an AMQP 0-9-1 method (540 NOT_IMPLEMENTED)."""


def method_index(payload: bytes) -> int:
    """class_id << 16 | method_id of a method frame payload."""
    if len(payload) < 4:
        raise MethodDecodeError("method frame too short")
    return _U32.unpack_from(payload)[0]


# --- inbound fast paths -------------------------------------------------------------

# basic.publish payload: class u16, method u16, reserved u16, exchange shortstr (its
# length octet at 6, its bytes from 7), routing key shortstr, flag bits
PUBLISH_EXCHANGE_AT = 7

def parse_publish(payload: bytes) -> tuple[bytes, int, int, bool, bool]:
    """basic.publish -> (exchange+routing-key wire bytes, exchange end, rk end, mandatory,
    immediate).

    The first element is the two short strings exactly as they appear on the wire, reused
    verbatim in basic.deliver; ``payload[6:exchange_end]`` is the exchange name and
    ``payload[exchange_end + 1:rk_end]`` the routing key.
    """
    try:
        el = payload[PUBLISH_EXCHANGE_AT - 1]
        ex_end = PUBLISH_EXCHANGE_AT + el
        rk_end = ex_end + 1 + payload[ex_end]
        bits = payload[rk_end]
    except IndexError:
        raise MethodDecodeError("truncated basic.publish") from None
    return payload[6:rk_end], ex_end, rk_end, bool(bits & 1), bool(bits & 2)


def parse_tag_bits(payload: bytes) -> tuple[int, int]:
    """basic.ack / basic.nack / basic.reject -> (delivery_tag, flag bits)."""
    if len(payload) < 13:
        raise MethodDecodeError("truncated method")
    return _unpack_tag_bit(payload, 4)


# --- outbound fast paths ------------------------------------------------------------

def shortstr(value: str | bytes) -> bytes:
    """Encode an AMQP short string."""
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) > 255:
        raise ValueError("short string longer than 255 bytes")
    return bytes((len(raw),)) + raw


def content_frames(
    channel: int, header_payload: bytes, body: bytes | Body, frame_max: int, method_frame: bytes = b""
) -> list[bytes | memoryview]:
    """``method_frame`` (basic.deliver, get-ok, return; already a frame), the content
    header frame and as many body frames as frame_max requires.  The small frames and the
    first body frame's head go out as one piece; the body's bytes are not copied (large
    ones go out as memoryview slices, for writev)."""
    blen = len(body)
    chunk = frame_max - 8
    if 0 < blen <= chunk:
        # (the hot path: one body frame)
        first = b"".join(
            (
                method_frame,
                pack_head(FRAME_HEADER, channel, len(header_payload)),
                header_payload,
                FRAME_END_BYTE,
                pack_head(FRAME_BODY, channel, blen),
            )
        )
        if body.__class__ is Body:
            return [first, *body.parts, FRAME_END_BYTE]  # type: ignore[union-attr, list-item]
        return [first, body, FRAME_END_BYTE]  # type: ignore[list-item]
    out: list[bytes | memoryview] = [
        b"".join((method_frame, pack_head(FRAME_HEADER, channel, len(header_payload)), header_payload, FRAME_END_BYTE))
    ]
    if not blen:
        return out
    if body.__class__ is Body:
        _cut_parts(out, channel, body.parts, blen, chunk)  # type: ignore[union-attr]
    else:
        view = memoryview(body)  # type: ignore[arg-type]
        for start in range(0, blen, chunk):
            part = view[start : start + chunk]
            out.append(pack_head(FRAME_BODY, channel, len(part)))
            out.append(part)
            out.append(FRAME_END_BYTE)
    return out


def _cut_parts(
    out: list[bytes | memoryview], channel: int, parts: tuple[bytes | memoryview, ...], blen: int, chunk: int
) -> None:
    """Body frames of at most ``chunk`` payload bytes over the pieces of a body: a frame's
    payload may be several pieces (or slices of them), a piece may span frames."""
    room = 0  # payload bytes still to put into the frame being written
    first = True
    for part in parts:
        n = len(part)
        if n <= room:
            out.append(part)
            room -= n
            blen -= n
            continue
        view = part if part.__class__ is memoryview else memoryview(part)
        pos = 0
        while pos < n:
            if not room:
                if first:
                    first = False
                else:
                    out.append(FRAME_END_BYTE)
                room = chunk if blen > chunk else blen
                out.append(pack_head(FRAME_BODY, channel, room))
            take = n - pos if n - pos < room else room
            out.append(part if take == n else view[pos : pos + take])
            pos += take
            room -= take
            blen -= take
    out.append(FRAME_END_BYTE)


def deliver_frame(channel: int, ctag: bytes, tag: int, redelivered: bool, ex_rk: bytes) -> bytes:
    """basic.deliver method frame; ``ctag`` is the encoded short string."""
    size = 4 + len(ctag) + 9 + len(ex_rk)
    return b"".join(
        (
            pack_head(FRAME_METHOD, channel, size),
            DELIVER_PREFIX,
            ctag,
            _pack_tag_bit(tag, redelivered),
            ex_rk,
            FRAME_END_BYTE,
        )
    )


class Deliveries:
    """basic.deliver and its content frames for one channel: :func:`deliver_frame`
    followed by :func:`content_frames`.  A stream of like deliveries (same consumer tag,
    exchange and routing key, header, body size that fits one frame) differs only in the
    delivery tag, so from the second of them in a row on, those functions' bytes are kept
    cut at the tag (the frame head and consumer tag before it; exchange and routing key,
    the header frame and the body frame's head after it), and a delivery is one pack and
    one join.  A delivery unlike the last goes through the two functions as it is."""

    __slots__ = ("channel", "_key", "_before", "_after")

    def __init__(self, channel: int) -> None:
        self.channel = channel
        self._key: tuple[bytes, bytes, bytes, int] | None = None  # the last delivery's
        self._before: bytes | None = None  # the bytes around the tag, kept for _key (None: not yet)
        self._after = b""

    def frames(
        self, ctag: bytes, tag: int, redelivered: bool, ex_rk: bytes, header_payload: bytes, body: bytes | Body,
        frame_max: int,
    ) -> list[bytes | memoryview]:
        blen = len(body)
        channel = self.channel
        key = self._key
        before = self._before
        if not 0 < blen <= frame_max - 8:
            before = None  # (a body of several frames, or none: nothing kept)
        elif key is None or key[2] != header_payload or key[3] != blen or key[1] != ex_rk or key[0] != ctag:
            self._key = (ctag, ex_rk, header_payload, blen)
            self._before = before = None
        elif before is None:
            # the second like delivery in a row: the same bytes, cut at the tag, kept
            method = deliver_frame(channel, ctag, 0, False, ex_rk)
            cut = FRAME_HEADER_SIZE + len(DELIVER_PREFIX) + len(ctag)
            before = self._before = method[:cut]
            self._after = method[cut + _TAG_BIT.size :] + content_frames(channel, header_payload, body, frame_max)[0]
        if before is None:
            return content_frames(
                channel, header_payload, body, frame_max, deliver_frame(channel, ctag, tag, redelivered, ex_rk)
            )
        first = b"".join((before, _pack_tag_bit(tag, redelivered), self._after))
        if body.__class__ is Body:
            return [first, *body.parts, FRAME_END_BYTE]  # type: ignore[union-attr, list-item]
        return [first, body, FRAME_END_BYTE]  # type: ignore[list-item]


def get_ok_frame(channel: int, tag: int, redelivered: bool, ex_rk: bytes, count: int) -> bytes:
    payload = GET_OK_PREFIX + _pack_tag_bit(tag, redelivered) + ex_rk + _U32.pack(count)
    return pack_head(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


def return_frame(channel: int, code: int, text: str, ex_rk: bytes) -> bytes:
    payload = RETURN_PREFIX + _U16.pack(code) + shortstr(text) + ex_rk
    return pack_head(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


def queue_declare_ok_frame(channel: int, queue: str, message_count: int, consumer_count: int) -> bytes:
    """queue.declare-ok, encoded here rather than by pamqp, whose queue-name check (the
    spec's ``[a-zA-Z0-9-_.:@#,/+ ]``) RabbitMQ does not make: any name that fits a short
    string is a queue name there."""
    payload = QUEUE_DECLARE_OK_PREFIX + shortstr(queue) + _U32.pack(message_count) + _U32.pack(consumer_count)
    return pack_head(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


def confirm_frame(channel: int, tag: int, multiple: bool, nack: bool = False) -> bytes:
    """basic.ack or basic.nack (requeue=false) from the server, for publisher confirms."""
    if nack:
        return pack_head(FRAME_METHOD, channel, 13) + NACK_PREFIX + _pack_tag_bit(tag, multiple) + FRAME_END_BYTE
    return pack_head(FRAME_METHOD, channel, 13) + ACK_PREFIX + _pack_tag_bit(tag, multiple) + FRAME_END_BYTE


def header_payload(body_size: int, properties: bytes = b"\x00\x00") -> bytes:
    """Content header payload for class basic: properties are the raw flags+list bytes."""
    return _HEADER_SIZE.pack(60, 0, body_size) + properties


# --- pamqp for everything else ------------------------------------------------------

def decode_method(payload: bytes) -> PamqpMethod:
    """Decode any method frame payload into a pamqp command object."""
    index = method_index(payload)
    cls = commands.INDEX_MAPPING.get(index)
    if cls is None:
        raise UnknownMethod(f"unknown method class={index >> 16} method={index & 0xFFFF}")
    method = cls.__new__(cls)  # type: ignore[call-overload]
    try:
        _unmarshal(method, memoryview(payload)[4:].tobytes())
    except Exception as exc:  # struct.error, ValueError, IndexError, UnicodeDecodeError...
        raise MethodDecodeError(f"cannot decode {cls.__name__}: {exc}") from None
    return method


def _unmarshal(method: PamqpMethod, data: bytes) -> None:
    offset, in_bits = 0, False
    for argument in method.__slots__:  # type: ignore[attr-defined]
        data_type = method.amqp_type(argument)
        if in_bits and (data_type != "bit" or offset == 8):
            data = data[1:]
            offset = 0
            in_bits = False
        if data_type == "bit":
            if not data:
                raise ValueError("missing bit field")
            consumed, value = decode.bit(data, offset)
            offset += 1
            in_bits = True
            consumed = 0
        else:
            consumed, value = decode.by_type(data, data_type)  # type: ignore[assignment]
        setattr(method, argument, value)
        if consumed:
            data = data[consumed:]


def encode_method(channel: int, method: PamqpMethod) -> bytes:
    """A complete method frame for a pamqp command object (no client-side validation)."""
    out = [_U32.pack(method.index)]
    byte, offset, in_bits = 0, 0, False
    for argument in method.__slots__:  # type: ignore[attr-defined]
        data_type = method.amqp_type(argument)
        value = getattr(method, argument, 0)
        if data_type == "bit":
            if not in_bits:
                byte, offset, in_bits = 0, 0, True
            byte = encode.bit(value or 0, byte, offset)
            offset += 1
            if offset == 8:
                out.append(encode.octet(byte))
                in_bits = False
            continue
        if in_bits:
            out.append(encode.octet(byte))
            in_bits = False
        if data_type == "shortstr" and isinstance(value, str):
            out.append(shortstr(value))
        else:
            out.append(encode.by_type(value, data_type))
    if in_bits:
        out.append(encode.octet(byte))
    payload = b"".join(out)
    return pack_head(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


def channel_open_ok_frame(channel: int) -> bytes:
    """channel.open-ok with an empty channel-id long string, as RabbitMQ sends it."""
    payload = b"\x00\x14\x00\x0b\x00\x00\x00\x00"
    return pack_head(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE
