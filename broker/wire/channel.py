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

from typing import TYPE_CHECKING, Any

from pamqp import commands as C

from leveret.broker.core.access import CONFIGURE, READ, WRITE
from leveret.broker.core.consumer import Consumer
from leveret.broker.core.deadletter import cc_keys
from leveret.broker.core.errors import AMQPError, rs
from leveret.broker.core.exchange import EXCHANGE_CLASSES
from leveret.broker.core.message import Message
from leveret.broker.core.queue import ACCEPTED, FLOW, PERSISTED, Queue
from leveret.broker.core.vhost import generated_name, not_default
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
    FRAME_ERROR,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
)

if TYPE_CHECKING:
    from leveret.broker.wire.connection import Connection

REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_TO_PREFIX = REPLY_TO + "."

FLAGS_HI, FLAGS_LO = P.FLAGS_HI, P.FLAGS_LO
# properties the broker must look at before routing (see Channel._check_properties)
_HI_CHECKED = P.HI_EXPIRATION | P.HI_REPLY_TO
_LO_CHECKED = P.LO_USER_ID


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


# channel states: OPEN until either side closes it; CLOSING once it is being released
# (late output such as fsync confirms is dropped from then on)
OPEN, CLOSING = 1, 2


class Channel:
    def __init__(self, conn: Connection, number: int) -> None:
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
        self.confirms: Confirms | None = None  # after confirm.select
        self.sync_requested = False  # this channel waits for the next group commit
        # transactions
        self.tx: Transaction | None = None  # after tx.select
        self.last_queue = ""
        # direct reply-to (amq.rabbitmq.reply-to)
        self.reply_consumer: Consumer | None = None
        self.reply_queue: Queue | None = None
        self.reply_key = ""
        # permission decisions (see _authz): allowed (perm, kind, name) triples, and the
        # exchanges this channel may publish to without a topic check (name -> the
        # exchange object, so that a redeclared exchange is checked again); both are
        # dropped when permissions change (forget_decisions)
        self.access = conn.broker.access
        self.authz_ok: set[tuple[str, str, str]] = set()
        self.write_ok: dict[str, Any] = {}

    @property
    def global_unacked(self) -> int:
        return self.unacked.global_unacked

    # ------------------------------------------------------------------ helpers

    def can_deliver(self) -> bool:
        return self.flow_active and self.conn.can_write()

    def send(self, method: Any) -> None:
        self.conn.send(M.encode_method(self.number, method))

    # ------------------------------------------------------------------ permissions

    def forget_decisions(self) -> None:
        """Permissions changed: decide everything again."""
        self.authz_ok.clear()
        self.write_ok.clear()

    def _authz(self, perm: str, kind: str, name: str) -> None:
        """403 unless the user has ``perm`` on the resource (cached per channel)."""
        key = (perm, kind, name)
        if key in self.authz_ok:
            return
        self.access.check(self.conn.user, self.vhost.name, perm, kind, name)
        if len(self.authz_ok) >= 4096:
            self.authz_ok.clear()
        self.authz_ok.add(key)

    def _topic_authz(self, perm: str, x: Any, routing_key: str) -> bool:
        """403 unless the routing key is allowed on topic exchange ``x``; False when
        the exchange has no topic permission for this user (nothing to check)."""
        if x is None or x.type != "topic":
            return False
        access, user, vhost = self.access, self.conn.user, self.vhost.name
        if access.topic_rule(user, vhost, x.name) is None:
            return False
        access.check_topic(user, vhost, perm, x.name, routing_key)
        return True

    def _check_publish(self, name: str, x: Any, routing_key: str) -> Any:
        """The slow path of the publish permission check: write on the exchange (before
        looking it up, as RabbitMQ), then the topic permission on the routing key."""
        self._authz(WRITE, "exchange", name)
        if x is None:
            raise AMQPError(NOT_FOUND, f"no exchange '{name}' in vhost '{self.vhost.name}'", 60, 40)
        if not self._topic_authz(WRITE, x, routing_key):
            if len(self.write_ok) >= 1024:
                self.write_ok.clear()
            self.write_ok[name] = x  # the next publishes to it skip all of this
        return x

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
                    raise AMQPError(PRECONDITION_FAILED, f"unknown delivery tag {tag}", 60, 80)
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
        vhost = self.vhost
        x = vhost.exchanges.get(msg.exchange)
        if x is None or self.write_ok.get(msg.exchange) is not x:
            x = self._check_publish(msg.exchange, x, msg.routing_key)
        if x.internal:
            raise AMQPError(
                ACCESS_REFUSED, f"cannot publish to internal exchange '{msg.exchange}' in vhost '{vhost.name}'", 60, 40
            )
        extra_keys: list[str] | None = None
        header = msg.header
        if (
            header[FLAGS_HI] & _HI_CHECKED
            or header[FLAGS_LO] & _LO_CHECKED
            or (header[FLAGS_HI] & P.HI_HEADERS and (b"\x02CC" in header or b"\x03BCC" in header))
        ):
            extra_keys = self._check_properties(msg)
        if self.tx is not None:
            self.tx.publishes.append((msg, mandatory, extra_keys))
            return
        x.stats_publish_in += 1  # (the node's and vhost's totals are summed from these)
        outcome = self._route(x, msg, mandatory, extra_keys)
        if confirms is not None:
            if confirms.published(outcome):
                self._request_sync()  # confirmed once the record is on disk (group commit)

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
        rewrite: dict[int, bytes | None] = {}
        if props.get("reply_to") == REPLY_TO:
            if self.reply_consumer is None:
                raise AMQPError(PRECONDITION_FAILED, "fast reply consumer does not exist", 60, 40)
            rewrite[P.F_REPLY_TO] = P.shortstr_property(f"{REPLY_TO}.{self.reply_key}")
        extra: list[str] | None = None
        if msg.has_headers:
            headers = msg.headers
            cc = cc_keys(headers, "CC")
            bcc = cc_keys(headers, "BCC")
            if cc or bcc:
                extra = cc + bcc
            if bcc:
                msg.bcc = bcc  # dead lettering routes by them again, as RabbitMQ does
            if "BCC" in headers:
                # only the BCC field goes: the others keep their bytes (and field types)
                fields = P.table_fields(msg.header, props["_headers_at"])
                del fields[b"BCC"]
                rewrite[P.F_HEADERS] = P.table_bytes(fields)
        if rewrite:
            msg.set_header(P.rewrite(msg.header, rewrite))
        return extra

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
        x.stats_unroutable += 1
        if mandatory:
            vhost.stats_return_unroutable += 1
            self._send_return(msg, NO_ROUTE, "NO_ROUTE")
        else:
            vhost.stats_drop_unroutable += 1
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
        number = self.number
        method_frame = M.deliver_frame(number, consumer.wire_tag, tag, redelivered, msg.ex_rk)
        conn.send_parts(M.content_frames(number, msg.header, msg.body, conn.frame_max, method_frame), msg.size)

    def _send_content(self, method_frame: bytes, msg: Message) -> None:
        """A basic.get-ok / return frame followed by the message content."""
        conn = self.conn
        conn.send_parts(M.content_frames(self.number, msg.header, msg.body, conn.frame_max, method_frame), msg.size)

    def _ack(self, tag: int, multiple: bool, kind: str, requeue: bool) -> None:
        pairs = self.unacked.take(tag, multiple, kind)
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
            raise AMQPError(NOT_IMPLEMENTED, "active=false", 20, 20)
        self.send(C.Channel.FlowOk(active=True))

    def _channel_flow_ok(self, m: Any) -> None:
        pass

    # exchange class
    def _exchange_declare(self, m: C.Exchange.Declare) -> None:
        if not m.passive and m.exchange and m.exchange_type in EXCHANGE_CLASSES:
            # (an unknown type and the default exchange are refused first, as RabbitMQ)
            self._authz(CONFIGURE, "exchange", m.exchange)
            ae = (m.arguments or {}).get("alternate-exchange")
            if isinstance(ae, str) and m.exchange not in self.vhost.exchanges and not m.exchange.startswith("amq."):
                self._authz(READ, "exchange", m.exchange)
                self._authz(WRITE, "exchange", ae)
        self.vhost.declare_exchange(
            m.exchange, m.exchange_type, m.passive, m.durable, m.auto_delete, m.internal, m.arguments or {}
        )
        if not m.nowait:
            self.send(C.Exchange.DeclareOk())

    def _exchange_delete(self, m: C.Exchange.Delete) -> None:
        if m.exchange and not m.exchange.startswith("amq."):
            self._authz(CONFIGURE, "exchange", m.exchange)
        self.vhost.delete_exchange(m.exchange, m.if_unused)
        if not m.nowait:
            self.send(C.Exchange.DeleteOk())

    def _binding_authz(self, kind: str, dest: str, source: str, routing_key: str) -> None:
        """RabbitMQ's binding_action: write on the destination, then (the default
        exchange refused) read on the source and the topic read permission."""
        self._authz(WRITE, kind, dest)
        not_default(source, *([dest] if kind == "exchange" else []))
        self._authz(READ, "exchange", source)
        self._topic_authz(READ, self.vhost.exchanges.get(source), routing_key)

    def _exchange_bind(self, m: C.Exchange.Bind) -> None:
        self._binding_authz("exchange", m.destination, m.source, m.routing_key)
        self.vhost.bind_exchange(m.destination, m.source, m.routing_key, m.arguments or {})
        if not m.nowait:
            self.send(C.Exchange.BindOk())

    def _exchange_unbind(self, m: C.Exchange.Unbind) -> None:
        self._binding_authz("exchange", m.destination, m.source, m.routing_key)
        self.vhost.unbind_exchange(m.destination, m.source, m.routing_key, m.arguments or {})
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
        q = self.vhost.declare_queue(
            m.queue,
            m.passive,
            m.durable,
            m.exclusive,
            m.auto_delete,
            m.arguments or {},
            self.conn,
            authorize=None if m.passive else self._queue_declare_authz,
        )
        self.last_queue = q.name
        if not m.nowait:
            self.conn.send(M.queue_declare_ok_frame(self.number, q.name, q.message_count, q.consumer_count))

    def _queue_declare_authz(self, name: str, arguments: dict[str, Any], new: bool) -> None:
        """queue.declare (not passive), once the name is known: configure on the queue;
        for a new queue the vhost's max-queues and, with a dead-letter exchange, read
        on the queue and write on the DLX (RabbitMQ 3.10's order)."""
        self._authz(CONFIGURE, "queue", name)
        if not new:
            return
        vhost = self.vhost
        limit = self.access.limit(vhost.name, "max-queues")
        if limit is not None and len(vhost.queues) >= limit:
            raise AMQPError(
                PRECONDITION_FAILED, f"cannot declare queue '{name}': queue limit in vhost '{vhost.name}' ({limit}) is reached"
            )
        dlx = arguments.get("x-dead-letter-exchange")
        if isinstance(dlx, str):
            self._authz(READ, "queue", name)
            self._authz(WRITE, "exchange", dlx)

    def _queue_bind(self, m: C.Queue.Bind) -> None:
        self._binding_authz("queue", self._queue_name(m.queue), m.exchange, m.routing_key)
        q = self.vhost.get_queue(self._queue_name(m.queue), self.conn)
        self.vhost.bind_queue(q, m.exchange, m.routing_key, m.arguments or {})
        if not m.nowait:
            self.send(C.Queue.BindOk())

    def _queue_unbind(self, m: C.Queue.Unbind) -> None:
        self._binding_authz("queue", self._queue_name(m.queue), m.exchange, m.routing_key)
        self.vhost.unbind_queue(self._queue_name(m.queue), m.exchange, m.routing_key, m.arguments or {}, self.conn)
        self.send(C.Queue.UnbindOk())

    def _queue_purge(self, m: C.Queue.Purge) -> None:
        self._authz(READ, "queue", self._queue_name(m.queue))
        q = self.vhost.get_queue(self._queue_name(m.queue), self.conn)
        n = q.purge()
        if not m.nowait:
            self.send(C.Queue.PurgeOk(message_count=n))

    def _queue_delete(self, m: C.Queue.Delete) -> None:
        name = self._queue_name(m.queue)
        self._authz(CONFIGURE, "queue", name)
        q = self.vhost.queues.get(name)
        if q is None:
            if not m.nowait:
                self.send(C.Queue.DeleteOk(message_count=0))
            return
        self.vhost.check_exclusive(q, self.conn)
        where = f"queue '{name}' in vhost '{self.vhost.name}'"
        q.qtype.check_delete(m.if_unused, m.if_empty, where)
        if m.if_unused and q.consumers:
            raise AMQPError(PRECONDITION_FAILED, f"{where} in use", 50, 40)
        if m.if_empty and q.total():
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
        self._authz(READ, "queue", name)
        q = self.vhost.get_queue(name, self.conn)
        tag = m.consumer_tag or generated_name("amq.ctag-")
        if tag in self.consumers:
            raise AMQPError(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", 60, 20)
        where = f"queue '{name}' in vhost '{self.vhost.name}'"
        q.qtype.check_consume(self.global_prefetch, where)
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
        self.node.reply_channels[self.reply_key] = self
        self.consumers[tag] = c
        if not m.nowait:
            self.send(C.Basic.ConsumeOk(consumer_tag=tag))
        q.add_consumer(c)

    def _drop_reply_consumer(self) -> None:
        if self.reply_consumer is not None:
            self.node.reply_channels.pop(self.reply_key, None)
            if self.reply_queue is not None:
                self.node.stats_delivered_gone += self.reply_queue.store.stats_deliver  # (the node's total)
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
        self._authz(READ, "queue", self._queue_name(m.queue))
        q = self.vhost.get_queue(self._queue_name(m.queue), self.conn)
        entry = q.get()
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
            raise AMQPError(PRECONDITION_FAILED, "cannot switch from tx to confirm mode", 85, 10)
        if self.confirms is None:
            self.confirms = Confirms(self)
        if not m.nowait:
            self.send(C.Confirm.SelectOk())

    def _tx_select(self, m: C.Tx.Select) -> None:
        if self.confirms is not None:
            raise AMQPError(PRECONDITION_FAILED, "cannot switch from confirm to tx mode", 90, 10)
        if self.tx is None:
            self.tx = Transaction()
        self.send(C.Tx.SelectOk())

    def _tx_commit(self, m: C.Tx.Commit) -> None:
        tx = self.tx
        if tx is None:
            raise AMQPError(PRECONDITION_FAILED, "channel is not transactional", 90, 20)
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
            raise AMQPError(PRECONDITION_FAILED, "channel is not transactional", 90, 30)
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
