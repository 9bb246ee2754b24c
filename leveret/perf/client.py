"""A minimal AMQP 0-9-1 client on ``asyncio.Protocol``, made for the load generator.

Only what ``leveret-perf`` needs: the handshake (PLAIN), one channel per connection, and
methods sent and awaited one at a time (``rpc``).  pamqp encodes and decodes the rare
methods (handshake, declares, close, blocked); the hot paths are parsed by hand in
:meth:`Connection.data_received`: ``basic.deliver`` + content header + body frames (counted,
latency taken from the body's first 8 bytes, acked in one write per read) and the
``basic.ack`` / ``basic.nack`` of publisher confirms.  Publishing is done by the caller with
pre-encoded frames written straight to :attr:`Connection.transport`.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = 0xCE
FRAME_HEADER = struct.Struct(">BHI")
CLASS_METHOD = struct.Struct(">I")  # class id << 16 | method id
U64 = struct.Struct(">Q")
ACK_FRAME = struct.Struct(">BHIHHQBB")  # a whole basic.ack method frame
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

BASIC_DELIVER = (60 << 16) | 60
BASIC_ACK = (60 << 16) | 80
BASIC_NACK = (60 << 16) | 120

CLIENT_PROPERTIES: dict[str, Any] = {
    "product": "leveret-perf",
    "platform": "Python",
    "capabilities": {
        "publisher_confirms": True,
        "basic.nack": True,
        "consumer_cancel_notify": True,
        "connection.blocked": True,
        "authentication_failure_close": True,
    },
}


@dataclass(frozen=True)
class AmqpUri:
    host: str
    port: int
    user: str
    password: str
    vhost: str
    heartbeat: int = 0
    frame_max: int = 131072

    def masked(self) -> str:
        """The URI with the password hidden, for output."""
        vhost = "%2F" if self.vhost == "/" else self.vhost
        return f"amqp://{self.user}:***@{self.host}:{self.port}/{vhost}"


def parse_uri(uri: str) -> AmqpUri:
    """``amqp://user:pass@host:port/vhost?heartbeat=S&frame_max=N`` (an empty path or ``/``
    is the vhost ``/``, as most clients read it; ``%2F`` too)."""
    parts = urlsplit(uri)
    if parts.scheme != "amqp":
        raise ValueError(f"only amqp:// URIs are supported, not {uri!r}")
    query = parse_qs(parts.query)
    path = parts.path
    return AmqpUri(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5672,
        user=unquote(parts.username) if parts.username is not None else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        vhost="/" if path in ("", "/") else unquote(path[1:]),
        heartbeat=int(query.get("heartbeat", ["0"])[0]),
        frame_max=int(query.get("frame_max", ["131072"])[0]),
    )


class AmqpError(Exception):
    """The broker closed the connection or the channel."""

    def __init__(self, code: int, text: str, scope: str = "connection") -> None:
        super().__init__(f"{scope} closed by the broker: {code} {text}")
        self.code = code
        self.text = text
        self.scope = scope


class Connection(asyncio.Protocol):
    """One AMQP connection with (at most) one channel in use, channel 1."""

    def __init__(self, uri: AmqpUri, name: str = "leveret-perf") -> None:
        self.uri = uri
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.frame_max = uri.frame_max
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.error: BaseException | None = None
        self.closing = False
        self._buf = bytearray()
        self._waiters: dict[int, deque[tuple[tuple[type, ...], asyncio.Future[Any]]]] = {}
        self._inbox: dict[int, deque[Any]] = {}
        self._hb_handle: asyncio.TimerHandle | None = None
        # flow control: TCP (pause_writing) and connection.blocked
        self.writable = asyncio.Event()
        self.writable.set()
        self.paused = False
        self.blocked = False
        self.blocked_events = 0
        self.blocked_ns = 0
        self.blocked_since = 0  # time.monotonic_ns() of the current block, 0 if none
        self.on_flow: Callable[[], None] | None = None
        self.on_error: Callable[[], None] | None = None
        # publisher confirms: on_confirm(delivery_tag, multiple, nack)
        self.on_confirm: Callable[[int, bool, bool], None] | None = None
        # consumer fast path
        self.counting = True  # count deliveries (off once a limit is reached or stopping)
        self.manual_ack = False
        self.multi_ack = 0  # >1: one ack(multiple=True) every multi_ack messages
        self.limit = 0  # stop counting after this many (0: no limit)
        self.received = 0
        self.hist: dict[int, int] = {}  # latency histogram (see stats.bucket)
        self.lat_max = 0  # microseconds
        self.unacked = 0  # messages counted but not acked yet (multi-ack)
        self.last_tag = 0  # delivery tag of the last counted message
        self.cancelled = False
        self.on_batch: Callable[[], None] | None = None
        self._tag = 0
        self._body_left = 0
        self._first_body = False
        self._acks: list[bytes] = []

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(PROTOCOL_HEADER)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hb_handle is not None:
            self._hb_handle.cancel()
        if self.error is None and not self.closing:
            self.error = ConnectionError(f"connection lost: {exc or 'closed by the peer'}")
        err = self.error or ConnectionError("connection closed")
        for waiters in self._waiters.values():
            for _, fut in waiters:
                if not fut.done():
                    fut.set_exception(err)
            waiters.clear()
        if not self.lost.done():
            self.lost.set_result(None)
        self.writable.set()  # wake whoever waits to publish: it will see the error
        if self.error is not None and self.on_error is not None:
            self.on_error()

    def pause_writing(self) -> None:
        self.paused = True
        self.writable.clear()

    def resume_writing(self) -> None:
        self.paused = False
        if not self.blocked:
            self.writable.set()

    def data_received(self, data: bytes) -> None:  # noqa: C901  (the hot path, inlined)
        buf = self._buf
        view: bytes | bytearray
        if buf:
            buf += data
            view = buf
        else:
            view = data
        n = len(view)
        pos = 0
        now = time.time_ns()
        unpack_header = FRAME_HEADER.unpack_from
        u64 = U64.unpack_from
        hist = self.hist
        while n - pos >= 8:
            ftype, _ch, size = unpack_header(view, pos)
            end = pos + 7 + size
            if end >= n:
                break
            if view[end] != FRAME_END:
                if view[pos : pos + 4] == b"AMQP":
                    self._fail(ConnectionError("the server does not speak AMQP 0-9-1"))
                else:
                    self._fail(ConnectionError("malformed frame from the server"))
                return
            if ftype == 3:  # body
                if self._first_body:
                    self._first_body = False
                    if size >= 8 and self.counting:
                        v = (now - u64(view, pos + 7)[0]) // 1000
                        if v < 256:
                            key = v if v > 0 else 0
                        else:
                            e = v.bit_length() - 8
                            key = (e << 8) | (v >> e)
                        if v > self.lat_max:
                            self.lat_max = v
                        hist[key] = hist.get(key, 0) + 1
                self._body_left -= size
                if self._body_left <= 0:
                    self._message_done()
            elif ftype == 1:  # method
                cm = CLASS_METHOD.unpack_from(view, pos + 7)[0]
                if cm == BASIC_DELIVER:
                    tag_at = pos + 12 + view[pos + 11]  # after the consumer tag
                    self._tag = u64(view, tag_at)[0]
                elif cm == BASIC_ACK or cm == BASIC_NACK:
                    if self.on_confirm is not None:
                        self.on_confirm(
                            u64(view, pos + 11)[0], bool(view[pos + 19] & 1), cm == BASIC_NACK
                        )
                else:
                    self._method(bytes(view[pos : end + 1]))
                    if self.transport is None or self.transport.is_closing():
                        return
            elif ftype == 2:  # content header: body size at offset 4 of the payload
                self._body_left = u64(view, pos + 11)[0]
                self._first_body = True
                if self._body_left == 0:
                    self._message_done()
            # ftype 8: heartbeat, nothing to do
            pos = end + 1
        if view is buf:
            if pos:
                del buf[:pos]
        elif pos < n:
            buf += memoryview(data)[pos:]
        if self._acks:
            if not self.closing and self.transport is not None:
                self.transport.write(b"".join(self._acks))
            self._acks.clear()
        if self.on_batch is not None:
            self.on_batch()

    def _message_done(self) -> None:
        if not self.counting:
            return
        self.received += 1
        tag = self._tag
        self.last_tag = tag
        if self.manual_ack:
            if self.multi_ack > 1:
                self.unacked += 1
                if self.unacked >= self.multi_ack:
                    self._acks.append(ACK_FRAME.pack(1, 1, 13, 60, 80, tag, 1, FRAME_END))
                    self.unacked = 0
            else:
                self._acks.append(ACK_FRAME.pack(1, 1, 13, 60, 80, tag, 0, FRAME_END))
        if self.limit and self.received >= self.limit:
            self.counting = False

    # -- the rare methods ---------------------------------------------------------------

    def _method(self, raw: bytes) -> None:
        try:
            _, channel, obj = pframe.unmarshal(raw)
        except Exception as exc:  # noqa: BLE001
            self._fail(ConnectionError(f"cannot decode a frame from the server: {exc}"))
            return
        if isinstance(obj, commands.Connection.Close):
            self.send(channel, commands.Connection.CloseOk())
            self._fail(AmqpError(obj.reply_code or 0, obj.reply_text))
            return
        if isinstance(obj, commands.Channel.Close):
            self.send(channel, commands.Channel.CloseOk())
            err = AmqpError(obj.reply_code or 0, obj.reply_text, "channel")
            waiters = self._waiters.get(channel)
            if waiters:
                for _, fut in waiters:
                    if not fut.done():
                        fut.set_exception(err)
                waiters.clear()
            else:
                self.error = err
                if self.on_error is not None:
                    self.on_error()
            return
        if isinstance(obj, commands.Connection.Blocked):
            if not self.blocked:
                self.blocked = True
                self.blocked_events += 1
                self.blocked_since = time.monotonic_ns()
                self.writable.clear()
                if self.on_flow is not None:
                    self.on_flow()
            return
        if isinstance(obj, commands.Connection.Unblocked):
            if self.blocked:
                self.blocked = False
                self.blocked_ns += time.monotonic_ns() - self.blocked_since
                self.blocked_since = 0
                if not self.paused:
                    self.writable.set()
                if self.on_flow is not None:
                    self.on_flow()
            return
        if isinstance(obj, commands.Basic.Cancel):  # the broker cancelled our consumer
            self.cancelled = True
            self.counting = False
            if self.on_error is not None:
                self.on_error()
            return
        waiters = self._waiters.get(channel)
        while waiters:
            types, fut = waiters[0]
            if fut.done():  # cancelled (timed out): its reply is this one, drop both
                waiters.popleft()
                return
            if isinstance(obj, types):
                waiters.popleft()
                fut.set_result(obj)
                return
            break
        self._inbox.setdefault(channel, deque()).append(obj)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self.transport is not None:
            self.transport.close()

    # -- sending and awaiting -----------------------------------------------------------

    def send(self, channel: int, method: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(pframe.marshal(method, channel))

    def expect(self, channel: int, *types: type) -> asyncio.Future[Any]:
        """A future for the next method of one of ``types`` on ``channel``."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        inbox = self._inbox.get(channel)
        if inbox and isinstance(inbox[0], types):
            fut.set_result(inbox.popleft())
        elif self.error is not None or self.lost.done():
            fut.set_exception(self.error or ConnectionError("connection closed"))
        else:
            self._waiters.setdefault(channel, deque()).append((types, fut))
        return fut

    async def rpc(self, channel: int, method: Any, *reply: type, timeout: float = 15.0) -> Any:
        fut = self.expect(channel, *reply)
        self.send(channel, method)
        return await asyncio.wait_for(fut, timeout)

    def _heartbeat(self, interval: float) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(HEARTBEAT_FRAME)
        self._hb_handle = self.loop.call_later(interval, self._heartbeat, interval)

    async def close(self, timeout: float = 2.0) -> None:
        """connection.close, and wait (a while) for close-ok."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.closing:  # closing already: wait for that
            try:
                await asyncio.wait_for(asyncio.shield(self.lost), timeout)
            except TimeoutError:
                transport.close()
            return
        self.counting = False
        fut = self.expect(0, commands.Connection.CloseOk)
        self.send(
            0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
        )
        self.closing = True
        try:
            await asyncio.wait_for(fut, timeout)
        except Exception:  # noqa: BLE001,S110  (a timeout or a lost connection: close anyway)
            pass
        transport.close()


async def open_connection(
    uri: AmqpUri, name: str = "leveret-perf", timeout: float = 15.0
) -> Connection:
    """Connect, authenticate with PLAIN, open the vhost and channel 1."""
    loop = asyncio.get_running_loop()
    conn = Connection(uri, name)
    await asyncio.wait_for(loop.create_connection(lambda: conn, uri.host, uri.port), timeout)
    try:
        await asyncio.wait_for(conn.expect(0, commands.Connection.Start), timeout)
        props = dict(CLIENT_PROPERTIES, connection_name=name)
        tune = await conn.rpc(
            0,
            commands.Connection.StartOk(
                client_properties=props,
                mechanism="PLAIN",
                response=f"\0{uri.user}\0{uri.password}",
                locale="en_US",
            ),
            commands.Connection.Tune,
            timeout=timeout,
        )
        frame_max = min(x for x in (tune.frame_max, uri.frame_max, 1 << 31) if x)
        conn.frame_max = frame_max
        heartbeat = uri.heartbeat
        if heartbeat and tune.heartbeat:
            heartbeat = min(heartbeat, tune.heartbeat)
        conn.send(
            0,
            commands.Connection.TuneOk(
                channel_max=tune.channel_max or 2047, frame_max=frame_max, heartbeat=heartbeat
            ),
        )
        await conn.rpc(
            0,
            commands.Connection.Open(virtual_host=uri.vhost),
            commands.Connection.OpenOk,
            timeout=timeout,
        )
        if heartbeat:
            conn._heartbeat(heartbeat / 2)
        await conn.rpc(1, commands.Channel.Open(), commands.Channel.OpenOk, timeout=timeout)
    except BaseException:
        if conn.transport is not None:
            conn.transport.close()
        if conn.error is not None:
            raise conn.error from None
        raise
    return conn


def publish_frames(
    exchange: str, routing_key: str, size: int, persistent: bool, frame_max: int, channel: int = 1
) -> tuple[bytes, bytes]:
    """``(prefix, suffix)``: one message is ``prefix + 8-byte timestamp + suffix`` (bodies of 8
    bytes or more), or ``prefix + suffix`` with no timestamp (smaller bodies).  ``prefix`` holds
    the basic.publish method frame, the content header frame and the first body frame's header;
    ``suffix`` the rest of the body, its frame end and any further body frames."""
    method = pframe.marshal(
        commands.Basic.Publish(exchange=exchange, routing_key=routing_key), channel
    )
    props = commands.Basic.Properties(delivery_mode=2 if persistent else None)
    head = method + pframe.marshal(pheader.ContentHeader(0, size, props), channel)
    if size == 0:
        return head, b""
    chunk = frame_max - 8
    first = min(size, chunk)
    body = bytes(size)
    prefix = head + FRAME_HEADER.pack(3, channel, first)
    stamp = 8 if size >= 8 else 0
    rest = [body[stamp:first], b"\xce"]
    for off in range(first, size, chunk):
        piece = body[off : off + chunk]
        rest += [FRAME_HEADER.pack(3, channel, len(piece)), piece, b"\xce"]
    return prefix, b"".join(rest)
