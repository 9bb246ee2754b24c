"""Sans-I/O AMQP 0-9-1 codec: bytes in, frames and methods out, bytes back.

Nothing in this package knows about sockets or asyncio.  ``frames`` splits a byte
stream into frames, ``methods`` decodes/encodes method frames (hand-written fast
paths for the hot methods, pamqp for the rest) and ``properties`` reads the few
content-header fields the broker needs straight from the raw property bytes.
"""

from leveret.protocol.constants import (
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
)
from leveret.protocol.frames import FrameError, FrameParser

__all__ = [
    "FRAME_BODY",
    "FRAME_END",
    "FRAME_HEADER",
    "FRAME_HEARTBEAT",
    "FRAME_METHOD",
    "FrameError",
    "FrameParser",
]
