"""An AMQP channel: method handlers, publish assembly, deliveries, acks, confirms, tx.

The connection hands every frame for this channel to :meth:`Channel.handle_method` or
:meth:`Channel.handle_content`.  basic.publish / basic.ack / basic.nack / basic.reject
arrive as raw payloads and are decoded with the fast paths in ``leveret.protocol.methods``;
everything else arrives as a pamqp command object.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from pamqp import commands as C

from leveret.broker.core.deadletter import cc_keys
from leveret.broker.core.errors import AMQPError
from leveret.broker.core.message import Message
from leveret.broker.core.queue import SEQ_MASK, SEQ_SHIFT, Consumer, Queue
from leveret.broker.core.vhost import generated_name
from leveret.protocol import methods as M
from leveret.protocol import properties as P
from leveret.protocol.constants import (
    ACCESS_REFUSED,
    BASIC_ACK,
    BASIC_NACK,
    BASIC_PUBLISH,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    FRAME_BODY,
    FRAME_ERROR,
    FRAME_HEADER,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    UNEXPECTED_FRAME,
)

if TYPE_CHECKING:
    from leveret.broker.wire.connection import Connection

MAX_MESSAGE_SIZE = 128 * 1024 * 1024
REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_TO_PREFIX = REPLY_TO + "."


def _validate_expiration(exp: str) -> None:
    """RabbitMQ's check of the expiration property (a non-negative integer string)."""
    digits = exp[1:] if exp[:1] in "+-" else exp
    n = 0
    while n < len(digits) and digits[n].isdigit():
        n += 1
    if n == 0:
        raise AMQPError(PRECONDITION_FAILED, f"invalid expiration '{exp}': no_integer", 60, 40)
    if n < len(digits):
        raise AMQPError(PRECONDITION_FAILED, f"invalid expiration '{exp}': {{leftover_string,\"{digits[n:]}\"}}", 60, 40)
    if exp.startswith("-") and int(digits):
        raise AMQPError(PRECONDITION_FAILED, f"invalid expiration '{exp}': {{value_negative,{int(exp)}}}", 60, 40)

OPEN, CLOSING = 1, 2
_ACK_IDS = {"ack": 80, "nack": 120, "reject": 90}

Unacked = tuple[Queue, int, Message, Consumer | None]


