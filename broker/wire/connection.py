"""One client connection: the asyncio adapter of the connection's state machine.

The protocol -- handshake, channel table, close handshakes, heartbeat accounting, the
frame walk with its one-step publish -- is :class:`~leveret.broker.wire.machine.ConnectionMachine`,
which does no I/O.  :class:`Connection` adds the socket and the clock: ``data_received``
feeds the machine, which handles every complete frame of the read, and then the output of
every connection that got something to send during this read is flushed: writes are
batched per read, not per message.  Backpressure: a consumer is only delivered to while
this connection's pending output is below ``OUT_HIGH`` and the transport has not asked us
to pause writing; when the transport's buffer goes beyond ``WRITE_HARD_LIMIT`` we stop
reading from the peer too, and a memory alarm pauses reading from publishing connections.
Also here: the timers (handshake timeout, heartbeats, close timeout, the drain after
close-ok) and flow control's pause of reading.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

from pamqp import commands as C

from leveret.broker.core.errors import AMQPError
from leveret.broker.core.flow import CREDIT_INITIAL, CREDIT_SHIFT, FlowGate
from leveret.broker.tls import external_user, tls_details
from leveret.broker.views import ConnectionInfo
from leveret.broker.wire.channel import CLOSING, Channel
from leveret.broker.wire.machine import (
    HB_DEAD,
    HB_SEND,
    S_CLOSED,
    S_CLOSING,
    S_OPENED,
    ConnectionMachine,
    State,
)
from leveret.protocol import methods as M
from leveret.protocol.constants import CONNECTION_FORCED, FRAME_ERROR
from leveret.protocol.frames import HEARTBEAT_FRAME, Frame, FrameError

if TYPE_CHECKING:
    from leveret.broker.wire.node import WireNode

log = logging.getLogger("leveret.connection")

OUT_HIGH = 1 << 20  # stop delivering to this connection above 1 MiB of pending output
WRITE_HIGH = 4 << 20  # transport buffer: pause_writing above this
WRITE_HARD_LIMIT = 32 << 20  # transport buffer: stop reading from the peer above this
FLOW_MAX_PAUSE = 1.0  # seconds a connection in flow waits at most before it gets credit
_DRAIN_MAX = 30.0  # RabbitMQ's CLOSING_TIMEOUT: the longest wait for the client's EOF after close-ok

__all__ = ["Connection", "State"]


class Connection(ConnectionMachine, asyncio.Protocol):
    def __init__(self, broker: WireNode, tls: ssl.SSLContext | None = None) -> None:
        # EXTERNAL (user = client certificate CN) is offered only where peers are verified
        super().__init__(broker, tls is not None, tls is not None and tls.verify_mode != ssl.CERT_NONE)
        self.loop = broker.loop
        # made at accept, before a TLS handshake: the handshake timeout counts from here
        self.accepted_at = self.loop.time()
        self.connected_at = int(time.time() * 1000)  # (ms since the epoch: the management API's)
        self.transport: asyncio.Transport | None = None
        self.paused_writing = False
        self.saturated = False
        self.dispatch_channels: list[Channel] = []
        self.in_read = False
        self._read_pause: set[str] = set()
        # flow control (see leveret.broker.core.flow): credit for publishes into queues
        # in flow, and the gates of the queues we wait on while it is used up (flow_gates)
        self.credit = CREDIT_INITIAL
        self._flow_timer: asyncio.TimerHandle | None = None
        self.flow_events = 0
        #: frames read but not handled yet: credit ran out at a publish before them
        self._held: list[Frame] | None = None
        self._held_error: FrameError | None = None  # ... and the framing error after them
        self._timers: list[asyncio.TimerHandle] = []
        self._hb_handle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # no isinstance(transport, asyncio.Transport) check: uvloop's TCPTransport is not one
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        sockname = transport.get_extra_info("sockname")
        self.local_host = sockname[0] if isinstance(sockname, tuple) else None
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

    def drop(self, abort: bool = True) -> None:
        """Drop the socket now (``abort``: reset, discarding output; else close after
        writing what is queued)."""
        if abort:
            if self.transport is not None:
                self.transport.abort()
        else:
            self._close_transport()

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

    def _mark_dirty(self) -> None:
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
        self.receive_data(data, self.loop.time())

    def _received(self, frames: list[Frame], error: FrameError | None) -> None:
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
        super()._drain()
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
        super()._close_transport()

    def _cleanup(self) -> None:
        self._held = self._held_error = None
        if self.flow_gates:
            self._leave_flow()
        super()._cleanup()  # (the channels, the exclusive queues)
        if self.state >= S_CLOSED:
            for t in self._timers:
                t.cancel()
            self._timers = []
            if self._hb_handle is not None:
                self._hb_handle.cancel()
                self._hb_handle = None
            self.out = []
            self.out_bytes = 0

    def _close_sent(self) -> None:
        self._timers.append(self.loop.call_later(self.broker.config.close_timeout, self._close_transport))

    def _tuned(self) -> None:
        if self.heartbeat:
            self._hb_handle = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)

    def _opened(self) -> None:
        for t in self._timers:
            t.cancel()
        self._timers = []

    def _certificate_user(self) -> tuple[str | None, str]:
        return external_user(self.transport)

    # ------------------------------------------------------------------ handshake

    def _handshake_timeout(self) -> None:
        if self.state < S_OPENED:
            log.info("handshake timeout from %s", self.peer)
            self._close_transport()

    def _heartbeat_tick(self) -> None:
        if self.state >= S_CLOSING or self.transport is None:
            return
        action = self.heartbeat_check(self.loop.time(), reading=not self._read_pause)
        if action == HB_DEAD:
            log.info("missed heartbeats from %s, closing", self.peer)
            self.state = S_CLOSED
            self._cleanup()
            self.transport.abort()
            return
        if action == HB_SEND:
            self.transport.write(HEARTBEAT_FRAME)
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
