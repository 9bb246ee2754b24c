"""An AMQP channel: the method handlers, and the glue between the wire and the core.

The connection hands every frame for this channel to :meth:`Channel.handle_raw_method`
(basic.publish / ack / nack / reject as raw payloads, decoded by the fast paths in
``leveret.protocol.methods``), :meth:`Channel.handle_method` (everything else, as a pamqp
command object) or :meth:`Channel.handle_content`.  The channel's parts:

* :class:`~leveret.broker.wire.publish.PublishAssembly`: publish + header + body -> Message;
* :class:`~leveret.broker.wire.confirms.Confirms`: publisher confirms (after confirm.select);
* :class:`~leveret.broker.wire.unacked.UnackedTracker`: delivery tags and unacked deliveries;
* :class:`~leveret.broker.wire.tx.Transaction`: publishes and acks held until tx.commit.

A channel is the :class:`~leveret.broker.core.consumer.DeliverySink` of the consumers it
creates: queues call :meth:`Channel.deliver`.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from pamqp import commands as C

from leveret.broker.core.access import READ
from leveret.broker.core.consumer import Consumer
from leveret.broker.core.errors import AMQPError, rs
from leveret.broker.core.message import Message
from leveret.broker.core.operations import REPLY_TO, Session
from leveret.broker.core.queue import ACCEPTED, FLOW, PERSISTED, Queue
from leveret.broker.core.vhost import generated_name
from leveret.broker.views import ChannelInfo
from leveret.broker.wire.confirms import Confirms
from leveret.broker.wire.publish import PublishAssembly
from leveret.broker.wire.tx import Transaction
from leveret.broker.wire.unacked import Unacked, UnackedTracker
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
    FRAME_END_BYTE,
    FRAME_ERROR,
    FRAME_HEADER,
    FRAME_METHOD,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    Method,
)
from leveret.protocol.frames import pack_head

if TYPE_CHECKING:
    from leveret.broker.wire.machine import ConnectionMachine

REPLY_TO_PREFIX = REPLY_TO + "."
_TAG_BIT = struct.Struct(">QB")  # basic.deliver's delivery tag and redelivered bit

FLAGS_HI, FLAGS_LO = P.FLAGS_HI, P.FLAGS_LO
# properties the broker must look at before routing (see Channel._check_properties)
_HI_CHECKED = P.HI_EXPIRATION | P.HI_REPLY_TO
_LO_CHECKED = P.LO_USER_ID


# channel states: OPEN until either side closes it; CLOSING once it is being released
# (late output such as fsync confirms is dropped from then on)
OPEN, CLOSING = 1, 2


class Channel:
    def __init__(self, conn: ConnectionMachine, number: int) -> None:
        self.conn = conn
        self.node = conn.broker
        self.number = number
        self.vhost = conn.vhost
        self.state = OPEN
        self.consumers: dict[str, Consumer] = {}
        self.unacked = UnackedTracker()
        self.consumer_prefetch = 0
        self.global_prefetch = 0
        self.flow_active = True
        self.assembly = PublishAssembly(conn.broker)
        self.deliveries = M.Deliveries(number)  # basic.deliver's frames
        self.confirms: Confirms | None = None  # after confirm.select
        self.sync_requested = False  # this channel waits for the next group commit
        # transactions
        self.tx: Transaction | None = None  # after tx.select
        self.last_queue = ""
        # direct reply-to (amq.rabbitmq.reply-to)
        self.reply_consumer: Consumer | None = None
        self.reply_queue: Queue | None = None
        self.reply_key = ""
        # every method's checks and changes go through the core's operations, as this
        # connection's user; ``write_ok`` (the session's: exchange name -> the exchange
        # a publish may go to without a check) is the publish fast path's one lookup
        self.session = Session(conn.vhost, conn.user, conn)
        self.write_ok = self.session.write_ok

    @property
    def global_unacked(self) -> int:
        return self.unacked.global_unacked

    def info(self) -> ChannelInfo:
        """What the management API (and Prometheus' channel gauges) show of this channel."""
        c, tx = self.confirms, self.tx
        return ChannelInfo(
            number=self.number,
            consumer_count=len(self.consumers) - (self.reply_consumer is not None),  # (reply-to is none)
            messages_unacknowledged=len(self.unacked),
            messages_unconfirmed=c.publish_seq - c.sent if c is not None else 0,
            messages_uncommitted=len(tx.publishes) if tx is not None else 0,
            acks_uncommitted=len(tx.acks) if tx is not None else 0,
            prefetch_count=self.consumer_prefetch, global_prefetch_count=self.global_prefetch,
            confirm=self.confirms is not None, transactional=self.tx is not None, ident=self,
        )

    # ------------------------------------------------------------------ helpers

    def can_deliver(self) -> bool:
        return self.flow_active and self.conn.can_write()

    def send(self, method: Any) -> None:
        self.conn.send(M.encode_method(self.number, method))

    # ------------------------------------------------------------------ permissions

    def forget_decisions(self) -> None:
        """Permissions changed: decide everything again."""
        self.session.forget_decisions()

    def _queue_name(self, name: str) -> str:
        if name == "":
            if not self.last_queue:
                raise AMQPError(NOT_FOUND, "no previously declared queue")
            return self.last_queue
        return name

    # ------------------------------------------------------------------ frames

    def handle_raw_method(self, index: int, payload: bytes) -> None:
        """Fast-path methods (publish, ack, nack, reject) as raw payloads."""
        if self.assembly.pending is not None:
            raise self.assembly.content_expected()
        if index == BASIC_PUBLISH:
            self.assembly.start(payload)
            return
        try:
            tag, bits = M.parse_tag_bits(payload)
        except M.MethodDecodeError as exc:
            # RabbitMQ: 501 "cannot decode" for malformed method arguments
            raise AMQPError(FRAME_ERROR, str(exc), index >> 16, index & 0xFFFF) from None
        if index == BASIC_ACK:
            if not bits and self.tx is None:
                # the hot path: one plain ack
                if not self.unacked.ack_one(tag):
                    raise AMQPError(PRECONDITION_FAILED, f"unknown delivery tag {tag}", *Method.BASIC_ACK)
                self.conn.want_dispatch(self)
                return
            self._ack(tag, bool(bits & 1), "ack", False)
        elif index == BASIC_NACK:
            self._ack(tag, bool(bits & 1), "nack", bool(bits & 2))
        else:  # BASIC_REJECT
            self._ack(tag, False, "reject", bool(bits & 1))

    def handle_content(self, ftype: int, payload: bytes | memoryview) -> None:
        msg = self.assembly.content(ftype, payload)
        if msg is not None:
            self.publish(msg, self.assembly.mandatory)

    # ------------------------------------------------------------------ publish

    def publish(self, msg: Message, mandatory: bool) -> None:
        """A complete message (from :class:`PublishAssembly`): check it, route it,
        confirm it."""
        confirms = self.confirms
        if confirms is not None:
            confirms.publish_seq += 1
        x = self.vhost.exchanges.get(msg.exchange)
        if x is None or self.write_ok.get(msg.exchange) is not x:
            # (the checks: the fast path above holds only exchanges that passed them)
            x = self.session.publish_exchange(msg.exchange, x, msg.routing_key)
        extra_keys: list[str] | None = None
        header = msg.header
        if (
            header[FLAGS_HI] & _HI_CHECKED
            or header[FLAGS_LO] & _LO_CHECKED
            or (header[FLAGS_HI] & P.HI_HEADERS and (b"\x02CC" in header or b"\x03BCC" in header))
        ):
            extra_keys = self.session.check_properties(msg, self._reply_to if self.reply_consumer is not None else None)
        if self.tx is not None:
            self.tx.publishes.append((msg, mandatory, extra_keys))
            return
        x.stats_publish_in += 1  # (the node's and vhost's totals are summed from these)
        outcome = self._route(x, msg, mandatory, extra_keys)
        if confirms is not None:
            if confirms.published(outcome):
                self._request_sync()  # confirmed once the record is on disk (group commit)

    def _reply_to(self) -> bytes:
        """Direct reply-to: the reply_to property this channel's publishes get."""
        return P.shortstr_property(f"{REPLY_TO}.{self.reply_key}")

    def _route(self, x: Any, msg: Message, mandatory: bool, extra_keys: list[str] | None = None) -> int:
        """Route and enqueue; the :class:`~leveret.broker.core.queue.Enqueued` outcome."""
        vhost = self.vhost
        if extra_keys:
            queues: Any = vhost.route_keys(x, (msg.routing_key, *extra_keys), msg)
        elif x is vhost.default_exchange and msg.routing_key.startswith(REPLY_TO_PREFIX):
            ch = self.node.reply_channels.get(msg.routing_key[len(REPLY_TO_PREFIX) :])
            queues = [ch.reply_queue] if ch is not None and ch.reply_queue is not None else ()
        else:
            queues = vhost.route(x, msg.routing_key, msg)
        if queues:
            # (one queue, the common case, without the loop of VHost.enqueue)
            outcome = queues[0].publish(msg) if len(queues) == 1 else vhost.enqueue(queues, msg)
            if outcome & FLOW:
                self.conn.spend_credit(queues, msg.size)
            return outcome
        vhost.unroutable(x, mandatory=mandatory)
        if mandatory:
            self._send_return(msg, NO_ROUTE, "NO_ROUTE")
        return ACCEPTED

    def _send_return(self, msg: Message, code: int, text: str) -> None:
        self._send_content(M.return_frame(self.number, code, text, msg.ex_rk), msg)

    def flush_confirms(self) -> None:
        if self.confirms is not None:
            self.confirms.flush()

    # group commit waiter protocol (see leveret.broker.core.persistence.Syncer)
    def _request_sync(self) -> None:
        if not self.sync_requested:
            self.sync_requested = True
            persistence = self.node.persistence
            assert persistence is not None
            persistence.request_sync(self)

    def sync_started(self) -> None:
        self.sync_requested = False
        if self.confirms is not None:
            self.confirms.sync_started()
        if self.tx is not None:
            self.tx.sync_started()

    def synced(self, ok: bool) -> None:
        if self.state == CLOSING or not self.conn.is_open:
            return
        if self.confirms is not None:
            self.confirms.synced(ok)
        if self.tx is not None:
            for _ in range(self.tx.synced()):
                self.send(C.Tx.CommitOk())

    # ------------------------------------------------------------------ delivery

    def deliver(self, consumer: Consumer, queue: Queue, seq: int, msg: Message, redelivered: bool) -> None:
        tag = self.unacked.hand_out(queue, seq, msg, redelivered, consumer, consumer.no_ack)
        # (_send_content, inline: this is the hot path)
        conn = self.conn
        conn.send_parts(
            self.deliveries.frames(consumer.wire_tag, tag, redelivered, msg.ex_rk, msg.header, msg.body, conn.frame_max),
            msg.size,
        )

    def deliver_stream(self, consumer: Consumer, queue: Queue, items: list[tuple[int, bytes, bytes, bytes]]) -> None:
        """A batch of a stream's deliveries to ``consumer`` (``core.stream``): ``(offset,
        ex_rk, header, body)`` each, header with its ``x-stream-offset``.  Each is tracked
        unacked under its offset (the message itself is not kept: an ack of a stream's
        delivery removes nothing), and the batch goes out as one piece."""
        unacked = self.unacked
        entries = unacked.entries
        tag = unacked.delivery_tag
        number = self.number
        conn = self.conn
        chunk = conn.frame_max - 8
        wire_tag = consumer.wire_tag
        head = pack_head
        tag_bit = _TAG_BIT.pack
        frames: dict[bytes, tuple[bytes, bytes]] = {}  # ex_rk -> basic.deliver's head, tail
        out: list[Any] = []
        append = out.append
        nbytes = 0
        for off, ex_rk, header, body in items:
            tag += 1
            entries[tag] = (queue, off, None, consumer)  # type: ignore[assignment]
            f = frames.get(ex_rk)
            if f is None:
                size = 4 + len(wire_tag) + 9 + len(ex_rk)
                f = frames[ex_rk] = (head(FRAME_METHOD, number, size) + M.DELIVER_PREFIX + wire_tag, ex_rk + FRAME_END_BYTE)
            blen = len(body)
            nbytes += blen
            if 0 < blen <= chunk:
                append(f[0])
                append(tag_bit(tag, 0))
                append(f[1])
                append(head(FRAME_HEADER, number, len(header)))
                append(header)
                append(FRAME_END_BYTE)
                append(head(FRAME_BODY, number, blen))
                append(body)
                append(FRAME_END_BYTE)
            else:
                out += M.content_frames(number, header, body, conn.frame_max, f[0] + tag_bit(tag, 0) + f[1])
        n = len(items)
        unacked.delivery_tag = tag
        consumer.unacked += n
        unacked.global_unacked += n
        queue.unacked_count += n
        store = queue.store
        store.stats_deliver += n
        store.stats_deliver_manual += n
        conn.send_parts([b"".join(out)], nbytes)

    def _send_content(self, method_frame: bytes, msg: Message) -> None:
        """A basic.get-ok / return frame followed by the message content."""
        conn = self.conn
        conn.send_parts(M.content_frames(self.number, msg.header, msg.body, conn.frame_max, method_frame), msg.size)

    def _ack(self, tag: int, multiple: bool, kind: str, requeue: bool) -> None:
        pairs = self.unacked.take(tag, multiple, kind)
        if kind != "ack":
            for _, (q, *_) in pairs:
                if q.qtype.stream:  # (540: basic.nack and basic.reject not supported)
                    q.qtype.check_reject(rs("queue", q.name, q.vhost.name))
        if self.tx is not None:
            self.tx.acks.append((pairs, kind, requeue))
            return
        self._settle([e for _, e in pairs], kind != "ack" and requeue, kind != "ack")

    def _settle(self, entries: list[Unacked], requeue: bool, reject: bool = False) -> None:
        if not entries:
            return
        self.unacked.settle(entries, requeue, reject)
        # freed credit: let this channel's consumers take more
        self.conn.want_dispatch(self)

    def remap_unacked(self, queue: Queue, remap: Any) -> None:
        """The queue's log was compacted: update the seqs of our deliveries from it."""
        self.unacked.remap(queue, remap)
        if self.tx is not None:
            self.tx.remap(queue, remap)

    def requeue_all(self) -> None:
        entries = self.unacked.take_all()
        if self.tx is not None:
            entries += self.tx.held_unacked()
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
        confirms = self.confirms
        if confirms is not None:  # publishes received in confirm mode, for the node's total
            self.node.stats_received_confirm_gone += confirms.publish_seq - confirms.counted
            confirms.counted = confirms.publish_seq
        self._drop_reply_consumer()
        for c in list(self.consumers.values()):
            c.queue.remove_consumer(c)
        self.consumers.clear()
        self.requeue_all()
        self.assembly.reset()

    # ------------------------------------------------------------------ methods

    def handle_method(self, method: Any) -> None:
        if self.assembly.pending is not None:
            raise self.assembly.content_expected()
        handler = _HANDLERS.get(type(method))
        if handler is None:
            raise AMQPError(COMMAND_INVALID, f"unexpected method {method.name} on a channel")
        handler(self, method)

    # channel class
    def _channel_open(self, m: Any) -> None:
        raise AMQPError(CHANNEL_ERROR, "second 'channel.open' seen")

    def _channel_flow(self, m: C.Channel.Flow) -> None:
        if not m.active:
            raise AMQPError(NOT_IMPLEMENTED, "active=false", *Method.CHANNEL_FLOW)
        self.send(C.Channel.FlowOk(active=True))

    def _channel_flow_ok(self, m: Any) -> None:
        pass

    # exchange class
    def _exchange_declare(self, m: C.Exchange.Declare) -> None:
        self.session.declare_exchange(
            m.exchange, m.exchange_type, passive=m.passive, durable=m.durable, auto_delete=m.auto_delete,
            internal=m.internal, arguments=m.arguments,
        )
        if not m.nowait:
            self.send(C.Exchange.DeclareOk())

    def _exchange_delete(self, m: C.Exchange.Delete) -> None:
        self.session.delete_exchange(m.exchange, if_unused=m.if_unused)
        if not m.nowait:
            self.send(C.Exchange.DeleteOk())

    def _exchange_bind(self, m: C.Exchange.Bind) -> None:
        self.session.bind(m.source, m.destination, kind="exchange", routing_key=m.routing_key, arguments=m.arguments)
        if not m.nowait:
            self.send(C.Exchange.BindOk())

    def _exchange_unbind(self, m: C.Exchange.Unbind) -> None:
        self.session.unbind(m.source, m.destination, kind="exchange", routing_key=m.routing_key, arguments=m.arguments)
        if not m.nowait:
            self.send(C.Exchange.UnbindOk())

    # queue class
    def _queue_declare(self, m: C.Queue.Declare) -> None:
        if m.queue == REPLY_TO or m.queue.startswith(REPLY_TO_PREFIX):
            # RabbitMQ: the pseudo-queue is always there, with its one consumer (passive
            # or not); a reply-to name of a channel that is gone (or never was) is not found
            if m.queue != REPLY_TO and m.queue[len(REPLY_TO_PREFIX) :] not in self.node.reply_channels:
                raise AMQPError(NOT_FOUND, f"no {rs('queue', m.queue, self.vhost.name)}")
            if not m.nowait:
                self.conn.send(M.queue_declare_ok_frame(self.number, m.queue, 0, 1))
            return
        q = self.session.declare_queue(
            m.queue, passive=m.passive, durable=m.durable, exclusive=m.exclusive, auto_delete=m.auto_delete,
            arguments=m.arguments,
        )
        self.last_queue = q.name
        if not m.nowait:
            self.conn.send(M.queue_declare_ok_frame(self.number, q.name, q.message_count, q.consumer_count))

    def _queue_bind(self, m: C.Queue.Bind) -> None:
        self.session.bind(m.exchange, self._queue_name(m.queue), kind="queue", routing_key=m.routing_key,
                          arguments=m.arguments)
        if not m.nowait:
            self.send(C.Queue.BindOk())

    def _queue_unbind(self, m: C.Queue.Unbind) -> None:
        self.session.unbind(m.exchange, self._queue_name(m.queue), kind="queue", routing_key=m.routing_key,
                            arguments=m.arguments)
        self.send(C.Queue.UnbindOk())

    def _queue_purge(self, m: C.Queue.Purge) -> None:
        n = self.session.purge(self._queue_name(m.queue))
        if not m.nowait:
            self.send(C.Queue.PurgeOk(message_count=n))

    def _queue_delete(self, m: C.Queue.Delete) -> None:
        n = self.session.delete_queue(self._queue_name(m.queue), if_unused=m.if_unused, if_empty=m.if_empty)
        if not m.nowait:
            self.send(C.Queue.DeleteOk(message_count=n or 0))

    # basic class
    def _basic_qos(self, m: C.Basic.Qos) -> None:
        if m.prefetch_size:
            raise AMQPError(NOT_IMPLEMENTED, f"prefetch_size!=0 ({m.prefetch_size})", *Method.BASIC_QOS)
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
        self.session.authz(READ, "queue", name)
        q = self.vhost.get_queue(name, self.conn)
        tag = m.consumer_tag or generated_name("amq.ctag-")
        if tag in self.consumers:
            raise AMQPError(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", *Method.BASIC_CONSUME)
        where = f"queue '{name}' in vhost '{self.vhost.name}'"
        args = m.arguments or {}
        q.check_consume(self.global_prefetch, self.consumer_prefetch, m.no_ack, args, where)
        if q.consumers and not q.qtype.stream and (m.exclusive or any(c.exclusive for c in q.consumers)):
            raise AMQPError(ACCESS_REFUSED, f"{where} in exclusive use", *Method.BASIC_CONSUME)
        c = Consumer(tag, self, q, no_ack=m.no_ack, exclusive=m.exclusive, prefetch=self.consumer_prefetch, arguments=args)
        self.consumers[tag] = c
        if not m.nowait:
            self.send(C.Basic.ConsumeOk(consumer_tag=tag))
        q.add_consumer(c)

    def _reply_consume(self, m: C.Basic.Consume) -> None:
        """Direct reply-to: consume from the pseudo-queue amq.rabbitmq.reply-to."""
        if not m.no_ack:
            raise AMQPError(PRECONDITION_FAILED, "reply consumer cannot acknowledge", *Method.BASIC_CONSUME)
        if self.reply_consumer is not None:
            raise AMQPError(PRECONDITION_FAILED, "reply consumer already set", *Method.BASIC_CONSUME)
        tag = m.consumer_tag or generated_name("amq.ctag-")
        if tag in self.consumers:
            raise AMQPError(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", *Method.BASIC_CONSUME)
        q = Queue(self.vhost, REPLY_TO)
        c = Consumer(tag, self, q, no_ack=True, exclusive=False, prefetch=0, arguments={})
        self.reply_queue = q
        self.reply_consumer = c
        self.reply_key = generated_name("")
        self.node.reply_channels[self.reply_key] = self
        self.consumers[tag] = c
        if not m.nowait:
            self.send(C.Basic.ConsumeOk(consumer_tag=tag))
        q.add_consumer(c)

    def _drop_reply_consumer(self) -> None:
        if self.reply_consumer is not None:
            self.node.reply_channels.pop(self.reply_key, None)
            if self.reply_queue is not None:
                self.node.reply_queue_gone(self.reply_queue)  # (its counters, in the node's totals)
                self.reply_queue.deleted = True
                self.reply_queue.purge()
            self.reply_consumer = None
            self.reply_queue = None

    def _basic_cancel(self, m: C.Basic.Cancel) -> None:
        c = self.consumers.pop(m.consumer_tag or "", None)
        if not m.nowait:
            self.send(C.Basic.CancelOk(consumer_tag=m.consumer_tag))
        if c is not None:
            if c is self.reply_consumer:
                self._drop_reply_consumer()
                return
            c.queue.remove_consumer(c)

    def _basic_get(self, m: C.Basic.Get) -> None:
        q, entry = self.session.get(self._queue_name(m.queue), no_ack=m.no_ack)
        if entry is None:
            self.send(C.Basic.GetEmpty())
            return
        seq, msg, redelivered, _ = entry
        tag = self.unacked.hand_out(q, seq, msg, redelivered, None, m.no_ack)
        self._send_content(M.get_ok_frame(self.number, tag, redelivered, msg.ex_rk, q.total()), msg)

    def _basic_recover(self, m: Any) -> None:
        if not m.requeue:
            raise AMQPError(NOT_IMPLEMENTED, "requeue=false", 60, m.index & 0xFFFF)
        self.requeue_all()
        if isinstance(m, C.Basic.Recover):
            self.send(C.Basic.RecoverOk())

    # confirm / tx
    def _confirm_select(self, m: C.Confirm.Select) -> None:
        if self.tx is not None:
            raise AMQPError(PRECONDITION_FAILED, "cannot switch from tx to confirm mode", *Method.CONFIRM_SELECT)
        if self.confirms is None:
            self.confirms = Confirms(self)
        if not m.nowait:
            self.send(C.Confirm.SelectOk())

    def _tx_select(self, m: C.Tx.Select) -> None:
        if self.confirms is not None:
            raise AMQPError(PRECONDITION_FAILED, "cannot switch from confirm to tx mode", *Method.TX_SELECT)
        if self.tx is None:
            self.tx = Transaction()
        self.send(C.Tx.SelectOk())

    def _tx_commit(self, m: C.Tx.Commit) -> None:
        tx = self.tx
        if tx is None:
            raise AMQPError(PRECONDITION_FAILED, "channel is not transactional", *Method.TX_COMMIT)
        publishes, acks = tx.take()
        outcome = ACCEPTED
        for msg, mandatory, extra_keys in publishes:
            x = self.vhost.exchanges.get(msg.exchange)
            if x is not None:
                x.stats_publish_in += 1
                outcome |= self._route(x, msg, mandatory, extra_keys)
        for pairs, kind, requeue in acks:
            self._settle([e for _, e in pairs], kind != "ack" and requeue, kind != "ack")
        if outcome & PERSISTED or tx.commit_pending:
            # commit-ok once the transaction's persistent messages are on disk (and in
            # order after the commit-oks still waiting for theirs)
            tx.commit_pending += 1
            self._request_sync()
            return
        self.send(C.Tx.CommitOk())

    def _tx_rollback(self, m: C.Tx.Rollback) -> None:
        if self.tx is None:
            raise AMQPError(PRECONDITION_FAILED, "channel is not transactional", *Method.TX_ROLLBACK)
        for pairs, _, _ in self.tx.rollback():
            # the acked deliveries go back to the unacked set under their own tags
            self.unacked.restore(pairs)
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
