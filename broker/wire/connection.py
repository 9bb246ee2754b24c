"""One client connection: an ``asyncio.Protocol``.

``data_received`` feeds the sans-I/O frame parser, handles every complete frame of the
read (the handshake, channel 0 methods, and per-channel frames, with basic.publish /
ack / nack / reject decoded by hand) and then flushes the output of every connection
that got something to send during this read: writes are batched per read, not per
message.  Backpressure: a consumer is only delivered to while this connection's pending
output is below ``OUT_HIGH`` and the transport has not asked us to pause writing; when
the transport's buffer goes beyond ``WRITE_HARD_LIMIT`` we stop reading from the peer
too, and a memory alarm pauses reading from publishing connections.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

from pamqp import commands as C
from pamqp import decode as pdecode

from leveret.broker.core.errors import AMQPError
from leveret.broker.core.flow import CREDIT_INITIAL, CREDIT_SHIFT, FlowGate
from leveret.broker.tls import external_user, tls_details
from leveret.broker.views import ConnectionInfo
from leveret.broker.wire.channel import CLOSING, Channel
from leveret.protocol import methods as M
from leveret.protocol.constants import (
    ACCESS_REFUSED,
    BASIC_ACK,
    BASIC_NACK,
    BASIC_PUBLISH,
    BASIC_REJECT,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    FRAME_BODY,
    FRAME_BODY_PART,
    FRAME_ERROR,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    INTERNAL_ERROR,
    NOT_ALLOWED,
    NOT_IMPLEMENTED,
    PROTOCOL_HEADER,
    UNEXPECTED_FRAME,
    Method,
)
from leveret.protocol.frames import HEARTBEAT_FRAME, Frame, FrameError, FrameParser

if TYPE_CHECKING:
    from leveret.broker.wire.node import WireNode

log = logging.getLogger("leveret.connection")

OUT_HIGH = 1 << 20  # stop delivering to this connection above 1 MiB of pending output
WRITE_HIGH = 4 << 20  # transport buffer: pause_writing above this
WRITE_HARD_LIMIT = 32 << 20  # transport buffer: stop reading from the peer above this
FLOW_MAX_PAUSE = 1.0  # seconds a connection in flow waits at most before it gets credit


class State(enum.IntEnum):
    """Where a connection is, in order: the handshake states wait for the named frame."""

    HEADER = 0  # waiting for the protocol header
    START_OK = 1  # connection.start sent
    SECURE_OK = 2  # (no mechanism offered here uses secure/secure-ok)
    TUNE_OK = 3  # connection.tune sent
    OPEN = 4  # waiting for connection.open
    OPENED = 5  # open: channels work
    CLOSING = 6  # connection.close sent or received: only close/close-ok matter
    CLOSED = 7  # the socket is gone


# plain module names for the hot paths' comparisons
S_HEADER, S_START_OK, S_TUNE_OK = State.HEADER, State.START_OK, State.TUNE_OK
S_OPEN, S_OPENED, S_CLOSING, S_CLOSED = State.OPEN, State.OPENED, State.CLOSING, State.CLOSED

_FAST = frozenset({BASIC_PUBLISH, BASIC_ACK, BASIC_NACK, BASIC_REJECT})
_DRAIN_MAX = 30.0  # RabbitMQ's CLOSING_TIMEOUT: the longest wait for the client's EOF after close-ok


class Connection(asyncio.Protocol):
    def __init__(self, broker: WireNode, tls: ssl.SSLContext | None = None) -> None:
        self.broker: WireNode = broker  # (the node: the server's Broker)
        self.loop = broker.loop
        # made at accept, before a TLS handshake: the handshake timeout counts from here
        self.accepted_at = self.loop.time()
        self.connected_at = int(time.time() * 1000)  # (ms since the epoch: the management API's)
        self.tls = tls is not None  # accepted by the amqps listener
        # EXTERNAL (user = client certificate CN) is offered only where peers are verified
        self.external = tls is not None and tls.verify_mode != ssl.CERT_NONE
        self.transport: asyncio.Transport | None = None
        self.state: State = S_HEADER
        self.parser = FrameParser(FRAME_MIN_SIZE)
        self._hbuf = b""
        self.channels: dict[int, Channel] = {}
        self.closing_channels: set[int] = set()
        self.out: list[bytes | memoryview] = []
        self.out_bytes = 0
        self.dirty = False
        self.paused_writing = False
        self.saturated = False
        self.confirm_channels: list[Channel] = []
        self.dispatch_channels: list[Channel] = []
        self.in_read = False
        self.frame_max = FRAME_MIN_SIZE
        self.channel_max = broker.config.channel_max
        self.heartbeat = 0
        self.client_properties: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}
        self.user = ""
        self.mechanism = ""  # the authentication mechanism of connection.start-ok
        self.vhost: Any = None
        self.exclusive_queues: list[Any] = []
        self.peer = ""
        self.is_publisher = False
        self.blocked = False
        self._read_pause: set[str] = set()
        # flow control (see leveret.broker.core.flow): credit for publishes into queues
        # in flow, and the gates of the queues we wait on while it is used up
        self.credit = CREDIT_INITIAL
        self.flow_gates: list[FlowGate] = []
        self._flow_timer: asyncio.TimerHandle | None = None
        self.flow_events = 0
        #: frames read but not handled yet: credit ran out at a publish before them
        self._held: list[Frame] | None = None
        self._held_error: FrameError | None = None  # ... and the framing error after them
        self.last_recv = 0.0
        self.last_send = 0.0
        self._timers: list[asyncio.TimerHandle] = []
        self._hb_handle: asyncio.TimerHandle | None = None
        self.draining = False  # close handshake done: reading and discarding until EOF

    # ------------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # no isinstance(transport, asyncio.Transport) check: uvloop's TCPTransport is not one
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.broker.connections.add(self)
        self.last_recv = self.loop.time()
        deadline = self.accepted_at + self.broker.config.handshake_timeout
        self._timers.append(self.loop.call_at(deadline, self._handshake_timeout))
        log.debug("accepted %s%s", self.peer, " (TLS)" if self.tls else "")

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = S_CLOSED
        self._cleanup()
        self.broker.connections.discard(self)
        log.debug("closed %s", self.peer)

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        self._resume_reading("writebuf")
        if self.state == S_OPENED:
            for ch in list(self.channels.values()):
                ch.resume()
            self.broker.flush_all()

    def _pause_reading(self, reason: str) -> None:
        if not self._read_pause and self.transport is not None:
            self.transport.pause_reading()
        self._read_pause.add(reason)

    def _resume_reading(self, reason: str) -> None:
        if reason in self._read_pause:
            self._read_pause.discard(reason)
            if not self._read_pause and self.transport is not None and self.state < S_CLOSED:
                self.transport.resume_reading()

    @property
    def is_open(self) -> bool:
        """Open, or still handshaking: not closing or closed."""
        return self.state < S_CLOSING

    def drop(self, abort: bool = True) -> None:
        """Drop the socket now (``abort``: reset, discarding output; else close after
        writing what is queued)."""
        if abort:
            if self.transport is not None:
                self.transport.abort()
        else:
            self._close_transport()

    def remap_unacked(self, queue: Any, remap: Any) -> None:
        """``queue``'s log was compacted: move the seqs of our deliveries from it."""
        for ch in self.channels.values():
            ch.remap_unacked(queue, remap)

    def info(self) -> ConnectionInfo | None:
        """What the management API shows of this connection (None: not open, or closed
        and draining: not listed)."""
        if self.vhost is None or self.draining:
            return None
        transport = self.transport
        local = transport.get_extra_info("sockname") if transport is not None else None
        host, port = (local[0], local[1]) if local else ("", 0)
        peer_host, _, peer_port = self.peer.rpartition(":")
        tls = tls_details(transport) if self.tls else None
        return ConnectionInfo(
            name=f"{self.peer} -> {host}:{port}" if local else f"{self.peer} -> ?",
            user=self.user, vhost=self.vhost.name, blocked=self.blocked,
            peer_host=peer_host, peer_port=int(peer_port or 0), host=host, port=port,
            ssl=self.tls, ssl_protocol=tls[0] if tls else None, ssl_key_exchange=tls[1] if tls else None,
            ssl_cipher=tls[2] if tls else None, ssl_hash=tls[3] if tls else None,
            auth_mechanism=self.mechanism, connected_at=self.connected_at,
            frame_max=self.frame_max, channel_max=self.channel_max, heartbeat=self.heartbeat,
            client_properties=self.client_properties, send_pend=self.out_bytes,
            channels=tuple(ch.info() for ch in list(self.channels.values())),
            close=self.close_forced,
        )

    def can_write(self) -> bool:
        if self.paused_writing or self.state >= S_CLOSING:
            return False
        if self.out_bytes >= OUT_HIGH:
            self.saturated = True
            return False
        return True

    # ------------------------------------------------------------------ output

    def send(self, data: bytes) -> None:
        self.out.append(data)
        self.out_bytes += len(data)
        if not self.dirty:
            self.dirty = True
            self.broker.mark_dirty(self)

    def send_parts(self, parts: list[bytes | memoryview], size: int) -> None:
        self.out.extend(parts)
        self.out_bytes += size + 32
        if not self.dirty:
            self.dirty = True
            self.broker.mark_dirty(self)

    def want_dispatch(self, channel: Channel) -> None:
        """Acks freed prefetch credit on ``channel``: dispatch to its consumers once, at the
        end of this read (or on the next loop iteration outside a read)."""
        pending = self.dispatch_channels
        if channel not in pending:
            pending.append(channel)
            if not self.in_read:
                self.loop.call_soon(self._run_dispatch)

    def _run_dispatch(self) -> None:
        pending, self.dispatch_channels = self.dispatch_channels, []
        for ch in pending:
            if ch.state != CLOSING:
                ch.resume()
        if self.broker.dirty:
            self.broker.flush_all()

    def want_confirm_flush(self, channel: Channel) -> None:
        if channel not in self.confirm_channels:
            self.confirm_channels.append(channel)
        if not self.dirty:
            self.dirty = True
            self.broker.mark_dirty(self)

    def flush(self) -> None:
        self.dirty = False
        if self.confirm_channels:
            chans, self.confirm_channels = self.confirm_channels, []
            for ch in chans:
                if ch.state != CLOSING:
                    ch.flush_confirms()
            self.dirty = False
        out = self.out
        if not out or self.transport is None or self.state == S_CLOSED:
            return
        n = len(out)
        if n == 1:
            self.transport.write(out[0])
        elif self.out_bytes >= 128 * n and not self.tls:
            # large parts (message bodies): hand them over as they are (writev under
            # uvloop) instead of copying them all into one buffer.  (Not on TLS: there
            # each part would become a TLS record of its own, and the peer would decrypt
            # a record per frame; one buffer gives full 16 KiB records.)
            self.transport.writelines(out)
        else:
            self.transport.write(b"".join(out))
        self.out = []
        self.out_bytes = 0
        self.last_send = self.loop.time()
        if self.paused_writing and self.transport.get_write_buffer_size() > WRITE_HARD_LIMIT:
            self._pause_reading("writebuf")
        if self.saturated and not self.paused_writing:
            self.saturated = False
            self.loop.call_soon(self._resume_channels)

    def _resume_channels(self) -> None:
        if self.state == S_OPENED:
            for ch in list(self.channels.values()):
                ch.resume()
            self.broker.flush_all()

    # ------------------------------------------------------------------ input

    def data_received(self, data: bytes) -> None:
        if self.draining:
            return  # after close-ok: what the peer still sends is read and dropped
        self.last_recv = self.loop.time()
        if self.state == S_HEADER:
            data = self._protocol_header(data)
            if not data:
                return
        error: FrameError | None = None
        try:
            frames = self.parser.feed(data)
        except FrameError as exc:
            frames, error = exc.frames, exc  # the frames before the bad one still count
        if self._held is not None:
            # (frames of an earlier read still wait for flow credit: these go after them)
            self._held += frames
            if error is not None:
                self._held_error = error
            return
        self._process(frames, error)

    def _process(self, frames: list[Frame], error: FrameError | None) -> None:
        """Handle the frames of a read (and then the error that ended them), then dispatch
        and write out what they caused.  If the connection runs out of flow credit on the
        way, the frames after that publish are *held* (with the error) until it gets
        credit again (:meth:`_leave_flow`): a read of 256 KiB is hundreds of publishes,
        and a publisher in flow must not get more than its credit's worth of them handled
        per round, or the consumers it is held for wait on it."""
        self.in_read = True
        stop = self._handle_frames(frames)
        self.in_read = False
        if stop:
            self._held = frames[stop:]
            self._held_error, error = error, None
        if error is not None:
            self._fatal(AMQPError(FRAME_ERROR, str(error)))
        if self.dispatch_channels:
            self._run_dispatch()
        broker = self.broker
        if broker.alarm and self.is_publisher and not self.blocked:
            self.block(broker.alarm_reason)
        if broker.dirty:
            broker.flush_all()
        else:
            broker.check_alarm()

    def _handle_held(self) -> None:
        """Credit came back: handle the held frames; read again once none are held."""
        frames, error = self._held, self._held_error
        self._held = self._held_error = None
        if frames is not None and self.state != S_CLOSED:
            self._process(frames, error)
        # (also when the held frames were dropped meanwhile, by a close: its close-ok
        # must be read)
        if self._held is None and not self.flow_gates:
            self._resume_reading("flow")

    def _handle_frames(self, frames: list[Frame]) -> int:
        """Handle frames in order; 0 when all were handled, else the index of the first
        one left for later (this connection ran out of flow credit)."""
        i = 0
        n = len(frames)
        payload: Any  # bytes, except body frames: memoryview pieces of the read
        while i < n:
            ftype, ch, payload = frames[i]
            i += 1
            if self.state >= S_CLOSING:
                self._while_closing(ftype, ch, payload)
                continue
            try:
                if ftype == FRAME_METHOD:
                    if ch == 0:
                        self._connection_method(payload)
                        continue
                    channel = self.channels.get(ch)
                    if channel is not None and len(payload) >= 4:
                        idx = (payload[0] << 24) | (payload[1] << 16) | (payload[2] << 8) | payload[3]
                        if idx in _FAST:
                            if idx == BASIC_PUBLISH:
                                self.is_publisher = True
                                if i + 1 < n:
                                    # the hot path: a publish whose header and one body
                                    # frame came in the same read, taken in one step
                                    head = frames[i]
                                    body = frames[i + 1]
                                    if head[0] == FRAME_HEADER and body[0] == FRAME_BODY and head[1] == ch == body[1]:
                                        assembly = channel.assembly
                                        msg = assembly.whole(payload, head[2], body[2])
                                        if msg is not None:
                                            i += 2
                                            channel.publish(msg, assembly.mandatory)
                                            if self.flow_gates and i < n:
                                                return i  # out of credit: the rest waits
                                            continue
                            channel.handle_raw_method(idx, payload)
                            continue
                    self._channel_method(ch, channel, payload)
                elif ftype == FRAME_HEADER or ftype == FRAME_BODY or ftype == FRAME_BODY_PART:
                    channel = self.channels.get(ch)
                    if channel is None:
                        if ch in self.closing_channels:
                            continue
                        if ch == 0:
                            raise AMQPError(UNEXPECTED_FRAME, "content frame on channel 0")
                        # RabbitMQ: a channel never opened expects a method frame first
                        raise AMQPError(UNEXPECTED_FRAME, "expected method frame, got non method frame instead")
                    channel.handle_content(ftype, payload)
                    if self.flow_gates and i < n:
                        return i  # out of credit: the rest waits
                elif ftype == FRAME_HEARTBEAT:
                    if ch != 0:
                        raise AMQPError(UNEXPECTED_FRAME, f"heartbeat frame on channel {ch}")
            except AMQPError as exc:
                self._error(ch, exc)
            except Exception:  # a bug must not take the broker down
                log.exception("internal error on %s channel %d", self.peer, ch)
                self._fatal(AMQPError(INTERNAL_ERROR, "internal error"))
        return 0

    def _protocol_header(self, data: bytes) -> bytes:
        buf = self._hbuf + data
        if len(buf) < 8:
            if PROTOCOL_HEADER.startswith(buf):
                self._hbuf = buf
                return b""
        if buf[:8] != PROTOCOL_HEADER:
            log.info("bad protocol header from %s: %r", self.peer, buf[:8])
            assert self.transport is not None
            self.transport.write(PROTOCOL_HEADER)
            self.state = S_CLOSED
            self.transport.close()
            return b""
        self._hbuf = b""
        self.state = S_START_OK
        self.send(
            M.encode_method(
                0,
                C.Connection.Start(
                    version_major=0,
                    version_minor=9,
                    server_properties=self.broker.server_properties(),
                    mechanisms="PLAIN AMQPLAIN EXTERNAL" if self.external else "PLAIN AMQPLAIN",
                    locales="en_US",
                ),
            )
        )
        self.broker.flush_all()
        return buf[8:]

    def _while_closing(self, ftype: int, ch: int, payload: bytes) -> None:
        """After we sent connection.close only close / close-ok matter."""
        if self.state != S_CLOSING or ftype != FRAME_METHOD or ch != 0:
            return
        try:
            method = M.decode_method(payload)
        except Exception:
            return
        if isinstance(method, C.Connection.Close):
            self.send(M.encode_method(0, C.Connection.CloseOk()))
            self._close_transport()
        elif isinstance(method, C.Connection.CloseOk):
            self._close_transport()

    def _decode(self, payload: bytes) -> Any:
        try:
            return M.decode_method(payload)
        except M.UnknownMethod as exc:
            # RabbitMQ cannot parse an unknown class/method: it drops the socket, no close
            log.info("closing connection %s: %s", self.peer, exc)
            self._close_transport()
            raise AMQPError(NOT_IMPLEMENTED, str(exc)) from None
        except M.MethodDecodeError as exc:
            # RabbitMQ answers malformed arguments with 501 "cannot decode"
            idx = M.method_index(payload) if len(payload) >= 4 else 0
            raise AMQPError(FRAME_ERROR, str(exc), idx >> 16, idx & 0xFFFF) from None

    def _channel_method(self, ch: int, channel: Channel | None, payload: bytes) -> None:
        method = self._decode(payload)
        if channel is None:
            if ch in self.closing_channels:
                # we sent channel.close: as RabbitMQ, only its close-ok ends the channel; a
                # channel.close of the client's own (the two crossed) gets its close-ok and
                # the channel stays closing; anything else is dropped, but channel.open
                if isinstance(method, C.Channel.CloseOk):
                    self.closing_channels.discard(ch)
                elif isinstance(method, C.Channel.Close):
                    self.send(M.encode_method(ch, C.Channel.CloseOk()))
                elif isinstance(method, C.Channel.Open):
                    raise AMQPError(CHANNEL_ERROR, "second 'channel.open' seen", *Method.CHANNEL_OPEN)
                return
            if self.state != S_OPENED:
                # RabbitMQ: any frame on a channel before connection.open-ok
                raise AMQPError(UNEXPECTED_FRAME, f"unexpected method {method.name} before connection.open")
            if isinstance(method, C.Channel.Open):
                if len(self.channels) + len(self.closing_channels) >= self.channel_max > 0:
                    raise AMQPError(
                        NOT_ALLOWED,
                        f"number of channels opened ({len(self.channels)}) has reached the "
                        f"negotiated channel_max ({self.channel_max})",
                    )
                self.channels[ch] = Channel(self, ch)
                self.broker.stats_channels_opened += 1
                self.send(M.channel_open_ok_frame(ch))
                return
            raise AMQPError(CHANNEL_ERROR, "expected 'channel.open'", *_ids(method))
        if isinstance(method, C.Channel.Close):
            if channel.assembly.pending is not None:
                raise channel.assembly.content_expected()  # 505, as RabbitMQ: content was expected
            channel.close_all()
            del self.channels[ch]
            self.send(M.encode_method(ch, C.Channel.CloseOk()))
            return
        if isinstance(method, C.Channel.CloseOk):
            # not closing: RabbitMQ treats it as a connection error
            raise AMQPError(COMMAND_INVALID, "unimplemented method", *Method.CHANNEL_CLOSE_OK)
        if method.index >> 16 == 10:
            raise AMQPError(COMMAND_INVALID, f"connection method {method.name} on channel {ch}", *_ids(method))
        try:
            channel.handle_method(method)
        except AMQPError as exc:
            if not exc.class_id:
                exc.class_id, exc.method_id = _ids(method)
            raise

    def channel_exception(self, ch: int, exc: AMQPError) -> None:
        """Raise ``exc`` on channel ``ch`` from outside a frame handler (a timer): the
        channel is closed (a soft code) or the connection."""
        self._error(ch, exc)

    def _error(self, ch: int, exc: AMQPError) -> None:
        if exc.closes_channel and ch != 0 and ch in self.channels:
            channel = self.channels.pop(ch)
            channel.state = CLOSING
            channel.close_all()
            self.closing_channels.add(ch)
            log.info("channel %d of %s closed: %s", ch, self.peer, exc.reply_text)
            self.send(
                M.encode_method(
                    ch,
                    C.Channel.Close(
                        reply_code=exc.code, reply_text=exc.reply_text, class_id=exc.class_id, method_id=exc.method_id
                    ),
                )
            )
        else:
            self._fatal(exc)

    def _fatal(self, exc: AMQPError) -> None:
        """Connection exception: send connection.close and wait (briefly) for close-ok."""
        if self.state >= S_CLOSING:
            return
        log.info("closing connection %s: %s", self.peer, exc.reply_text)
        if self.state < S_OPEN:
            # before (and at) tune-ok RabbitMQ just closes the socket
            self._close_transport()
            return
        self.send(
            M.encode_method(
                0,
                C.Connection.Close(
                    reply_code=exc.code, reply_text=exc.reply_text, class_id=exc.class_id, method_id=exc.method_id
                ),
            )
        )
        self.state = S_CLOSING
        self._cleanup()
        self._timers.append(self.loop.call_later(self.broker.config.close_timeout, self._close_transport))

    def close_forced(self, code: int = CONNECTION_FORCED, text: str = "broker forced connection closure with reason 'shutdown'") -> None:
        """Server-initiated close (shutdown, management)."""
        if self.state == S_OPENED:
            self._fatal(AMQPError(code, text))
            self.flush()
        elif self.state < S_CLOSING or self.draining:
            self._close_transport()

    def _drain(self) -> None:
        """The client closed the connection and close-ok is on its way: as RabbitMQ, keep
        reading (and dropping) whatever the client still sends until it closes the
        socket, for at most its heartbeat interval (30 s without heartbeats).  Closing
        with unread input would reset the connection, and the client could see
        ECONNRESET / EPIPE instead of its close-ok (amqplib's channel frames can follow
        its connection.close)."""
        self.draining = True
        self.flush()
        if self.transport is None or self.transport.is_closing():
            return
        if self._read_pause:
            self._read_pause.clear()
            self.transport.resume_reading()
        hb = self.heartbeat
        self._timers.append(self.loop.call_later(hb if 0 < hb < _DRAIN_MAX else _DRAIN_MAX, self._close_transport))

    def _close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.flush()
            self.transport.close()
        if self.state < S_CLOSING:
            self.state = S_CLOSING
            self._cleanup()

    def _cleanup(self) -> None:
        self._held = self._held_error = None
        if self.flow_gates:
            self._leave_flow()
        for ch in list(self.channels.values()):
            ch.close_all()
        self.channels.clear()
        for q in list(self.exclusive_queues):
            if not q.deleted:
                q.vhost.delete_queue(q)
        self.exclusive_queues = []
        if self.state >= S_CLOSED:
            for t in self._timers:
                t.cancel()
            self._timers = []
            if self._hb_handle is not None:
                self._hb_handle.cancel()
                self._hb_handle = None
            self.out = []
            self.out_bytes = 0

    # ------------------------------------------------------------------ handshake

    def _handshake_timeout(self) -> None:
        if self.state < S_OPENED:
            log.info("handshake timeout from %s", self.peer)
            self._close_transport()

    def _connection_method(self, payload: bytes) -> None:
        method = self._decode(payload)
        state = self.state
        if isinstance(method, C.Connection.Close):
            self.send(M.encode_method(0, C.Connection.CloseOk()))
            self.state = S_CLOSING
            self._cleanup()
            self._drain()
            return
        if isinstance(method, C.Connection.CloseOk):
            self._close_transport()
            return
        if state == S_START_OK and isinstance(method, C.Connection.StartOk):
            self._start_ok(method)
        elif state == S_TUNE_OK and isinstance(method, C.Connection.TuneOk):
            self._tune_ok(method)
        elif state == S_OPEN and isinstance(method, C.Connection.Open):
            self._open(method)
        elif state == S_OPENED and isinstance(method, C.Connection.Blocked | C.Connection.Unblocked):
            pass
        elif state == S_OPENED and isinstance(method, C.Connection.UpdateSecret):
            self.send(M.encode_method(0, C.Connection.UpdateSecretOk()))
        else:
            raise AMQPError(
                CHANNEL_ERROR,  # as RabbitMQ: "unexpected method in connection state running"
                f"unexpected method {method.name} on channel 0",
                *_ids(method),
            )

    def _start_ok(self, m: C.Connection.StartOk) -> None:
        self.client_properties = m.client_properties or {}
        self.mechanism = m.mechanism
        caps = self.client_properties.get("capabilities")
        self.capabilities = caps if isinstance(caps, dict) else {}
        external = m.mechanism == "EXTERNAL" and self.external
        if external:
            # the response is not used: the user is the verified certificate's CN
            user, why = external_user(self.transport)
            if user is None:
                reason: str | None = why  # (RabbitMQ: no name, no login)
            elif not self.broker.user_exists(user):
                reason = f"user '{user}' - invalid credentials"
            elif not self.broker.access.loopback_allowed(user, self.local_address):
                reason = f"user '{user}' can only connect via localhost"
            else:
                reason = None
        else:
            user, password = _credentials(m.mechanism, m.response)
            if user is None:
                # RabbitMQ: a mechanism it did not offer or a malformed response is a
                # protocol error before the connection is open: the socket is closed, no
                # connection.close (that is only for wrong credentials)
                log.info("closing connection %s: invalid start-ok (mechanism %r)", self.peer, m.mechanism)
                self.state = S_CLOSING
                self._close_transport()
                return
            reason = self._login_refused(user, password or "")
        self.broker.count_auth("amqp091", reason is None)
        if reason is not None:
            # RabbitMQ's words in its log: "PLAIN login refused: user 'guest' can only
            # connect via localhost"
            log.warning("%s login refused: %s (from %s)", m.mechanism, reason, self.peer)
            if self.capabilities.get("authentication_failure_close"):
                self.send(
                    M.encode_method(
                        0,
                        C.Connection.Close(
                            reply_code=ACCESS_REFUSED,
                            reply_text=f"ACCESS_REFUSED - Login was refused using authentication mechanism {m.mechanism}. For details see the broker logfile.",
                            class_id=0,
                            method_id=0,
                        ),
                    )
                )
            self.state = S_CLOSING
            self._close_transport()
            return
        assert user is not None
        self.user = user
        cfg = self.broker.config
        self.state = S_TUNE_OK
        self.send(
            M.encode_method(
                0, C.Connection.Tune(channel_max=cfg.channel_max, frame_max=cfg.frame_max, heartbeat=cfg.heartbeat)
            )
        )

    def _login_refused(self, user: str, password: str) -> str | None:
        """Why this login is refused (None: it is not): a wrong user or password, or a
        loopback-only user (``loopback_users``) on a connection that did not arrive on a
        loopback address (RabbitMQ looks at the local address of the socket)."""
        access = self.broker.access
        if access.authenticate(user, password) is None:
            return f"user '{user}' - invalid credentials"
        if not access.loopback_allowed(user, self.local_address):
            return f"user '{user}' can only connect via localhost"
        return None

    @property
    def local_address(self) -> str | None:
        sockname = self.transport.get_extra_info("sockname") if self.transport is not None else None
        return sockname[0] if isinstance(sockname, tuple) else None

    def _tune_ok(self, m: C.Connection.TuneOk) -> None:
        cfg = self.broker.config
        # RabbitMQ's negotiation check: a value above the server's, or 0 ("no limit")
        # while the server has a limit, is refused (the socket is closed)
        frame_max = m.frame_max
        if 0 < frame_max < FRAME_MIN_SIZE:
            raise AMQPError(NOT_ALLOWED, f"frame_max={frame_max} < {FRAME_MIN_SIZE} min", *Method.CONNECTION_TUNE_OK)
        if cfg.frame_max and not 0 < frame_max <= cfg.frame_max:
            raise AMQPError(NOT_ALLOWED, f"frame_max={frame_max} > {cfg.frame_max} max", *Method.CONNECTION_TUNE_OK)
        frame_max = frame_max or cfg.frame_max
        self.frame_max = frame_max
        self.parser.frame_max = frame_max
        cm = m.channel_max
        if cfg.channel_max and not 0 < cm <= cfg.channel_max:
            raise AMQPError(NOT_ALLOWED, f"channel_max={cm} > {cfg.channel_max} max", *Method.CONNECTION_TUNE_OK)
        self.channel_max = cm
        self.heartbeat = m.heartbeat
        self.state = S_OPEN
        if self.heartbeat:
            self._hb_handle = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)

    def _open(self, m: C.Connection.Open) -> None:
        # RabbitMQ 3.10's order: node and vhost connection limits, then the vhost, then
        # the user's permissions on it
        broker, name, user = self.broker, m.virtual_host, self.user
        opened = [c for c in broker.connections if c.state == S_OPENED]
        limit = broker.config.max_connections
        if limit and len(opened) >= limit:
            raise AMQPError(NOT_ALLOWED, f"connection refused: node connection limit ({limit}) is reached", *Method.CONNECTION_OPEN)
        vhost = broker.vhosts.get(name)
        if vhost is not None:  # (a vhost that is not there has no limits)
            vhost.check_connection_limit(user, sum(1 for c in opened if c.vhost is vhost))
        if vhost is None:
            raise AMQPError(NOT_ALLOWED, f"vhost {name} not found", *Method.CONNECTION_OPEN)
        if not broker.access.can_open(user, name):
            raise AMQPError(NOT_ALLOWED, f"access to vhost '{name}' refused for user '{user}'", *Method.CONNECTION_OPEN)
        self.vhost = vhost
        self.state = S_OPENED
        for t in self._timers:
            t.cancel()
        self._timers = []
        self.send(M.encode_method(0, C.Connection.OpenOk()))
        if self.broker.alarm and self.capabilities.get("connection.blocked"):
            pass  # told on first publish, as RabbitMQ does

    def _heartbeat_tick(self) -> None:
        if self.state >= S_CLOSING or self.transport is None:
            return
        now = self.loop.time()
        if self._read_pause:
            # we are not reading (blocked publisher, full buffers): the peer's silence
            # is ours, as RabbitMQ pauses its heartbeat monitor for blocked connections
            self.last_recv = now
        if now - self.last_recv > 2 * self.heartbeat:
            log.info("missed heartbeats from %s, closing", self.peer)
            self.state = S_CLOSED
            self._cleanup()
            self.transport.abort()
            return
        if now - self.last_send >= self.heartbeat / 2:
            self.transport.write(HEARTBEAT_FRAME)
            self.last_send = now
        self._hb_handle = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)

    # ------------------------------------------------------------------ flow control

    def spend_credit(self, queues: Any, size: int) -> None:
        """A publish of ``size`` body bytes went into a queue in flow (one of
        ``queues``).  While the broker is busy this costs credit (one, and one more per
        64 KiB); at zero we stop reading the socket until the queues' consumers have
        caught up (their gates give credit back)."""
        broker = self.broker
        if not broker.busy:
            return
        self.credit -= 1 + (size >> CREDIT_SHIFT)
        if self.credit > 0 or self.flow_gates:
            return
        for q in queues:
            if q.in_flow():
                q.flow.wait(self)
                self.flow_gates.append(q.flow)
        if not self.flow_gates:
            self.credit = CREDIT_INITIAL
            return
        self.flow_events += 1
        broker.in_flow.add(self)
        self._pause_reading("flow")
        self._flow_timer = self.loop.call_later(FLOW_MAX_PAUSE, self._flow_timeout)

    def flow_granted(self, gate: FlowGate | None, credit: int | None) -> None:
        """A queue we wait on delivered ``credit`` messages (None: it left flow, or the
        node is no longer busy): take the credit, and read again once it is positive."""
        if credit is None:
            self.credit = CREDIT_INITIAL
        else:
            self.credit += credit
        if self.credit > 0:
            self._leave_flow()
        elif gate is not None:
            gate.wait(self)  # (the gate let us go: wait for its next grant)

    def _flow_timeout(self) -> None:
        # never wait for ever: a consumer may be stuck with a full prefetch window
        self._flow_timer = None
        self.credit = max(self.credit, 0) + CREDIT_INITIAL
        self._leave_flow()

    def _leave_flow(self) -> None:
        for g in self.flow_gates:
            g.forget(self)
        self.flow_gates = []
        if self._flow_timer is not None:
            self._flow_timer.cancel()
            self._flow_timer = None
        self.credit = max(self.credit, 1)
        self.broker.in_flow.discard(self)
        if self._held is not None:
            self.loop.call_soon(self._handle_held)  # (reading resumes after them)
        else:
            self._resume_reading("flow")

    def block(self, reason: str = "low on memory") -> None:
        """Memory or disk alarm: stop reading from a publishing connection, telling it
        why with connection.blocked (RabbitMQ's reasons: "low on memory", "low on disk")."""
        if self.blocked or self.state != S_OPENED:
            return
        self.blocked = True
        if self.capabilities.get("connection.blocked"):
            self.send(M.encode_method(0, C.Connection.Blocked(reason=reason)))
        self._pause_reading("alarm")

    def unblock(self) -> None:
        if not self.blocked:
            return
        self.blocked = False
        if self.capabilities.get("connection.blocked") and self.state == S_OPENED:
            self.send(M.encode_method(0, C.Connection.Unblocked()))
        self._resume_reading("alarm")


def _ids(method: Any) -> tuple[int, int]:
    return method.index >> 16, method.index & 0xFFFF


def _credentials(mechanism: str, response: Any) -> tuple[str | None, str | None]:
    if isinstance(response, str):
        response = response.encode("utf-8", "surrogateescape")
    if mechanism == "PLAIN":
        # RabbitMQ's PLAIN: exactly NUL user NUL password (no authorization identity)
        parts = bytes(response).split(b"\x00")
        if len(parts) != 3 or parts[0]:
            return None, None
        return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
    if mechanism == "AMQPLAIN":
        raw = bytes(response)
        try:
            table = pdecode.field_table(len(raw).to_bytes(4, "big") + raw)[1]
        except Exception:
            return None, None
        user, pw = table.get("LOGIN"), table.get("PASSWORD")
        if isinstance(user, bytes):
            user = user.decode()
        if isinstance(pw, bytes):
            pw = pw.decode()
        return (user, pw if isinstance(pw, str) else None) if isinstance(user, str) else (None, None)
    return None, None
