"""The AMQP connection as a state machine, without I/O: bytes in, bytes out.

:class:`ConnectionMachine` is everything of one client connection that is protocol: the
protocol header, the handshake (connection.start / start-ok with PLAIN, AMQPLAIN and
EXTERNAL, tune / tune-ok and its negotiation checks, open / open-ok with the node's and
the vhost's connection limits and the user's access), the channel table (open, close
and close-ok handshakes, channel and connection exceptions), the connection close
handshakes in both directions, heartbeat accounting, and the frame walk that hands
channel frames to the channels (with the one-step publish).  It reads no socket, writes
none and starts no timer: :meth:`receive_data` takes bytes, the output collects in
``out`` (batched: the node writes it once per read), and what needs I/O is a hook the
asyncio adapter (:class:`~leveret.broker.wire.connection.Connection`) implements:
:meth:`_close_transport`, :meth:`_drain`, :meth:`_close_sent` (the close timeout),
:meth:`_tuned` (the heartbeat timer), :meth:`_opened` (the handshake timer),
:meth:`flush`.  Used alone (tests/test_connection_machine.py), the hooks only record:
:meth:`take_output` returns the bytes to send, ``transport_closed`` says the socket
would be closed.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Any

from pamqp import commands as C
from pamqp import decode as pdecode

from leveret.broker.core.errors import AMQPError
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
from leveret.protocol.frames import Frame, FrameError, FrameParser

if TYPE_CHECKING:
    from leveret.broker.core.flow import FlowGate
    from leveret.broker.wire.node import WireNode

log = logging.getLogger("leveret.connection")


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

_FAST = {idx.to_bytes(4, "big"): idx for idx in (BASIC_PUBLISH, BASIC_ACK, BASIC_NACK, BASIC_REJECT)}

#: heartbeat_check's answers
HB_OK, HB_SEND, HB_DEAD = 0, 1, 2


class ConnectionMachine:
    def __init__(self, broker: WireNode, tls: bool = False, external: bool = False) -> None:
        self.broker: WireNode = broker  # (the node: the server's Broker)
        self.tls = tls  # accepted by the amqps listener
        # EXTERNAL (user = client certificate CN) is offered only where peers are verified
        self.external = external
        self.state: State = S_HEADER
        self.parser = FrameParser(FRAME_MIN_SIZE)
        self._hbuf = b""
        self.channels: dict[int, Channel] = {}
        self.closing_channels: set[int] = set()
        self.out: list[bytes | memoryview] = []
        self.out_bytes = 0
        self.dirty = False
        self.confirm_channels: list[Channel] = []
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
        self.local_host: str | None = None  # the address the connection arrived on
        self.is_publisher = False
        self.blocked = False
        #: gates of the queues in flow this connection waits on (flow control, the adapter's)
        self.flow_gates: list[FlowGate] = []
        self.last_recv = 0.0
        self.last_send = 0.0
        self.draining = False  # close handshake done: reading and discarding until EOF
        self.transport_closed = False  # (used alone: the socket would be closed)

    # ------------------------------------------------------------------ bytes in, bytes out

    def receive_data(self, data: bytes, now: float = 0.0) -> None:
        """A read of ``data`` at ``now`` (the loop's time): the protocol header, then every
        complete frame in it."""
        if self.draining:
            return  # after close-ok: what the peer still sends is read and dropped
        self.last_recv = now
        if self.state == S_HEADER:
            data = self._protocol_header(data)
            if not data:
                return
        error: FrameError | None = None
        try:
            frames = self.parser.feed(data)
        except FrameError as exc:
            frames, error = exc.frames, exc  # the frames before the bad one still count
        self._received(frames, error)

    def _received(self, frames: list[Frame], error: FrameError | None) -> None:
        """Handle the frames of a read, then the error that ended them (the adapter adds
        flow control's holding, dispatch and the write)."""
        self._handle_frames(frames)
        if error is not None:
            self._fatal(AMQPError(FRAME_ERROR, str(error)))

    def take_output(self) -> bytes:
        """The bytes queued for the peer since the last call (used alone; the adapter
        writes them in :meth:`flush`)."""
        data = b"".join(self.out)
        self.out = []
        self.out_bytes = 0
        self.dirty = False
        return data

    def heartbeat_check(self, now: float, reading: bool = True) -> int:
        """Heartbeat accounting, every half interval: ``HB_DEAD`` when the peer was silent
        for more than two intervals, ``HB_SEND`` when we sent nothing for half an interval
        (send a heartbeat frame now: counted as sent), else ``HB_OK``.  While we do not
        read the peer (``reading`` false: blocked, full buffers) its silence is ours, as
        RabbitMQ pauses its heartbeat monitor for blocked connections."""
        if not reading:
            self.last_recv = now
        if now - self.last_recv > 2 * self.heartbeat:
            return HB_DEAD
        if now - self.last_send >= self.heartbeat / 2:
            self.last_send = now
            return HB_SEND
        return HB_OK

    # ------------------------------------------------------------------ hooks (I/O: the adapter's)

    def flush(self) -> None:
        """Write out what was queued (the node calls it once per read)."""
        self.dirty = False

    def _mark_dirty(self) -> None:
        """The first output since the last flush: the adapter asks the node to flush it."""

    def can_write(self) -> bool:
        """Deliveries may be sent (the adapter adds the socket's backpressure)."""
        return self.state < S_CLOSING

    def want_dispatch(self, channel: Channel) -> None:
        """Acks freed prefetch credit on ``channel`` (the adapter batches this per read)."""
        if channel.state != CLOSING:
            channel.resume()

    def spend_credit(self, queues: Any, size: int) -> None:
        """A publish went into a queue in flow (flow control is the adapter's)."""

    def _close_transport(self) -> None:
        self.transport_closed = True
        if self.state < S_CLOSING:
            self.state = S_CLOSING
            self._cleanup()

    def _drain(self) -> None:
        """We answered the client's connection.close: read and drop until its EOF."""
        self.draining = True

    def _close_sent(self) -> None:
        """We sent connection.close: the adapter closes the socket after ``close_timeout``
        if no close-ok comes."""

    def _tuned(self) -> None:
        """tune-ok: the adapter starts the heartbeat timer."""

    def _opened(self) -> None:
        """open-ok: the adapter stops the handshake timer."""

    def _certificate_user(self) -> tuple[str | None, str]:
        """EXTERNAL: the verified client certificate's user, or None and why not."""
        return None, "no peer certificate"

    def _cleanup(self) -> None:
        """The connection closes: release its channels and exclusive queues."""
        for ch in list(self.channels.values()):
            ch.close_all()
        self.channels.clear()
        for q in list(self.exclusive_queues):
            if not q.deleted:
                q.vhost.delete_queue(q)
        self.exclusive_queues = []

    # ------------------------------------------------------------------ output

    def send(self, data: bytes) -> None:
        self.out.append(data)
        self.out_bytes += len(data)
        if not self.dirty:
            self.dirty = True
            self._mark_dirty()

    def send_parts(self, parts: list[bytes | memoryview], size: int) -> None:
        self.out.extend(parts)
        self.out_bytes += size + 32
        if not self.dirty:
            self.dirty = True
            self._mark_dirty()

    def want_confirm_flush(self, channel: Channel) -> None:
        if channel not in self.confirm_channels:
            self.confirm_channels.append(channel)
        if not self.dirty:
            self.dirty = True
            self._mark_dirty()

    # ------------------------------------------------------------------ state

    @property
    def is_open(self) -> bool:
        """Open, or still handshaking: not closing or closed."""
        return self.state < S_CLOSING

    def remap_unacked(self, queue: Any, remap: Any) -> None:
        """``queue``'s log was compacted: move the seqs of our deliveries from it."""
        for ch in self.channels.values():
            ch.remap_unacked(queue, remap)

    # ------------------------------------------------------------------ frames

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
                    if channel is not None:
                        idx = _FAST.get(payload[:4])  # (a dict lookup is cheaper than decoding the id)
                        if idx is not None:
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
            # (RabbitMQ answers with the header it speaks, then closes)
            self.send(PROTOCOL_HEADER)
            self._close_transport()
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
        self._close_sent()

    # ------------------------------------------------------------------ handshake

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
            user, why = self._certificate_user()
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
        if self.broker.trusted_login(user, password):
            return None  # a shovel of this broker (leveret.broker.shovel)
        if access.authenticate(user, password) is None:
            return f"user '{user}' - invalid credentials"
        if not access.loopback_allowed(user, self.local_address):
            return f"user '{user}' can only connect via localhost"
        return None

    @property
    def local_address(self) -> str | None:
        return self.local_host

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
        self._tuned()

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
        self._opened()
        self.send(M.encode_method(0, C.Connection.OpenOk()))
        if self.broker.alarm and self.capabilities.get("connection.blocked"):
            pass  # told on first publish, as RabbitMQ does


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
