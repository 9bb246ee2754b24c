"""A tiny blocking raw-socket AMQP 0-9-1 client for protocol tests.

Frames are built and parsed with pamqp (``pamqp.frame.marshal`` / ``unmarshal``), so a
test can send exactly the bytes it wants (valid or not) and inspect every frame the
server sends back::

    c = RawClient.connect(port)
    c.handshake()
    c.open_channel(1)
    c.send_method(1, commands.Basic.Qos(prefetch_size=1))
    c.expect_connection_close(540, 60, 10)
    c.expect_socket_closed()
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from pamqp import commands as C
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp.body import ContentBody
from pamqp.heartbeat import Heartbeat

from tests.polling import wait_until

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

Received = tuple[int, Any]  # (channel, pamqp frame object)


def describe(obj: Any) -> str:
    """``Connection.Close(reply_code=..., ...)`` rather than pamqp's bare repr."""
    name = getattr(obj, "name", type(obj).__name__)
    fields = getattr(obj, "__slots__", ()) if type(obj).__module__ == "pamqp.commands" else ()
    return f"{name}({', '.join(f'{k}={getattr(obj, k, None)!r}' for k in fields)})"


class Closed(Exception):
    """The server closed the socket."""


def build_frame(ftype: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    """A raw frame (any type, any frame-end octet)."""
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + bytes((end,))


def method_frame(channel: int, method: Any) -> bytes:
    return pframe.marshal(method, channel)


def content_frames(channel: int, body: bytes, frame_max: int = 131072, **props: Any) -> bytes:
    """Content header plus body frames for class basic."""
    out = [pframe.marshal(pheader.ContentHeader(0, len(body), C.Basic.Properties(**props)), channel)]
    chunk = frame_max - 8
    for i in range(0, len(body), chunk):
        out.append(pframe.marshal(ContentBody(body[i : i + chunk]), channel))
    return b"".join(out)


def publish_frames(channel: int, exchange: str, routing_key: str, body: bytes, mandatory: bool = False, **props: Any) -> bytes:
    pub = C.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
    return method_frame(channel, pub) + content_frames(channel, body, **props)


class RawClient:
    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.buf = b""
        self.frame_max = 131072
        self.last_payload = b""

    @classmethod
    def connect(cls, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> RawClient:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ sending

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_method(self, channel: int, method: Any) -> None:
        self.send(method_frame(channel, method))

    def publish(self, channel: int, exchange: str, routing_key: str, body: bytes, **kw: Any) -> None:
        self.send(publish_frames(channel, exchange, routing_key, body, **kw))

    # ------------------------------------------------------------------ receiving

    def recv_raw(self, n: int = 65536, timeout: float | None = None) -> bytes:
        """Bytes as they arrive (b"" on EOF)."""
        if self.buf:
            data, self.buf = self.buf, b""
            return data
        self.sock.settimeout(timeout or self.timeout)
        try:
            return self.sock.recv(n)
        except ConnectionResetError:
            return b""

    def read_frame(self, timeout: float | None = None) -> Received:
        """The next frame as ``(channel, obj)``; raises :class:`Closed` on EOF and
        ``TimeoutError`` when nothing complete arrives in time."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            if len(self.buf) >= 7:
                size = 8 if self.buf[:4] == b"AMQP" else struct.unpack_from(">I", self.buf, 3)[0] + 8
                if len(self.buf) >= size:
                    used, channel, obj = pframe.unmarshal(self.buf[:size])
                    self.last_payload = self.buf[7 : size - 1]  # raw bytes of this frame
                    self.buf = self.buf[used:]
                    return channel, obj
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete frame from the server")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            if not data:
                raise Closed(f"socket closed by the server ({len(self.buf)} bytes left over)")
            self.buf += data

    def read_until(self, pred: Callable[[int, Any], bool], timeout: float | None = None) -> Received:
        """Read (and drop) frames until one satisfies ``pred(channel, obj)``; heartbeats skipped."""
        while True:
            ch, obj = self.read_frame(timeout)
            if pred(ch, obj):
                return ch, obj

    def expect(self, cls: Any, channel: int | None = None, timeout: float | None = None) -> Any:
        """Next non-heartbeat frame, which must be a ``cls`` (on ``channel``)."""
        ch, obj = self.read_until(lambda c, o: not isinstance(o, Heartbeat), timeout)
        assert isinstance(obj, cls), f"expected {cls}, got {describe(obj)} on channel {ch}"
        if channel is not None:
            assert ch == channel, f"{describe(obj)} on channel {ch}, expected {channel}"
        return obj

    def rpc(self, channel: int, method: Any, reply: type) -> Any:
        self.send_method(channel, method)
        return self.expect(reply, channel)

    def read_content(self, channel: int) -> tuple[Any, bytes, bytes]:
        """After a deliver/get-ok/return: (ContentHeader, raw header payload, body)."""
        header = self.expect(pheader.ContentHeader, channel)
        raw_header = self.last_payload
        body = b""
        while len(body) < header.body_size:
            body += self.expect(ContentBody, channel).value
        return header, raw_header, body

    def get(self, channel: int, queue: str, no_ack: bool = True) -> tuple[Any, Any, bytes] | None:
        """basic.get: (GetOk, ContentHeader, body), or None on get-empty."""
        self.send_method(channel, C.Basic.Get(queue=queue, no_ack=no_ack))
        ok = self.expect(C.Basic.GetOk | C.Basic.GetEmpty, channel)
        if isinstance(ok, C.Basic.GetEmpty):
            return None
        header, _, body = self.read_content(channel)
        return ok, header, body

    def declare_queue(self, channel: int, queue: str = "", **kw: Any) -> C.Queue.DeclareOk:
        return self.rpc(channel, C.Queue.Declare(queue=queue, **kw), C.Queue.DeclareOk)

    # ------------------------------------------------------------------ handshake

    def handshake(
        self,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        capabilities: dict[str, bool] | None = None,
        channel_max: int | None = None,
        frame_max: int | None = None,
        heartbeat: int = 0,
    ) -> C.Connection.Tune:
        """Protocol header through connection.open-ok; tune-ok echoes the server's values
        unless given.  Returns the server's connection.tune."""
        self.send(PROTOCOL_HEADER)
        self.expect(C.Connection.Start, 0)
        self.start_ok(user, password, capabilities)
        tune = self.expect(C.Connection.Tune, 0)
        self.frame_max = frame_max if frame_max is not None else tune.frame_max
        self.send_method(
            0,
            C.Connection.TuneOk(
                channel_max=tune.channel_max if channel_max is None else channel_max,
                frame_max=self.frame_max,
                heartbeat=heartbeat,
            ),
        )
        self.send_method(0, C.Connection.Open(virtual_host=vhost))
        self.expect(C.Connection.OpenOk, 0)
        return tune

    def start_ok(self, user: str, password: str, capabilities: dict[str, bool] | None = None) -> None:
        props: dict[str, Any] = {"product": "rawamqp"}
        if capabilities is not None:
            props["capabilities"] = capabilities
        self.send_method(
            0,
            C.Connection.StartOk(
                client_properties=props, mechanism="PLAIN", response=f"\0{user}\0{password}", locale="en_US"
            ),
        )

    def open_channel(self, channel: int = 1) -> None:
        self.rpc(channel, C.Channel.Open(), C.Channel.OpenOk)

    # ------------------------------------------------------------------ closes

    def expect_connection_close(
        self, code: int, class_id: int | None = None, method_id: int | None = None, timeout: float | None = None
    ) -> C.Connection.Close:
        """The next frames end in connection.close with ``code`` (and ids); answers close-ok."""
        _, m = self.read_until(lambda c, o: isinstance(o, C.Connection.Close | C.Channel.Close), timeout)
        assert isinstance(m, C.Connection.Close), f"expected connection.close {code}, got {describe(m)}"
        assert m.reply_code == code, f"connection.close {m.reply_code} {m.reply_text!r}, expected {code}"
        if class_id is not None:
            assert (m.class_id, m.method_id) == (class_id, method_id), (
                f"connection.close ids ({m.class_id}, {m.method_id}), expected ({class_id}, {method_id})"
            )
        try:
            self.send_method(0, C.Connection.CloseOk())
        except OSError:
            pass
        return m

    def expect_channel_close(
        self, channel: int, code: int, class_id: int | None = None, method_id: int | None = None
    ) -> C.Channel.Close:
        """The next close is channel.close(code) on ``channel``; answers close-ok."""
        ch, m = self.read_until(lambda c, o: isinstance(o, C.Connection.Close | C.Channel.Close))
        assert isinstance(m, C.Channel.Close), f"expected channel.close {code}, got {describe(m)}"
        assert ch == channel, f"channel.close on channel {ch}, expected {channel}"
        assert m.reply_code == code, f"channel.close {m.reply_code} {m.reply_text!r}, expected {code}"
        if class_id is not None:
            assert (m.class_id, m.method_id) == (class_id, method_id), (
                f"channel.close ids ({m.class_id}, {m.method_id}), expected ({class_id}, {method_id})"
            )
        self.send_method(channel, C.Channel.CloseOk())
        return m

    def expect_socket_closed(self, timeout: float | None = None) -> list[Received]:
        """Wait for EOF; return the frames that arrived before it (heartbeats included)."""
        got: list[Received] = []
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"socket still open; received {[describe(o) for _, o in got]}")
            try:
                got.append(self.read_frame(left))
            except Closed:
                return got
            except TimeoutError:
                continue


# ---------------------------------------------------------------------- shared test helpers


def still_works(port: int) -> None:
    """A new connection to ``port`` still opens a channel and declares a queue."""
    with RawClient.connect(port) as c:
        c.handshake()
        c.open_channel(1)
        assert c.declare_queue(1, exclusive=True).queue.startswith("amq.gen-")


# field tables read straight from the bytes, with their field types (pamqp would convert)

FIELD_FORMATS = {"t": ">B", "b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I", "l": ">q", "f": ">f", "d": ">d", "T": ">Q"}


def typed_value(buf: bytes, pos: int) -> tuple[tuple[str, Any], int]:
    """One field value as (type letter, value), read straight from the bytes."""
    t = chr(buf[pos])
    pos += 1
    if t in FIELD_FORMATS:
        f = struct.Struct(FIELD_FORMATS[t])
        return (t, f.unpack_from(buf, pos)[0]), pos + f.size
    if t == "V":
        return (t, None), pos
    n = struct.unpack_from(">I", buf, pos)[0]
    data, end = buf[pos + 4 : pos + 4 + n], pos + 4 + n
    if t == "S":
        return (t, data), end
    if t == "F":
        return (t, typed_table(data)), end
    if t == "A":
        items, p = [], 0
        while p < len(data):
            v, p = typed_value(data, p)
            items.append(v)
        return (t, items), end
    raise AssertionError(f"unexpected field type {t!r}")


def typed_table(buf: bytes) -> list[tuple[str, tuple[str, Any]]]:
    """A field table (without its size) as [(key, (type letter, value))] in wire order."""
    out, pos = [], 0
    while pos < len(buf):
        n = buf[pos]
        key = buf[pos + 1 : pos + 1 + n].decode()
        value, pos = typed_value(buf, pos + 1 + n)
        out.append((key, value))
    return out


def header_table(raw_header: bytes) -> list[tuple[str, tuple[str, Any]]]:
    """The headers table of a raw content header payload (after content-type/-encoding)."""
    flags = struct.unpack_from(">H", raw_header, 12)[0]
    pos = 14
    for bit in (0x8000, 0x4000):
        if flags & bit:
            pos += 1 + raw_header[pos]
    assert flags & 0x2000, "no headers"
    n = struct.unpack_from(">I", raw_header, pos)[0]
    return typed_table(raw_header[pos + 4 : pos + 4 + n])


def publish_raw_headers(c: RawClient, queue: str, table: bytes, body: bytes = b"hi", expiration: str | None = None) -> None:
    """basic.publish whose headers table is exactly ``table`` (field types and order as given)."""
    flags, props = 0x2000, struct.pack(">I", len(table)) + table
    if expiration is not None:
        flags |= 0x0100
        props += bytes((len(expiration),)) + expiration.encode()
    c.send(method_frame(1, C.Basic.Publish(exchange="", routing_key=queue)))
    c.send(build_frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), flags) + props) + build_frame(3, 1, body))


def longstr_array(*items: bytes) -> bytes:
    """A field value: an array of longstrs."""
    body = b"".join(b"S" + struct.pack(">I", len(i)) + i for i in items)
    return b"A" + struct.pack(">I", len(body)) + body


def get_raw(c: RawClient, queue: str, no_ack: bool = True) -> tuple[Any, bytes]:
    """basic.get (waiting for the message to get there): (get-ok, raw content header)."""
    def got() -> tuple[Any, bytes] | None:
        c.send_method(1, C.Basic.Get(queue=queue, no_ack=no_ack))
        ok = c.expect(C.Basic.GetOk | C.Basic.GetEmpty, 1)
        if isinstance(ok, C.Basic.GetOk):
            _, raw, _ = c.read_content(1)
            return ok, raw
        return None

    return wait_until(got, what=f"a message in {queue}")

