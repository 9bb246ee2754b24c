"""Publish assembly: basic.publish + content header + body frames -> a Message.

One :class:`PublishAssembly` per channel.  basic.publish arrives as a raw payload
(:meth:`start`), then the content header and body frames (:meth:`content`); when the body
is complete the finished :class:`~leveret.broker.core.message.Message` is returned with the
publish's mandatory flag.  Errors are RabbitMQ's (505 for a frame out of order, 501 for a
bad header, 406 for a message over the size limit).

A body is kept as the list of the body frames received so far, joined once complete: nothing
is allocated ahead of the bytes that arrived, whatever size the content header announces.
The parts are the frame parser's memoryviews of the reads (a body frame cut by the end of a
read comes as FRAME_BODY_PART pieces); a part under a quarter of its read (``PIN_RATIO``) is
copied out rather than keeping the read alive.  A complete body is kept as those parts, a
:class:`~leveret.protocol.body.Body`, so its bytes are not copied between the socket and the
consumers' sockets (nor into the queue log: ``QueueLog.append_parts``), and the reads it keeps
alive hold at most four times its bytes.
A message over ``max_message_size`` is refused as RabbitMQ 3.10 refuses it: its header is
taken, the whole body is awaited (frames in between are the usual 505), and only then is the
channel closed with 406 "message size N is larger than configured max size M".  Its body
bytes are counted down and dropped as they arrive, so a peer announcing 2^62 bytes and
sending them forever holds no memory; the parts of a body within the limit count towards the
memory alarm (``node.queued_bytes``) until the message is complete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from leveret.broker.config import MAX_MESSAGE_SIZE_LIMIT
from leveret.broker.core.errors import AMQPError
from leveret.broker.core.message import NAMES, Message, exchange_rk
from leveret.protocol import methods as M
from leveret.protocol import properties as P
from leveret.protocol.body import Body
from leveret.protocol.constants import (
    FRAME_BODY,
    FRAME_BODY_PART,
    FRAME_ERROR,
    FRAME_HEADER,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    UNEXPECTED_FRAME,
    Method,
)

if TYPE_CHECKING:
    from leveret.broker.wire.node import WireNode

#: a piece of a body is kept as a view of the read it came in when that read is at most
#: this many times the piece (else copied out): so the reads a body keeps alive are at most
#: PIN_RATIO times its size, and a part of a body still arriving at most PIN_RATIO times
#: what the memory alarm counts for it
PIN_RATIO = 4


def max_message_size(configured: int) -> int:
    """The limit in force: the setting, capped at 512 MiB as RabbitMQ caps it."""
    return min(configured, MAX_MESSAGE_SIZE_LIMIT)


def too_large(size: int, limit: int) -> AMQPError:
    """RabbitMQ's 406 for a message body over the limit (``check_msg_size``)."""
    what = "max size" if limit == MAX_MESSAGE_SIZE_LIMIT else "configured max size"
    return AMQPError(PRECONDITION_FAILED, f"message size {size} is larger than {what} {limit}", *Method.BASIC_PUBLISH)


