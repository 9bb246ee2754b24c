"""Incremental frame parser.

``FrameParser.feed(data)`` accepts any split of the byte stream and returns the
complete frames it now holds as ``(frame_type, channel, payload)`` tuples.  It checks
the frame-end octet, the frame type and the negotiated ``frame_max``; a violation
raises :class:`FrameError` and leaves the parser unusable (the connection must close
with 501 FRAME_ERROR).  Large frames arriving in many reads are gathered as a list of
chunks and joined once, so a 128 MiB body costs one copy, not one per read.
"""

from __future__ import annotations

from struct import Struct

from protocol.constants import (
    FRAME_BODY,
    FRAME_END,
    FRAME_END_BYTE,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    FRAME_OVERHEAD,
)

_HEAD = Struct(">BHI")
_unpack_head = _HEAD.unpack_from
pack_head = _HEAD.pack
_VALID_TYPES = frozenset({FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT})

Frame = tuple[int, int, bytes]


class FrameError(Exception):
    """The byte stream is not valid AMQP framing (reply code 501)."""


class FrameParser:
    """Turns a byte stream into ``(type, channel, payload)`` frames."""

    __slots__ = ("frame_max", "_buf", "_chunks", "_chunks_len", "_need")

    def __init__(self, frame_max: int = FRAME_MIN_SIZE) -> None:
        self.frame_max = frame_max
        self._buf = b""
        self._chunks: list[bytes] = []
        self._chunks_len = 0
        self._need = 0  # total bytes needed to finish the frame being gathered in _chunks

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf) + self._chunks_len

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return every frame completed by them, in order."""
        if self._chunks:
            self._chunks.append(data)
            self._chunks_len += len(data)
            if self._chunks_len < self._need:
                return []
            data = b"".join(self._chunks)
            self._chunks = []
            self._chunks_len = 0
            self._need = 0
        elif self._buf:
            data = self._buf + data
        frames: list[Frame] = []
        append = frames.append
        pos = 0
        n = len(data)
        max_payload = self.frame_max - FRAME_OVERHEAD
        while n - pos >= 7:
            ftype, channel, size = _unpack_head(data, pos)
            if ftype not in _VALID_TYPES:
                raise FrameError(f"type {ftype}, first 16 octets = {bytes(data[pos:pos + 16])!r}")
            if size > max_payload:
                raise FrameError(
                    f"frame size {size + FRAME_OVERHEAD} larger than negotiated frame_max "
                    f"{self.frame_max}"
                )
            end = pos + 7 + size
            if end >= n:
                break
            if data[end] != FRAME_END:
                raise FrameError(f"bad frame end octet {data[end]:#04x}")
            append((ftype, channel, data[pos + 7 : end]))
            pos = end + 1
        rest = data[pos:] if pos < n else b""
        if len(rest) >= 7:
            size = _unpack_head(rest, 0)[2]
            need = size + FRAME_OVERHEAD
            if need > 65536 and need > len(rest):
                self._chunks = [rest]
                self._chunks_len = len(rest)
                self._need = need
                self._buf = b""
                return frames
        self._buf = rest
        return frames


def build_frame(ftype: int, channel: int, payload: bytes) -> bytes:
    """One complete frame."""
    return pack_head(ftype, channel, len(payload)) + payload + FRAME_END_BYTE


HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
