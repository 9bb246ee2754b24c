"""A message body kept as the pieces it arrived in.

A large body arrives in several body frames, spread over several socket reads; the frame
parser hands out its bytes as ``memoryview`` slices of those reads.  Rather than joining
them (a copy of every body byte, into memory that then lives as long as the message), the
publish assembly may keep them as a :class:`Body`, and :func:`leveret.protocol.methods.
content_frames` writes them out again as they are (``writev`` of the pieces, re-cut to the
consumer's ``frame_max``).  Whoever needs the bytes in one piece asks ``bytes(body)``.
"""

from __future__ import annotations

from collections.abc import Iterator


class Body:
    """The pieces of one message body, in order (``len()`` is the body size)."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: tuple[bytes | memoryview, ...], size: int) -> None:
        self.parts = parts
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)

    def __iter__(self) -> Iterator[bytes | memoryview]:
        return iter(self.parts)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Body):
            return bytes(self) == bytes(other)
        if isinstance(other, (bytes, bytearray, memoryview)):
            return len(other) == self.size and bytes(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Body({len(self.parts)} parts, {self.size} bytes)"