class Channel:
    def __init__(self, conn: Connection, number: int) -> None:
        self.conn = conn
        self.number = number
        self.vhost = conn.vhost
        self.state = OPEN
        self.consumers: dict[str, Consumer] = {}
        self.unacked: dict[int, Unacked] = {}
        self.delivery_tag = 0
        self.consumer_prefetch = 0
        self.global_prefetch = 0
        self.global_unacked = 0
        self.flow_active = True
        # publisher confirms
        self.confirm = False
        self.publish_seq = 0
        self.confirm_upto = 0  # every seq <= this is ready to be acked
        self.confirm_sent = 0  # highest seq acked/nacked on the wire
        self.wait_sync: deque[int] = deque()  # persisted publishes awaiting fsync
        self.sync_requested = False
        self.sync_snapshot = 0
        # transactions
        self.tx_commit_pending = 0
        self.tx_commit_snapshot = 0
        self.tx = False
        self.tx_publishes: list[tuple[Message, bool, list[str] | None]] = []
        self.tx_acks: list[tuple[list[tuple[int, Unacked]], str, bool]] = []
        self.last_queue = ""
        # direct reply-to (amq.rabbitmq.reply-to)
        self.reply_consumer: Consumer | None = None
        self.reply_queue: Queue | None = None
        self.reply_key = ""
        # content assembly: publish method waiting for header/body
        self._pub: tuple[bytes, str, str, bool] | None = None
        self._header: bytes | None = None
        self._body: list[bytes] = []
        self._body_held = 0  # bytes of _body counted in broker.queued_bytes
        self._body_left = 0

    # ------------------------------------------------------------------ helpers

    def can_deliver(self) -> bool:
        return self.flow_active and self.conn.can_write()

    def send(self, method: Any) -> None:
        self.conn.send(M.encode_method(self.number, method))

    def _queue_name(self, name: str) -> str:
        if name == "":
            if not self.last_queue:
                raise AMQPError(NOT_FOUND, "no previously declared queue")
            return self.last_queue
        return name

    # ------------------------------------------------------------------ frames

    def handle_raw_method(self, index: int, payload: bytes) -> None:
        """Fast-path methods (publish, ack, nack, reject) as raw payloads."""
        if self._pub is not None:
            self._content_expected()
        try:
            if index == BASIC_PUBLISH:
                ex_rk, ex_end, rk_end, mandatory, immediate = M.parse_publish(payload)
                if immediate:
                    raise AMQPError(NOT_IMPLEMENTED, "immediate=true", 60, 40)
                exchange = payload[7:ex_end].decode("utf-8", "surrogateescape")
                rk = payload[ex_end + 1 : rk_end].decode("utf-8", "surrogateescape")
                self._pub = (ex_rk, exchange, rk, mandatory)
                return
            tag, bits = M.parse_tag_bits(payload)
        except M.MethodDecodeError as exc:
            # RabbitMQ: 501 "cannot decode" for malformed method arguments
            raise AMQPError(FRAME_ERROR, str(exc), index >> 16, index & 0xFFFF) from None
        if index == BASIC_ACK:
            self._ack(tag, bool(bits & 1), "ack", False)
        elif index == BASIC_NACK:
            self._ack(tag, bool(bits & 1), "nack", bool(bits & 2))
        else:  # BASIC_REJECT
            self._ack(tag, False, "reject", bool(bits & 1))

    def _content_expected(self) -> None:
        """A method frame arrived while this channel waits for a publish's content."""
        what = "content header for class 60" if self._header is None else "content body"
        kind = "header" if self._header is None else "body"
        raise AMQPError(UNEXPECTED_FRAME, f"expected {what}, got non content {kind} frame instead", 60, 40)

    def handle_content(self, ftype: int, payload: bytes) -> None:
        if self._pub is None:
            raise AMQPError(
                UNEXPECTED_FRAME,
                "expected method frame, got non method frame instead",
            )
        if self._header is None:
            if ftype != FRAME_HEADER:
                raise AMQPError(
                    UNEXPECTED_FRAME,
                    "expected content header for class 60, got non content header frame instead",
                    60,
                    40,
                )
            try:
                class_id, size = P.body_size(payload)
            except P.PropertyError as exc:
                raise AMQPError(FRAME_ERROR, str(exc), 60, 40) from None
            if class_id != 60:
                raise AMQPError(
                    UNEXPECTED_FRAME,
                    f"expected content header for class 60, got one for class {class_id} instead",
                    60,
                    40,
                )
            if size > MAX_MESSAGE_SIZE:
                self._pub = None
                raise AMQPError(
                    PRECONDITION_FAILED,
                    f"message size {size} is larger than configured max size {MAX_MESSAGE_SIZE}",
                    60,
                    40,
                )
            self._header = payload
            self._body_left = size
            if size == 0:
                self._complete(b"")
            return
        if ftype != FRAME_BODY:
            raise AMQPError(
                UNEXPECTED_FRAME, "expected content body, got non content body frame instead", 60, 40
            )
        left = self._body_left - len(payload)
        if left < 0:
            # RabbitMQ keeps waiting for a body that can no longer complete (the next
            # non-body frame is a 505); do the same, without keeping the bytes
            self._release_body()
            self._body_left = -1
            return
        if left == 0:
            if self._body:
                self._body.append(payload)
                body = b"".join(self._body)
                self._release_body()
            else:
                body = payload
            self._complete(body)
        else:
            # a body arriving in pieces counts towards the memory alarm, so many channels
            # each holding a part of a large message cannot grow memory without bound
            self._body.append(payload)
            self._body_held += len(payload)
            self.conn.broker.queued_bytes += len(payload)
            self._body_left = left

    def _release_body(self) -> None:
        self._body = []
        if self._body_held:
            self.conn.broker.queued_bytes -= self._body_held
            self._body_held = 0

    def _complete(self, body: bytes) -> None:
        assert self._pub is not None and self._header is not None
        ex_rk, exchange, rk, mandatory = self._pub
        header = self._header
        self._pub = None
        self._header = None
        msg = Message(ex_rk, exchange, rk, header, body)
        if self.confirm:
            self.publish_seq += 1
        x = self.vhost.exchanges.get(exchange)
        if x is None:
            raise AMQPError(NOT_FOUND, f"no exchange '{exchange}' in vhost '{self.vhost.name}'", 60, 40)
        if x.internal:
            raise AMQPError(
                ACCESS_REFUSED, f"cannot publish to internal exchange '{exchange}' in vhost '{self.vhost.name}'", 60, 40
            )
        extra_keys: list[str] | None = None
        if header[12] & 0x03 or header[13] & 0x10 or (header[12] & 0x20 and (b"\x02CC" in header or b"\x03BCC" in header)):
            extra_keys = self._check_properties(msg)
        if self.tx:
            self.tx_publishes.append((msg, mandatory, extra_keys))
            return
        broker = self.conn.broker
        broker.stats_published += 1
        broker.persisted = False
        ok = self._route(x, msg, mandatory, extra_keys)
        if broker.persisted:
            broker.persisted = False
            if self.confirm and ok:
                # confirmed once the record is on disk (group commit)
                self.wait_sync.append(self.publish_seq)
                if not self.sync_requested:
                    self.sync_requested = True
                    broker.persistence.request_sync(self)
                return
        if self.confirm:
            if not ok:
                self._nack_publish(self.publish_seq)
            elif not self.wait_sync:
                self.confirm_upto = self.publish_seq
                self.conn.want_confirm_flush(self)

    # group commit waiter protocol (see broker.durable.Syncer)
    def sync_started(self) -> None:
        self.sync_requested = False
        self.sync_snapshot = self.wait_sync[-1] if self.wait_sync else 0
        if self.tx_commit_pending:
            self.tx_commit_snapshot = self.tx_commit_pending

    def synced(self, ok: bool) -> None:
        if self.state == CLOSING or self.conn.state >= 6:
            return
        upto = self.sync_snapshot
        ws = self.wait_sync
        nacked: list[int] = []
        while ws and ws[0] <= upto:
            seq = ws.popleft()
            if not ok:
                nacked.append(seq)
        for seq in nacked:
            self._nack_publish(seq)
        if self.confirm:
            # (after a failed fsync too: the publishes between the nacked ones are fine)
            self.confirm_upto = max(self.confirm_upto, ws[0] - 1 if ws else self.publish_seq)
            self.conn.want_confirm_flush(self)
        if self.tx_commit_snapshot:
            n = self.tx_commit_snapshot
            self.tx_commit_snapshot = 0
            self.tx_commit_pending -= n
            for _ in range(n):
                self.send(C.Tx.CommitOk())

    def _check_properties(self, msg: Message) -> list[str] | None:
        """Slow path for messages whose properties the broker must look at: user_id,
        expiration, direct reply-to, CC/BCC.  Returns extra routing keys (CC + BCC)."""
        props = msg.props
        uid = props.get("user_id")
        if uid is not None and uid != self.conn.user:
            raise AMQPError(
                PRECONDITION_FAILED,
                f"user_id property set to '{uid}' but authenticated user was '{self.conn.user}'",
                60,
                40,
            )
        exp = props.get("expiration")
        if exp is not None:
            _validate_expiration(exp)
        rewrite: dict[str, Any] = {}
        if props.get("reply_to") == REPLY_TO:
            if self.reply_consumer is None:
                raise AMQPError(PRECONDITION_FAILED, "fast reply consumer does not exist", 60, 40)
            rewrite["reply_to"] = f"{REPLY_TO}.{self.reply_key}"
        extra: list[str] | None = None
        if msg.header[12] & 0x20:
            headers = msg.headers
            cc = cc_keys(headers, "CC")
            bcc = cc_keys(headers, "BCC")
            if cc or bcc:
                extra = cc + bcc
            if bcc:
                msg.bcc = bcc  # dead lettering routes by them again, as RabbitMQ does
            if "BCC" in headers:
                headers = dict(headers)
                del headers["BCC"]
                rewrite["headers"] = headers
        if rewrite:
            p = P.decode_properties(msg.header)
            for k, v in rewrite.items():
                setattr(p, k, v)
            msg.header = P.encode_properties(p, msg.size)
            msg._props = None
        return extra

    def _route(self, x: Any, msg: Message, mandatory: bool, extra_keys: list[str] | None = None) -> bool:
        """Route and enqueue; False when a queue refused the message (overflow)."""
        vhost = self.vhost
        if extra_keys:
            found: dict[Queue, None] = {}
            for rk in (msg.routing_key, *extra_keys):
                for q in vhost.route(x, rk, msg):
                    found[q] = None
            queues: Any = list(found)
        elif x is vhost.default_exchange and msg.routing_key.startswith(REPLY_TO_PREFIX):
            ch = self.conn.broker.reply_channels.get(msg.routing_key[len(REPLY_TO_PREFIX):])
            queues = [ch.reply_queue] if ch is not None and ch.reply_queue is not None else ()
        else:
            queues = vhost.route(x, msg.routing_key, msg)
        ok = True
        if queues:
            for q in queues:
                if not q.publish(msg):
                    ok = False
        elif mandatory:
            self._send_return(msg, NO_ROUTE, "NO_ROUTE")
        return ok

    def _nack_publish(self, seq: int) -> None:
        """basic.nack for one publish, after acking everything confirmed before it."""
        ws = self.wait_sync
        waiting_before = bool(ws) and ws[0] < seq
        if not waiting_before:
            # every earlier publish is settled: ack those not acked yet
            self.confirm_upto = max(self.confirm_upto, seq - 1)
        if self.confirm_upto > self.confirm_sent:
            self.flush_confirms()
        self.conn.send(M.confirm_frame(self.number, seq, False, nack=True))
        if not waiting_before:
            # the watermark may only pass seq when no earlier publish still waits for
            # fsync (a later multiple ack must not cover it)
            self.confirm_sent = self.confirm_upto = seq

    def _send_return(self, msg: Message, code: int, text: str) -> None:
        conn = self.conn
        conn.send(M.return_frame(self.number, code, text, msg.ex_rk))
        conn.send_parts(M.content_frames(self.number, msg.header, msg.body, conn.frame_max), msg.size)

    def flush_confirms(self) -> None:
        """Send one basic.ack covering every publish confirmed since the last flush."""
        upto = self.confirm_upto
        if upto > self.confirm_sent:
            self.conn.send(M.confirm_frame(self.number, upto, upto - self.confirm_sent > 1))
            self.confirm_sent = upto

    # ------------------------------------------------------------------ delivery

    def deliver(self, consumer: Consumer, queue: Queue, seq: int, msg: Message, redelivered: bool) -> None:
        if self.conn.broker.fault_hooks:  # test fault injection (leveret.testing.inspect): delay/drop
            for hook in self.conn.broker.fault_hooks:
                if hook(self, consumer, queue, seq, msg, redelivered):
                    return
        tag = self._hand_out(queue, seq, msg, redelivered, consumer, consumer.no_ack)
        self._send_content(M.deliver_frame(self.number, consumer.wire_tag, tag, redelivered, msg.ex_rk), msg)

    def _hand_out(
        self, queue: Queue, seq: int, msg: Message, redelivered: bool, consumer: Consumer | None, no_ack: bool
    ) -> int:
        """Give a message a delivery tag: track it as unacked, or let it go (no-ack)."""
        tag = self.delivery_tag = self.delivery_tag + 1
        if not no_ack:
            self.unacked[tag] = (queue, seq, msg, consumer)
            if consumer is not None:
                consumer.unacked += 1
                self.global_unacked += 1
            queue.unacked_count += 1
            if queue.log is not None and not redelivered and not seq & SEQ_MASK:
                queue.log.mark_delivered(seq >> SEQ_SHIFT)
        elif queue.log is not None:
            queue.discard(seq)
        return tag

    def _send_content(self, method_frame: bytes, msg: Message) -> None:
        """A basic.deliver / get-ok / return frame followed by the message content."""
        conn = self.conn
        conn.send(method_frame)
        conn.send_parts(M.content_frames(self.number, msg.header, msg.body, conn.frame_max), msg.size)
        conn.broker.stats_delivered += 1

    def _ack(self, tag: int, multiple: bool, kind: str, requeue: bool) -> None:
        unacked = self.unacked
        if not multiple and not self.tx:
            entry = unacked.pop(tag, None)
            if entry is None:
                raise AMQPError(PRECONDITION_FAILED, f"unknown delivery tag {tag}", 60, _ACK_IDS[kind])
            if kind == "ack":
                # the hot path: one plain ack
                q, seq, _msg, consumer = entry
                if consumer is not None:
                    consumer.unacked -= 1
                    self.global_unacked -= 1
                q.unacked_count -= 1
                if q.log is not None:
                    q.discard(seq)
                self.conn.broker.stats_acked += 1
                self.conn.want_dispatch(self)
                return
            self._settle([entry], requeue, True)
            return
        if multiple and tag == 0:
            pairs = list(unacked.items())
            unacked.clear()
        elif tag not in unacked:
            raise AMQPError(PRECONDITION_FAILED, f"unknown delivery tag {tag}", 60, _ACK_IDS[kind])
        elif multiple:
            pairs = []
            for t, e in unacked.items():
                if t > tag:
                    break
                pairs.append((t, e))
            for t, _ in pairs:
                del unacked[t]
        else:
            pairs = [(tag, unacked.pop(tag))]
        if self.tx:
            self.tx_acks.append((pairs, kind, requeue))
            return
        self._settle([e for _, e in pairs], kind != "ack" and requeue, kind != "ack")

    def _settle(self, entries: list[Unacked], requeue: bool, reject: bool = False) -> None:
        """Release acked/rejected entries: requeue them, dead-letter them (reject without
        requeue) or drop them (ack)."""
        if not entries:
            return
        touched: dict[Queue, list[tuple[int, Message]]] = {}
        for q, seq, msg, consumer in entries:
            if consumer is not None:
                consumer.unacked -= 1
                self.global_unacked -= 1
            q.unacked_count -= 1
            if requeue:
                touched.setdefault(q, []).append((seq, msg))
            else:
                touched.setdefault(q, [])
                if q.log is not None:
                    q.discard(seq)
                if reject and q.dlx is not None and not q.deleted:
                    q.dead_letter(msg, "rejected")
        if not requeue:
            self.conn.broker.stats_acked += len(entries)
        for q, items in touched.items():
            if items:
                q.requeue(items)
        # freed credit: let this channel's consumers take more
        self.conn.want_dispatch(self)

    def remap_unacked(self, queue: Queue, remap: Any) -> None:
        """The queue's log was compacted: update the seqs of our deliveries from it."""
        for tag, (q, seq, msg, consumer) in list(self.unacked.items()):
            if q is queue:
                self.unacked[tag] = (q, remap(seq), msg, consumer)
        for pairs, _, _ in self.tx_acks:
            for i, (tag, (q, seq, msg, consumer)) in enumerate(pairs):
                if q is queue:
                    pairs[i] = (tag, (q, remap(seq), msg, consumer))

    def requeue_all(self) -> None:
        entries = list(self.unacked.values())
        self.unacked.clear()
        for pairs, _, _ in self.tx_acks:
            entries.extend(e for _, e in pairs)
        self.tx_acks = []
        self._settle(entries, True)

    def resume(self) -> None:
        """The connection can take output again: dispatch to our consumers."""
        for c in list(self.consumers.values()):
            c.queue.dispatch()

    def consumer_cancelled_by_server(self, consumer: Consumer) -> None:
        """The consumer's queue was deleted: forget it and tell the client if it asked."""
        self.consumers.pop(consumer.tag, None)
        if self.state == OPEN and self.conn.capabilities.get("consumer_cancel_notify"):
            self.send(C.Basic.Cancel(consumer_tag=consumer.tag, nowait=True))

    def close_all(self) -> None:
        """Channel closing (either side) or connection gone: release everything."""
        # no late output (fsync confirms, tx.commit-ok) on a closed channel number
        self.state = CLOSING
        self._drop_reply_consumer()
        for c in list(self.consumers.values()):
            c.queue.remove_consumer(c)
        self.consumers.clear()
        self.requeue_all()
        self.tx_publishes = []
        self._pub = None
        self._header = None
        self._release_body()

    # ------------------------------------------------------------------ methods

    def handle_method(self, method: Any) -> None:
        if self._pub is not None:
            self._content_expected()
        handler = _HANDLERS.get(type(method))
        if handler is None:
            raise AMQPError(COMMAND_INVALID, f"unexpected method {method.name} on a channel")
        handler(self, method)

    # channel class
    def _channel_open(self, m: Any) -> None:
        raise AMQPError(CHANNEL_ERROR, "second 'channel.open' seen")

    def _channel_flow(self, m: C.Channel.Flow) -> None:
        if not m.active:
            raise AMQPError(NOT_IMPLEMENTED, "active=false", 20, 20)
        self.send(C.Channel.FlowOk(active=True))

    def _channel_flow_ok(self, m: Any) -> None:
        pass

    # exchange class
    def _exchange_declare(self, m: C.Exchange.Declare) -> None:
        self.vhost.declare_exchange(
            m.exchange, m.exchange_type, m.passive, m.durable, m.auto_delete, m.internal, m.arguments or {}
        )
        if not m.nowait:
            self.send(C.Exchange.DeclareOk())

    def _exchange_delete(self, m: C.Exchange.Delete) -> None:
        self.vhost.delete_exchange(m.exchange, m.if_unused)
        if not m.nowait:
            self.send(C.Exchange.DeleteOk())

    def _exchange_bind(self, m: C.Exchange.Bind) -> None:
        self.vhost.bind_exchange(m.destination, m.source, m.routing_key, m.arguments or {})
        if not m.nowait:
            self.send(C.Exchange.BindOk())

    def _exchange_unbind(self, m: C.Exchange.Unbind) -> None:
        self.vhost.unbind_exchange(m.destination, m.source, m.routing_key, m.arguments or {})
        if not m.nowait:
            self.send(C.Exchange.UnbindOk())

    # queue class
    def _queue_declare(self, m: C.Queue.Declare) -> None:
        if m.passive and (m.queue == REPLY_TO or m.queue.startswith(REPLY_TO_PREFIX)):
            self.send(C.Queue.DeclareOk(queue=m.queue, message_count=0, consumer_count=0))
            return
        q = self.vhost.declare_queue(
            m.queue, m.passive, m.durable, m.exclusive, m.auto_delete, m.arguments or {}, self.conn
        )
        self.last_queue = q.name
        if not m.nowait:
            self.send(C.Queue.DeclareOk(queue=q.name, message_count=q.message_count, consumer_count=q.consumer_count))

    def _queue_bind(self, m: C.Queue.Bind) -> None:
        q = self.vhost.get_queue(self._queue_name(m.queue), self.conn)
        self.vhost.bind_queue(q, m.exchange, m.routing_key, m.arguments or {})
        if not m.nowait:
            self.send(C.Queue.BindOk())

    def _queue_unbind(self, m: C.Queue.Unbind) -> None:
        self.vhost.unbind_queue(self._queue_name(m.queue), m.exchange, m.routing_key, m.arguments or {}, self.conn)
        self.send(C.Queue.UnbindOk())

    def _queue_purge(self, m: C.Queue.Purge) -> None:
        q = self.vhost.get_queue(self._queue_name(m.queue), self.conn)
        n = q.purge()
        self.conn.broker.queue_purged(q)
        if not m.nowait:
            self.send(C.Queue.PurgeOk(message_count=n))

    def _queue_delete(self, m: C.Queue.Delete) -> None:
        name = self._queue_name(m.queue)
        q = self.vhost.queues.get(name)
        if q is None:
            if not m.nowait:
                self.send(C.Queue.DeleteOk(message_count=0))
            return
        self.vhost.check_exclusive(q, self.conn)
        where = f"queue '{name}' in vhost '{self.vhost.name}'"
        if m.if_unused and q.consumers:
            raise AMQPError(PRECONDITION_FAILED, f"{where} in use", 50, 40)
        if m.if_empty and q.messages:
            raise AMQPError(PRECONDITION_FAILED, f"{where} not empty", 50, 40)
        n = self.vhost.delete_queue(q)
        if not m.nowait:
            self.send(C.Queue.DeleteOk(message_count=n))

    # basic class
    def _basic_qos(self, m: C.Basic.Qos) -> None:
        if m.prefetch_size:
            raise AMQPError(NOT_IMPLEMENTED, f"prefetch_size!=0 ({m.prefetch_size})", 60, 10)
        if m.global_:
            self.global_prefetch = m.prefetch_count
        else:
            self.consumer_prefetch = m.prefetch_count
            # RabbitMQ 3.10 (rabbit_channel): a per-consumer qos also lifts the channel's
            # global limit ("ensures that if default was set, it's overridden")
            self.global_prefetch = 0
        self.send(C.Basic.QosOk())
        self.resume()

    def _basic_consume(self, m: C.Basic.Consume) -> None:
        if m.queue == REPLY_TO:
            self._reply_consume(m)
            return
        name = self._queue_name(m.queue)
        q = self.vhost.get_queue(name, self.conn)
        tag = m.consumer_tag or generated_name("amq.ctag-")
        if tag in self.consumers:
            raise AMQPError(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", 60, 20)
        where = f"queue '{name}' in vhost '{self.vhost.name}'"
        if q.consumers and (m.exclusive or any(c.exclusive for c in q.consumers)):
            raise AMQPError(ACCESS_REFUSED, f"{where} in exclusive use", 60, 20)
        args = m.arguments or {}
        c = Consumer(tag, self, q, m.no_ack, m.exclusive, self.consumer_prefetch, args)
        self.consumers[tag] = c
        if not m.nowait:
            self.send(C.Basic.ConsumeOk(consumer_tag=tag))
        q.add_consumer(c)

    def _reply_consume(self, m: C.Basic.Consume) -> None:
        """Direct reply-to: consume from the pseudo-queue amq.rabbitmq.reply-to."""
        if not m.no_ack:
            raise AMQPError(PRECONDITION_FAILED, "reply consumer cannot acknowledge", 60, 20)
        if self.reply_consumer is not None:
            raise AMQPError(PRECONDITION_FAILED, "reply consumer already set", 60, 20)
        tag = m.consumer_tag or generated_name("amq.ctag-")
        if tag in self.consumers:
            raise AMQPError(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", 60, 20)
        q = Queue(self.vhost, REPLY_TO)
        c = Consumer(tag, self, q, True, False, 0, {})
        self.reply_queue = q
        self.reply_consumer = c
        self.reply_key = generated_name("")
        self.conn.broker.reply_channels[self.reply_key] = self
        self.consumers[tag] = c
        if not m.nowait:
            self.send(C.Basic.ConsumeOk(consumer_tag=tag))
        q.add_consumer(c)

    def _drop_reply_consumer(self) -> None:
        if self.reply_consumer is not None:
            self.conn.broker.reply_channels.pop(self.reply_key, None)
            if self.reply_queue is not None:
                self.reply_queue.deleted = True
                self.reply_queue.purge()
            self.reply_consumer = None
            self.reply_queue = None

    def _basic_cancel(self, m: C.Basic.Cancel) -> None:
        c = self.consumers.pop(m.consumer_tag, None)
        if not m.nowait:
            self.send(C.Basic.CancelOk(consumer_tag=m.consumer_tag))
        if c is not None:
            if c is self.reply_consumer:
                self._drop_reply_consumer()
                return
            c.queue.remove_consumer(c)

    def _basic_get(self, m: C.Basic.Get) -> None:
        q = self.vhost.get_queue(self._queue_name(m.queue), self.conn)
        entry = q.get()
        if entry is None:
            self.send(C.Basic.GetEmpty())
            return
        seq, msg, redelivered, _ = entry
        tag = self._hand_out(q, seq, msg, redelivered, None, m.no_ack)
        self._send_content(M.get_ok_frame(self.number, tag, redelivered, msg.ex_rk, q.total()), msg)

    def _basic_recover(self, m: Any) -> None:
        if not m.requeue:
            raise AMQPError(NOT_IMPLEMENTED, "requeue=false", 60, m.index & 0xFFFF)
        self.requeue_all()
        if isinstance(m, C.Basic.Recover):
            self.send(C.Basic.RecoverOk())

    # confirm / tx
    def _confirm_select(self, m: C.Confirm.Select) -> None:
        if self.tx:
            raise AMQPError(PRECONDITION_FAILED, "cannot switch from tx to confirm mode", 85, 10)
        self.confirm = True
        if not m.nowait:
            self.send(C.Confirm.SelectOk())

    def _tx_select(self, m: C.Tx.Select) -> None:
        if self.confirm:
            raise AMQPError(PRECONDITION_FAILED, "cannot switch from confirm to tx mode", 90, 10)
        self.tx = True
        self.send(C.Tx.SelectOk())

    def _tx_commit(self, m: C.Tx.Commit) -> None:
        if not self.tx:
            raise AMQPError(PRECONDITION_FAILED, "channel is not transactional", 90, 20)
        publishes, self.tx_publishes = self.tx_publishes, []
        acks, self.tx_acks = self.tx_acks, []
        broker = self.conn.broker
        for msg, mandatory, extra_keys in publishes:
            x = self.vhost.exchanges.get(msg.exchange)
            if x is not None:
                broker.stats_published += 1
                self._route(x, msg, mandatory, extra_keys)
        for pairs, kind, requeue in acks:
            self._settle([e for _, e in pairs], kind != "ack" and requeue, kind != "ack")
        if broker.persisted:
            # commit-ok once the transaction's persistent messages are on disk
            broker.persisted = False
            self.tx_commit_pending += 1
            if not self.sync_requested:
                self.sync_requested = True
                broker.persistence.request_sync(self)
            return
        if self.tx_commit_pending:
            self.tx_commit_pending += 1  # keep commit-oks in order
            if not self.sync_requested:
                self.sync_requested = True
                broker.persistence.request_sync(self)
            return
        self.send(C.Tx.CommitOk())

    def _tx_rollback(self, m: C.Tx.Rollback) -> None:
        if not self.tx:
            raise AMQPError(PRECONDITION_FAILED, "channel is not transactional", 90, 30)
        self.tx_publishes = []
        acks, self.tx_acks = self.tx_acks, []
        if acks:
            # the acked deliveries go back to the unacked set under their own tags
            for pairs, _, _ in acks:
                self.unacked.update(pairs)
            self.unacked = dict(sorted(self.unacked.items()))
        self.send(C.Tx.RollbackOk())


_HANDLERS: dict[type, Any] = {
    C.Channel.Open: Channel._channel_open,
    C.Channel.Flow: Channel._channel_flow,
    C.Channel.FlowOk: Channel._channel_flow_ok,
    C.Exchange.Declare: Channel._exchange_declare,
    C.Exchange.Delete: Channel._exchange_delete,
    C.Exchange.Bind: Channel._exchange_bind,
    C.Exchange.Unbind: Channel._exchange_unbind,
    C.Queue.Declare: Channel._queue_declare,
    C.Queue.Bind: Channel._queue_bind,
    C.Queue.Unbind: Channel._queue_unbind,
    C.Queue.Purge: Channel._queue_purge,
    C.Queue.Delete: Channel._queue_delete,
    C.Basic.Qos: Channel._basic_qos,
    C.Basic.Consume: Channel._basic_consume,
    C.Basic.Cancel: Channel._basic_cancel,
    C.Basic.Get: Channel._basic_get,
    C.Basic.Recover: Channel._basic_recover,
    C.Basic.RecoverAsync: Channel._basic_recover,
    C.Confirm.Select: Channel._confirm_select,
    C.Tx.Select: Channel._tx_select,
    C.Tx.Commit: Channel._tx_commit,
    C.Tx.Rollback: Channel._tx_rollback,
}
