"""Incremental frame parser.

``FrameParser.feed(data)`` accepts any split of the byte stream and returns the
frames it now holds as ``(frame_type, channel, payload)`` tuples.  It checks the
frame-end octet, the frame type and the negotiated ``frame_max``; a violation raises
:class:`FrameError` and leaves the parser unusable (the connection must close with 501
FRAME_ERROR).

Body frames are not copied out of the read: a large one is returned as a
``memoryview`` slice of ``data``, and one cut by the end of a read is returned in
pieces as it arrives — every piece but the last as ``FRAME_BODY_PART``, the last (which
may be empty) as ``FRAME_BODY`` once its frame-end octet has been checked.  The body
bytes of a message are therefore copied once, when the publish assembly joins them.
Other frames are ``bytes``; a large one arriving in many reads is gathered as a list of
chunks and joined once.
"""

from __future__ import annotations

from struct import Struct

from leveret.protocol.constants import (
    FRAME_BODY,
    FRAME_BODY_PART,
    FRAME_END,
    FRAME_END_BYTE,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    FRAME_OVERHEAD,
)

_HEAD = Struct(">BHI")
_unpack_head = _HEAD.unpack_from
pack_head = _HEAD.pack
_VALID_TYPES = frozenset({FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT})

Frame = tuple[int, int, "bytes | memoryview"]

#: body frames at least this large are returned as memoryview slices of the read
VIEW_MIN = 4096


class FrameError(Exception):
    """The byte stream is not valid AMQP framing (reply code 501).  ``frames`` holds the
    valid frames that came before the bad one in the same ``feed`` call."""

    frames: list[Frame] = []


class FrameParser:
    """Turns a byte stream into ``(type, channel, payload)`` frames."""

    __slots__ = ("frame_max", "_buf", "_chunks", "_chunks_len", "_need", "_part_left", "_part_ch")

    def __init__(self, frame_max: int = FRAME_MIN_SIZE) -> None:
        self.frame_max = frame_max
        self._buf = b""
        self._chunks: list[bytes] = []
        self._chunks_len = 0
        self._need = 0  # total bytes needed to finish the frame being gathered in _chunks
        #: bytes still to come of the body frame being returned in pieces (its payload's
        #: rest and the frame-end octet); 0 when not inside one
        self._part_left = 0
        self._part_ch = 0

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf) + self._chunks_len

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return every frame completed by them, in order."""
        frames: list[Frame] = []
        try:
            return self._feed(data, frames)
        except FrameError as exc:
            exc.frames = frames
            raise

    def _feed(self, data: bytes, frames: list[Frame]) -> list[Frame]:
        pos = 0
        if self._chunks:
            self._chunks.append(data)
            self._chunks_len += len(data)
            if self._chunks_len < self._need:
                return frames
            data = b"".join(self._chunks)
            self._chunks = []
            self._chunks_len = 0
            self._need = 0
        elif self._buf:
            # finish the frame left over from the last read with the start of this one,
            # then parse the rest of ``data`` in place (no copy of the whole read)
            buf = self._buf
            if len(buf) < FRAME_HEADER_SIZE:
                take = FRAME_HEADER_SIZE - len(buf)
                buf += data[:take]
                pos = take
                if len(buf) < FRAME_HEADER_SIZE:
                    self._buf = buf
                    return frames
            ftype, channel, size = _unpack_head(buf, 0)
            self._check(ftype, size, buf, 0)
            self._buf = b""
            if ftype == FRAME_BODY:
                # (only a body frame's header is ever held: its payload comes in pieces)
                self._part_left = size + 1
                self._part_ch = channel
            else:
                missing = size + FRAME_OVERHEAD - len(buf)
                if missing > len(data) - pos:
                    return self._hold(buf + data[pos:], frames)
                if missing > 0:
                    buf += data[pos : pos + missing]
                    pos += missing
                if buf[-1] != FRAME_END:
                    raise FrameError(f"bad frame end octet {buf[-1]:#04x}")
                frames.append((ftype, channel, buf[FRAME_HEADER_SIZE:-1]))
        if self._part_left:
            # the rest of a body frame cut by the end of an earlier read
            rest = self._part_left
            avail = len(data) - pos
            if avail < rest:
                if avail:
                    frames.append((FRAME_BODY_PART, self._part_ch, memoryview(data)[pos:]))
                    self._part_left = rest - avail
                return frames
            end = pos + rest - 1
            if data[end] != FRAME_END:
                raise FrameError(f"bad frame end octet {data[end]:#04x}")
            frames.append((FRAME_BODY, self._part_ch, memoryview(data)[pos:end]))
            self._part_left = 0
            pos = end + 1
        append = frames.append
        n = len(data)
        max_payload = self.frame_max - FRAME_OVERHEAD
        view: memoryview | None = None
        while n - pos >= FRAME_HEADER_SIZE:
            ftype, channel, size = _unpack_head(data, pos)
            if ftype not in _VALID_TYPES or size > max_payload:
                self._check(ftype, size, data, pos)
            end = pos + FRAME_HEADER_SIZE + size
            if end >= n:
                if ftype == FRAME_BODY:
                    # a body frame cut by the end of the read: return what is here
                    start = pos + FRAME_HEADER_SIZE
                    if start < n:
                        if view is None:
                            view = memoryview(data)
                        append((FRAME_BODY_PART, channel, view[start:n]))
                    self._part_left = end + 1 - n
                    self._part_ch = channel
                    return frames
                break
            if data[end] != FRAME_END:
                raise FrameError(f"bad frame end octet {data[end]:#04x}")
            if size >= VIEW_MIN and ftype == FRAME_BODY:
                if view is None:
                    view = memoryview(data)
                append((ftype, channel, view[pos + FRAME_HEADER_SIZE : end]))
            else:
                append((ftype, channel, data[pos + FRAME_HEADER_SIZE : end]))
            pos = end + 1
        if pos < n:
            return self._hold(data[pos:], frames)
        return frames

    def _check(self, ftype: int, size: int, data: bytes, pos: int) -> None:
        if ftype not in _VALID_TYPES:
            raise FrameError(f"type {ftype}, first 16 octets = {bytes(data[pos:pos + 16])!r}")
        if size > self.frame_max - FRAME_OVERHEAD:
            raise FrameError(
                f"frame size {size + FRAME_OVERHEAD} larger than negotiated frame_max "
                f"{self.frame_max}"
            )

    def _hold(self, rest: bytes, frames: list[Frame]) -> list[Frame]:
        """Keep an incomplete frame; a large one is gathered as chunks, joined once."""
        if len(rest) >= FRAME_HEADER_SIZE:
            ftype, _, size = _unpack_head(rest, 0)
            self._check(ftype, size, rest, 0)
            need = size + FRAME_OVERHEAD
            if need > 65536:
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