class PublishAssembly:
    __slots__ = (
        "node",
        "pending",
        "mandatory",
        "max_size",
        "_header",
        "_body",
        "_body_held",
        "_body_left",
        "_oversize",
        "_last_publish",
        "_last_header",
    )

    def __init__(self, node: WireNode) -> None:
        self.node = node
        #: the basic.publish waiting for its header/body: (ex_rk, exchange, routing key);
        #: None when no content is expected
        self.pending: tuple[bytes, str, str] | None = None
        self.mandatory = False  # of the pending publish (and of the message just completed)
        self.max_size = max_message_size(node.config.max_message_size)
        self._header: bytes | None = None
        #: the parts of a body arriving in several frames: the parser's memoryviews of the
        #: reads (or copies, for a small part of a large read), joined once at the end
        self._body: list[bytes | memoryview] = []
        self._body_held = 0  # bytes of _body counted in node.queued_bytes
        self._body_left = 0
        self._oversize = 0  # the announced size of a body over max_size (kept: none of it)
        #: the last basic.publish :meth:`whole` decoded: (payload, ex_rk, exchange, routing
        #: key, mandatory)
        self._last_publish: tuple[bytes, bytes, str, str, bool] | None = None
        #: and the last content header it read: (header, body size)
        self._last_header: tuple[bytes, int] | None = None

    def content_expected(self) -> AMQPError:
        """The error for a method frame that arrived while content is expected."""
        what = "content header for class 60" if self._header is None else "content body"
        kind = "header" if self._header is None else "body"
        return AMQPError(UNEXPECTED_FRAME, f"expected {what}, got non content {kind} frame instead", *Method.BASIC_PUBLISH)

    def start(self, payload: bytes) -> None:
        """basic.publish (raw payload)."""
        try:
            ex_rk, _, _, mandatory, immediate = M.parse_publish(payload)
        except M.MethodDecodeError as exc:
            # RabbitMQ: 501 "cannot decode" for malformed method arguments
            raise AMQPError(FRAME_ERROR, str(exc), *Method.BASIC_PUBLISH) from None
        if immediate:
            raise AMQPError(NOT_IMPLEMENTED, "immediate=true", *Method.BASIC_PUBLISH)
        exchange, rk = NAMES.get(ex_rk) or exchange_rk(ex_rk)
        self.pending = (ex_rk, exchange, rk)
        self.mandatory = mandatory

    def whole(self, payload: bytes, header: bytes | memoryview, body: bytes | memoryview) -> Message | None:
        """basic.publish, its content header and its one body frame, arrived together: the
        message in one step (the hot path), its mandatory flag in ``self.mandatory``.  None
        for anything but a well-formed publish whose body is exactly that frame (immediate,
        a bad header, a body in several frames or over the limit, content expected): the
        frames then go through :meth:`start` and :meth:`content` one by one, which decide."""
        if self.pending is not None:
            return None
        last = self._last_publish
        if last is not None and last[0] == payload:
            # (a publisher sends the same basic.publish over and over: decoded once)
            _, ex_rk, exchange, rk, mandatory = last
        else:
            try:
                ex_rk, _, _, mandatory, immediate = M.parse_publish(payload)
            except M.MethodDecodeError:
                return None
            if immediate:
                return None
            exchange, rk = NAMES.get(ex_rk) or exchange_rk(ex_rk)
            self._last_publish = (payload, ex_rk, exchange, rk, mandatory)
        last_header = self._last_header
        if last_header is not None and last_header[0] == header:
            size = last_header[1]
        else:
            try:
                class_id, size = P.body_size(header)
            except P.PropertyError:
                return None
            if class_id != 60:
                return None
            self._last_header = (header, size)  # type: ignore[assignment]
        if size != len(body) or size > self.max_size or not size:
            return None
        self.mandatory = mandatory
        return Message(ex_rk, exchange, rk, header, body if body.__class__ is bytes else self._keep_view(body))  # type: ignore[arg-type]

    def content(self, ftype: int, payload: bytes | memoryview) -> Message | None:
        """A content header or body frame; the message once complete (its publish's
        mandatory flag is then in ``self.mandatory``)."""
        if self.pending is None:
            raise AMQPError(UNEXPECTED_FRAME, "expected method frame, got non method frame instead")
        if self._header is None:
            if ftype != FRAME_HEADER:
                raise AMQPError(
                    UNEXPECTED_FRAME,
                    "expected content header for class 60, got non content header frame instead",
                    *Method.BASIC_PUBLISH,
                )
            try:
                class_id, size = P.body_size(payload)
            except P.PropertyError as exc:
                raise AMQPError(FRAME_ERROR, str(exc), *Method.BASIC_PUBLISH) from None
            if class_id != 60:
                raise AMQPError(
                    UNEXPECTED_FRAME,
                    f"expected content header for class 60, got one for class {class_id} instead",
                    *Method.BASIC_PUBLISH,
                )
            if size > self.max_size:
                # RabbitMQ reads the whole body before refusing it; drop it as it comes
                self._oversize = size
            self._header = payload  # type: ignore[assignment]  # header frames are bytes
            self._body_left = size
            if size == 0:
                return self._complete(b"")
            return None
        if ftype != FRAME_BODY:
            if ftype == FRAME_BODY_PART:
                self._part(payload)
                return None
            raise AMQPError(UNEXPECTED_FRAME, "expected content body, got non content body frame instead", *Method.BASIC_PUBLISH)
        left = self._body_left - len(payload)
        if left < 0:
            # RabbitMQ keeps waiting for a body that can no longer complete (the next
            # non-body frame is a 505); do the same, without keeping the bytes
            self.release()
            self._body_left = -1
            return None
        if left == 0:
            body: bytes | Body
            if self._body:
                body = self._whole(payload)
            elif self._oversize:
                raise self._refuse()
            elif payload.__class__ is bytes:
                body = payload  # type: ignore[assignment]
            else:
                body = self._keep_view(payload)  # type: ignore[arg-type]
            # (the last body frame, inline: this is the hot path)
            ex_rk, exchange, rk = self.pending  # type: ignore[misc]
            header = self._header
            self.pending = None
            self._header = None
            return Message(ex_rk, exchange, rk, header, body)
        self._body_left = left
        if not self._oversize:  # (a body to be refused once complete: nothing kept)
            self._keep(payload)
        return None

    def _part(self, payload: bytes | memoryview) -> None:
        """A piece of a body frame cut by the end of a read (the frame's last piece, which
        ends the message if any, comes as FRAME_BODY)."""
        left = self._body_left - len(payload)
        if left < 0:
            self.release()
            self._body_left = -1
            return None
        # (left == 0: the body is complete unless the frame goes on; its last piece decides)
        self._body_left = left
        if not self._oversize:
            self._keep(payload)
        return None

    def _whole(self, last: bytes | memoryview) -> Body:
        """The body from its parts, as they are: the views of the reads (no copy), pieces
        much smaller than their read copied out (:meth:`_keep`'s rule, so the reads a body
        keeps alive hold at most ``PIN_RATIO`` times its bytes)."""
        parts = self._body
        if last:
            if last.__class__ is memoryview and len(last) * PIN_RATIO < len(last.obj):  # type: ignore[union-attr, arg-type]
                last = bytes(last)
            parts.append(last)
        size = self._body_held + len(last)
        self.release()
        return Body(tuple(parts), size)

    @staticmethod
    def _keep_view(view: memoryview) -> bytes | Body:
        """A body in one frame, a view of a read: kept as it is unless the read is more than
        ``PIN_RATIO`` times its size (a read is at most 256 KiB: a body of 64 KiB or more
        in one frame is never copied)."""
        if PIN_RATIO * len(view) >= len(view.obj):  # type: ignore[arg-type]
            return Body((view,), len(view))
        return bytes(view)

    def _keep(self, payload: bytes | memoryview) -> None:
        """Hold a part of a body arriving in pieces until the last one."""
        if payload.__class__ is memoryview and len(payload) * PIN_RATIO < len(payload.obj):  # type: ignore[union-attr, arg-type]
            # a small view would keep a much larger read alive: copy it
            payload = bytes(payload)
        self._body.append(payload)
        # a body arriving in pieces counts towards the memory alarm, so many channels
        # each holding a part of a large message cannot grow memory without bound
        self._body_held += len(payload)
        self.node.queued_bytes += len(payload)

    def _refuse(self) -> AMQPError:
        """The body over the limit is complete: RabbitMQ's 406 (the channel closes)."""
        error = too_large(self._oversize, self.max_size)
        self.reset()
        return error

    def _complete(self, body: bytes) -> Message:
        assert self.pending is not None and self._header is not None
        ex_rk, exchange, rk = self.pending
        header = self._header
        self.pending = None
        self._header = None
        return Message(ex_rk, exchange, rk, header, body)

    def release(self) -> None:
        """Forget the body parts received so far (and their memory-alarm count)."""
        self._body = []
        if self._body_held:
            self.node.queued_bytes -= self._body_held
            self._body_held = 0

    def reset(self) -> None:
        """The channel is closing: drop the publish in progress."""
        self.pending = None
        self._header = None
        self._oversize = 0
        self.release()
