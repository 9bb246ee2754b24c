"""Look inside a running broker and inject faults into it, for tests.

:class:`Inspector` wraps a :class:`~leveret.broker.server.Broker` and must be used on the
broker's own event loop: directly in asyncio code that runs the broker in-process
(:class:`leveret.testing.AsyncBroker` is an ``Inspector``), or through
:class:`leveret.testing.BrokerThread` / :class:`leveret.testing.SubprocessBroker`, which run
every call on the broker's loop for you.

Inspection never changes what clients see: :meth:`Inspector.peek` reads a queue's
messages without taking them, the listings are snapshots (plain dataclasses that can
be pickled).  Fault injection is for testing client resilience: close every client
connection, restart the listener on the same port keeping all state, block publishers
with ``connection.blocked``, delay or drop deliveries to consumers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from leveret.broker.core.operations import Session
from leveret.protocol.constants import CONNECTION_FORCED

if TYPE_CHECKING:
    from leveret.broker.core.consumer import Consumer, DeliverySink
    from leveret.broker.core.message import Message
    from leveret.broker.core.queue import Queue
    from leveret.broker.core.vhost import VHost
    from leveret.broker.server import Broker
    from leveret.broker.wire.channel import Channel

__all__ = [
    "BindingInfo",
    "ConnectionInfo",
    "ConsumerInfo",
    "ExchangeInfo",
    "FaultRule",
    "Inspector",
    "PeekedMessage",
    "QueueInfo",
    "Stats",
]

# content-header property names (pamqp attribute -> the name clients use)
_PROPERTY_NAMES = (
    ("content_type", "content_type"),
    ("content_encoding", "content_encoding"),
    ("headers", "headers"),
    ("delivery_mode", "delivery_mode"),
    ("priority", "priority"),
    ("correlation_id", "correlation_id"),
    ("reply_to", "reply_to"),
    ("expiration", "expiration"),
    ("message_id", "message_id"),
    ("timestamp", "timestamp"),
    ("message_type", "type"),
    ("user_id", "user_id"),
    ("app_id", "app_id"),
    ("cluster_id", "cluster_id"),
)

DEFAULT_CLOSE_TEXT = "Closed via leveret.testing"


# ---------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class Stats:
    """Broker-wide message counters (basic.publish, deliveries + basic.get-ok, acks)."""

    published: int = 0
    delivered: int = 0
    acked: int = 0

    def __sub__(self, other: Stats) -> Stats:
        return Stats(
            self.published - other.published,
            self.delivered - other.delivered,
            self.acked - other.acked,
        )


@dataclass(frozen=True)
class QueueInfo:
    vhost: str
    name: str
    durable: bool
    exclusive: bool
    auto_delete: bool
    arguments: dict[str, Any]
    messages: int  # ready
    unacked: int
    consumers: int


@dataclass(frozen=True)
class ExchangeInfo:
    vhost: str
    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: dict[str, Any]


@dataclass(frozen=True)
class BindingInfo:
    vhost: str
    source: str
    destination: str
    destination_type: str  # "queue" or "exchange"
    routing_key: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ConsumerInfo:
    vhost: str
    queue: str
    consumer_tag: str
    channel: int
    connection: str  # peer address
    no_ack: bool
    exclusive: bool
    prefetch_count: int
    unacked: int
    priority: int
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ConnectionInfo:
    peer: str
    vhost: str | None  # None before connection.open
    user: str
    channels: int
    blocked: bool
    publisher: bool
    client_properties: dict[str, Any]


@dataclass(frozen=True)
class PeekedMessage:
    """A copy of a message sitting in a queue (``state`` "ready") or delivered and not
    yet acknowledged (``state`` "unacked")."""

    queue: str
    body: bytes
    exchange: str
    routing_key: str
    redelivered: bool
    properties: dict[str, Any]
    state: str = "ready"

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.get("headers") or {}

    @property
    def content_type(self) -> str | None:
        return self.properties.get("content_type")

    @property
    def correlation_id(self) -> str | None:
        return self.properties.get("correlation_id")

    @property
    def reply_to(self) -> str | None:
        return self.properties.get("reply_to")

    @property
    def message_id(self) -> str | None:
        return self.properties.get("message_id")

    @property
    def delivery_mode(self) -> int | None:
        return self.properties.get("delivery_mode")

    @property
    def priority(self) -> int | None:
        return self.properties.get("priority")


@dataclass
class FaultRule:
    """A delivery fault: ``action`` "delay" (by ``seconds``) or "drop", applied to
    deliveries to consumers matching ``vhost`` / ``queue`` / ``consumer_tag`` (None:
    any).  ``remaining`` deliveries are affected (None: all) and the rule is removed
    when it reaches 0; ``matched`` counts the deliveries it took."""

    id: int
    action: str
    seconds: float = 0.0
    vhost: str | None = None
    queue: str | None = None
    consumer_tag: str | None = None
    remaining: int | None = None
    matched: int = 0

    def matches(self, channel: Channel, consumer: Consumer, queue: Queue) -> bool:
        return (
            (self.queue is None or queue.name == self.queue)
            and (self.vhost is None or channel.vhost.name == self.vhost)
            and (self.consumer_tag is None or consumer.tag == self.consumer_tag)
        )


# ---------------------------------------------------------------------- fault hook


class _FaultSink:
    """What a consumer's deliveries go to while delivery faults are set: the
    :class:`~leveret.broker.core.consumer.DeliverySink` that the injector's hook gives each
    consumer.  It applies the rules and hands every other delivery to the consumer's
    own channel (``consumer.channel``); flow control and prefetch stay the channel's."""

    __slots__ = ("injector", "channel")

    def __init__(self, injector: _FaultInjector, channel: DeliverySink) -> None:
        self.injector = injector
        self.channel = channel

    @property
    def vhost(self) -> VHost:
        return self.channel.vhost

    @property
    def global_prefetch(self) -> int:
        return self.channel.global_prefetch

    @property
    def global_unacked(self) -> int:
        return self.channel.global_unacked

    def can_deliver(self) -> bool:
        return self.channel.can_deliver()

    def deliver(
        self, consumer: Consumer, queue: Queue, seq: int, msg: Message, redelivered: bool
    ) -> None:
        if not self.injector.intercept(consumer, queue, seq, msg, redelivered):
            self.channel.deliver(consumer, queue, seq, msg, redelivered)

    def consumer_cancelled_by_server(self, consumer: Consumer) -> None:
        self.channel.consumer_cancelled_by_server(consumer)


# broker -> its fault injector (nothing is attached to the broker itself)
_injectors: weakref.WeakKeyDictionary[Broker, _FaultInjector] = weakref.WeakKeyDictionary()


class _FaultInjector:
    """The delivery fault rules of one broker.

    While it has rules it is installed as the broker's one test hook,
    :meth:`~leveret.broker.server.Broker.intercept_deliveries`: every consumer's deliveries
    then go through a :class:`_FaultSink`.  Without rules the hook is removed, so a broker
    without faults delivers directly."""

    _ids = itertools.count(1)

    def __init__(self, broker: Broker) -> None:
        # weak: the injector is the value of a WeakKeyDictionary keyed by the broker
        self._broker = weakref.ref(broker)
        self.rules: list[FaultRule] = []
        self.installed = False
        # delayed deliveries not yet made: key -> (timer, delivery arguments)
        self.held: dict[int, tuple[asyncio.TimerHandle, tuple[Any, ...]]] = {}
        self._keys = itertools.count()

    @classmethod
    def of(cls, broker: Broker) -> _FaultInjector:
        inj = _injectors.get(broker)
        if inj is None:
            inj = _injectors[broker] = cls(broker)
        return inj

    @property
    def broker(self) -> Broker | None:
        return self._broker()

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        self._sync()
        return rule

    def remove(self, pred: Callable[[FaultRule], bool]) -> int:
        before = len(self.rules)
        self.rules = [r for r in self.rules if not pred(r)]
        self._sync()
        return before - len(self.rules)

    def release_held(self, vhost: str | None = None) -> None:
        """Make the delayed deliveries (of ``vhost``) now."""
        for key, (timer, args) in list(self.held.items()):
            if vhost is None or args[1].vhost.name == vhost:
                timer.cancel()
                self._fire(key)

    def _sync(self) -> None:
        """Install the hook while there are rules, remove it when there are none."""
        broker = self.broker
        if broker is None:
            return
        if self.rules and not self.installed:
            self.installed = True
            broker.intercept_deliveries(self._wrap)
        elif not self.rules and self.installed:
            self.installed = False
            broker.intercept_deliveries(None)

    def _wrap(self, consumer: Consumer) -> DeliverySink:
        """The delivery hook: the sink ``consumer``'s deliveries go to."""
        return _FaultSink(self, _channel_of(consumer))

    def intercept(
        self, consumer: Consumer, queue: Queue, seq: int, msg: Message, redelivered: bool
    ) -> bool:
        """Apply the first matching rule to a delivery; False: none matched, deliver it."""
        broker = self.broker
        if broker is None:
            return False
        channel = _channel_of(consumer)
        for rule in self.rules:
            if not rule.matches(channel, consumer, queue):
                continue
            rule.matched += 1
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self.rules.remove(rule)
                    self._sync()
            if rule.action == "delay":
                key = next(self._keys)
                timer = broker.loop.call_later(rule.seconds, self._fire, key)
                self.held[key] = (timer, (consumer, queue, seq, msg, redelivered))
            else:  # "drop": the message is gone, as if lost by the broker
                queue.store.discard(seq, msg)  # a durable queue forgets its log record too
            return True
        return False

    def _fire(self, key: int) -> None:
        item = self.held.pop(key, None)
        if item is not None:
            self._release(*item[1])

    def _release(
        self, consumer: Consumer, queue: Queue, seq: int, msg: Message, redelivered: bool
    ) -> None:
        """A delayed delivery is due: deliver it if its consumer is still there, else
        put the message back in its queue (marked redelivered)."""
        channel = _channel_of(consumer)
        # (closing a channel or cancelling a consumer removes it from its queue; a
        # direct reply-to pseudo-queue is marked deleted when its channel closes)
        alive = not queue.deleted and consumer in queue.consumers and channel.conn.is_open
        if alive:
            # straight to the channel: the rules were applied when it was held
            channel.deliver(consumer, queue, seq, msg, redelivered)
        elif not queue.deleted:
            queue.requeue([(seq, msg)])
        broker = self.broker
        if broker is not None:
            broker.flush_all()


# ---------------------------------------------------------------------- inspector


class Inspector:
    """Inspection and fault injection for one broker; call it on the broker's loop."""

    poll_interval = 0.005

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    # ------------------------------------------------------------------ vhosts

    def vhosts(self) -> list[str]:
        return sorted(self.broker.vhosts)

    def add_vhost(self, name: str) -> None:
        self.broker.add_vhost(name)

    def delete_vhost(self, name: str) -> None:
        """Delete a vhost: its connections are closed (320), its queues deleted."""
        self.clear_faults(vhost=name)
        self.unblock_publishers(vhost=name)  # so that they can read connection.close-ok
        self.broker.delete_vhost(name)
        self.broker.flush_all()

    def _vhost(self, name: str) -> VHost:
        v = self.broker.vhosts.get(name)
        if v is None:
            raise KeyError(f"no vhost {name!r}")
        return v

    # ------------------------------------------------------------------ listings

    def stats(self) -> Stats:
        b = self.broker
        return Stats(b.stats_published, b.stats_delivered, b.stats_acked)

    def queues(self, vhost: str = "/") -> list[QueueInfo]:
        return [self._queue_info(q) for q in self._vhost(vhost).queues.values()]

    def queue(self, name: str, vhost: str = "/") -> QueueInfo:
        q = self._vhost(vhost).queues.get(name)
        if q is None:
            raise KeyError(f"no queue {name!r} in vhost {vhost!r}")
        return self._queue_info(q)

    def _queue_info(self, q: Queue) -> QueueInfo:
        ready, unacked = q.reported_counts()  # (a stream: the messages in it, as the API reports)
        return QueueInfo(
            vhost=q.vhost.name,
            name=q.name,
            durable=q.durable,
            exclusive=q.exclusive_owner is not None,
            auto_delete=q.auto_delete,
            arguments=dict(q.arguments),
            messages=ready,
            unacked=unacked,
            consumers=len(q.consumers),
        )

    def exchanges(self, vhost: str = "/") -> list[ExchangeInfo]:
        """Every exchange, including the default ("") and ``amq.*`` ones."""
        return [
            ExchangeInfo(
                vhost, x.name, x.type, x.durable, x.auto_delete, x.internal, dict(x.arguments)
            )
            for x in self._vhost(vhost).exchanges.values()
        ]

    def bindings(self, vhost: str = "/", include_default: bool = False) -> list[BindingInfo]:
        """Queue and exchange bindings; with ``include_default`` also the implicit
        binding of every queue to the default exchange (as ``rabbitmqctl`` lists them)."""
        from leveret.broker.core.queue import Queue

        v = self._vhost(vhost)
        out: list[BindingInfo] = []
        if include_default:
            out.extend(
                BindingInfo(vhost, "", q.name, "queue", q.name, {}) for q in v.queues.values()
            )
        for x in v.exchanges.values():
            if x.name == "":
                continue
            for (dest, rk, _), args in list(x.bindings.items()):
                kind = "queue" if isinstance(dest, Queue) else "exchange"
                out.append(BindingInfo(vhost, x.name, dest.name, kind, rk, dict(args or {})))
        return out

    def consumers(self, vhost: str = "/") -> list[ConsumerInfo]:
        out: list[ConsumerInfo] = []
        for q in self._vhost(vhost).queues.values():
            for c in q.consumers:
                ch = _channel_of(c)
                out.append(
                    ConsumerInfo(
                        vhost=vhost,
                        queue=q.name,
                        consumer_tag=c.tag,
                        channel=ch.number,
                        connection=ch.conn.peer,
                        no_ack=c.no_ack,
                        exclusive=c.exclusive,
                        prefetch_count=c.prefetch,
                        unacked=c.unacked,
                        priority=c.priority,
                        arguments=dict(c.arguments),
                    )
                )
        return out

    def connections(self, vhost: str | None = None) -> list[ConnectionInfo]:
        """Client connections (all vhosts when ``vhost`` is None)."""
        out = []
        for c in self._connections(vhost):
            out.append(
                ConnectionInfo(
                    peer=c.peer,
                    vhost=c.vhost.name if c.vhost is not None else None,
                    user=c.user,
                    channels=len(c.channels),
                    blocked=c.blocked,
                    publisher=c.is_publisher,
                    client_properties=dict(c.client_properties),
                )
            )
        return out

    def _connections(self, vhost: str | None) -> list[Any]:
        # not those the client closed, whose socket the broker only drains until EOF
        conns = [c for c in self.broker.connections if not c.draining]
        if vhost is None:
            return conns
        return [c for c in conns if c.vhost is not None and c.vhost.name == vhost]

    # ------------------------------------------------------------------ messages

    def message_count(self, queue: str, vhost: str = "/") -> int:
        """Ready messages in ``queue`` (0 when it does not exist; a stream: the messages in it)."""
        v = self.broker.vhosts.get(vhost)
        q = v.queues.get(queue) if v is not None else None
        return 0 if q is None else q.reported_counts()[0]

    def peek(
        self, queue: str, vhost: str = "/", limit: int | None = None, include_unacked: bool = False
    ) -> list[PeekedMessage]:
        """The messages in ``queue`` in delivery order, without consuming them.

        With ``include_unacked`` the messages delivered to consumers (or fetched with
        basic.get) and not yet acknowledged come first, oldest first."""
        v = self._vhost(vhost)
        q = v.queues.get(queue)
        if q is None:
            raise KeyError(f"no queue {queue!r} in vhost {vhost!r}")
        return self._peek(q, limit, include_unacked)

    def _peek(self, q: Queue, limit: int | None, include_unacked: bool) -> list[PeekedMessage]:
        out: list[PeekedMessage] = []
        if include_unacked:
            pending: list[tuple[int, Message]] = []
            for conn in list(self.broker.connections):
                for ch in list(conn.channels.values()):
                    for entry in list(ch.unacked.entries.values()):
                        if entry[0] is q:
                            pending.append((entry[1], entry[2]))
            pending.sort(key=lambda e: e[0])
            out.extend(_peeked(q, m, True, "unacked") for _, m in pending)
        for ready in _ready_entries(q):
            if limit is not None and len(out) >= limit:
                break
            out.append(_peeked(q, ready[1], ready[2], "ready"))
        return out[:limit] if limit is not None else out

    async def wait_for_message(
        self,
        queue: str,
        vhost: str = "/",
        timeout: float = 5.0,
        predicate: Callable[[PeekedMessage], bool] | None = None,
        include_unacked: bool = False,
    ) -> PeekedMessage:
        """Wait until ``queue`` holds a message (matching ``predicate``) and return a copy
        of the first one; the message stays in the queue.  The queue need not exist
        yet.  Raises :class:`TimeoutError` after ``timeout`` seconds."""
        msgs = await self.wait_for_messages(queue, 1, vhost, timeout, predicate, include_unacked)
        return msgs[0]

    async def wait_for_messages(
        self,
        queue: str,
        count: int,
        vhost: str = "/",
        timeout: float = 5.0,
        predicate: Callable[[PeekedMessage], bool] | None = None,
        include_unacked: bool = False,
    ) -> list[PeekedMessage]:
        """Wait until ``queue`` holds at least ``count`` (matching) messages; return them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found: list[PeekedMessage] = []
            v = self.broker.vhosts.get(vhost)
            q = v.queues.get(queue) if v is not None else None
            if q is not None:
                for m in self._peek(q, None, include_unacked):
                    if predicate is None or predicate(m):
                        found.append(m)
                        if len(found) >= count:
                            return found
            if loop.time() >= deadline:
                where = f"queue {queue!r} in vhost {vhost!r}"
                if q is None:
                    state = "the queue does not exist"
                else:
                    state = (
                        f"it has {q.message_count} ready and {q.unacked_count} unacked, "
                        f"{len(found)} matching"
                    )
                raise TimeoutError(
                    f"expected {count} message(s) on {where} within {timeout} s; {state}"
                )
            await asyncio.sleep(self.poll_interval)

    def purge(self, queue: str, vhost: str = "/") -> int:
        """Drop every ready message of ``queue``; return how many there were."""
        v = self._vhost(vhost)
        q = v.queues.get(queue)
        if q is None:
            raise KeyError(f"no queue {queue!r} in vhost {vhost!r}")
        # the core's queue.purge, as the node (no permission check) on behalf of the
        # queue's owner (an exclusive queue too)
        return Session(v, None, q.exclusive_owner).purge(queue)

    # ------------------------------------------------------------------ faults

    async def close_connections(
        self,
        code: int = CONNECTION_FORCED,
        text: str = DEFAULT_CLOSE_TEXT,
        vhost: str | None = None,
        timeout: float = 0.0,
    ) -> int:
        """Send connection.close (``code``, ``text``) to every client connection (of
        ``vhost``); return how many.  With ``timeout`` wait up to that long for the
        clients to answer (the broker drops a silent one after ``close_timeout``)."""
        conns = self._connections(vhost)
        for c in conns:
            c.close_forced(code, text)
        self.broker.flush_all()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(c in self.broker.connections for c in conns) and loop.time() < deadline:
            await asyncio.sleep(self.poll_interval)
        return len(conns)

    async def restart(self, downtime: float = 0.0, grace: float = 0.1) -> None:
        """Stop listening and close every connection (320, as a broker shutdown does),
        wait ``downtime`` seconds, then listen again on the same address and port.

        Clients get ``grace`` seconds to answer connection.close with close-ok; the
        sockets of the others are then closed (after the connection.close frame).
        Vhosts, exchanges, queues, bindings and ready messages are kept (unacked
        messages of the closed connections go back to their queues; exclusive queues go
        with their connections), so a client's reconnect logic finds the broker as it
        left it."""
        b = self.broker
        if b.server is None:
            raise RuntimeError("the broker is not listening")
        # connection.close 320 to every client; after ``grace`` the sockets of those that
        # did not answer are closed (after what is queued for them: the connection.close)
        hosts, port = await b.stop_listening(grace, abort=False)
        if downtime > 0:
            await asyncio.sleep(downtime)
        await b.listen(hosts if len(hosts) > 1 else hosts[0], port)

    def block_publishers(self, vhost: str | None = None, publishers_only: bool = False) -> int:
        """Send connection.blocked and stop reading from client connections (of
        ``vhost``), as RabbitMQ's memory alarm does; return how many were blocked.

        By default every open connection is blocked (a connection that has not
        published yet would be blocked by RabbitMQ on its first publish);
        ``publishers_only`` limits it to connections that have published.  Connections
        opened later are not blocked."""
        n = 0
        for c in self._connections(vhost):
            if c.blocked or (publishers_only and not c.is_publisher):
                continue
            c.block()
            n += c.blocked
        self.broker.flush_all()
        return n

    def unblock_publishers(self, vhost: str | None = None) -> int:
        """connection.unblocked and resume reading; return how many were unblocked."""
        n = 0
        for c in self._connections(vhost):
            if c.blocked:
                c.unblock()
                n += 1
        self.broker.flush_all()
        return n

    def delay_deliveries(
        self,
        seconds: float,
        queue: str | None = None,
        vhost: str | None = None,
        consumer_tag: str | None = None,
        count: int | None = None,
    ) -> FaultRule:
        """Hold deliveries to matching consumers for ``seconds`` (the next ``count``
        ones, or all until :meth:`clear_faults`).  A held message is not yet counted as
        unacked, so later messages may overtake it; if its consumer is gone when the
        delay is over it goes back to its queue."""
        return self._add_rule("delay", seconds, queue, vhost, consumer_tag, count)

    def drop_deliveries(
        self,
        queue: str | None = None,
        vhost: str | None = None,
        consumer_tag: str | None = None,
        count: int | None = None,
    ) -> FaultRule:
        """Silently discard deliveries to matching consumers (the next ``count`` ones, or
        all until :meth:`clear_faults`): the message is lost, as if the broker lost it.
        basic.get is not affected."""
        return self._add_rule("drop", 0.0, queue, vhost, consumer_tag, count)

    def _add_rule(
        self,
        action: str,
        seconds: float,
        queue: str | None,
        vhost: str | None,
        consumer_tag: str | None,
        count: int | None,
    ) -> FaultRule:
        if count is not None and count <= 0:
            raise ValueError("count must be positive (or None for every delivery)")
        rule = FaultRule(
            next(_FaultInjector._ids), action, seconds, vhost, queue, consumer_tag, count
        )
        return _FaultInjector.of(self.broker).add(rule)

    def faults(self) -> list[FaultRule]:
        """The active delivery fault rules (with their ``matched`` counters)."""
        return list(_FaultInjector.of(self.broker).rules)

    def clear_faults(self, vhost: str | None = None, rule_id: int | None = None) -> int:
        """Remove delivery fault rules (all; those of ``vhost``; or one by id) and return
        how many.  Deliveries held back by a delay rule (of ``vhost``) are made at once
        (or go back to their queue if their consumer is gone)."""
        inj = _FaultInjector.of(self.broker)
        n = inj.remove(
            lambda r: (rule_id is None or r.id == rule_id) and (vhost is None or r.vhost == vhost)
        )
        if rule_id is None:
            inj.release_held(vhost)
            self.broker.flush_all()
        return n


# ---------------------------------------------------------------------- helpers


def _channel_of(consumer: Consumer) -> Any:
    """The wire-layer channel that created ``consumer`` (its own delivery sink)."""
    return consumer.channel


def _ready_entries(q: Queue) -> Iterable[tuple[Any, ...]]:
    """``(seq or log position, message, redelivered, ...)`` of the ready messages in
    delivery order: those in memory, then those paged out to the queue's log (or
    overflow log)."""
    yield from q.entries()
    store = q.store
    qlog = store.plog
    if qlog is None or store.tail_start >= len(store.tail):
        return
    from leveret.broker.core.message import from_record

    redelivered = store.recovered_delivered
    for pos in store.tail[store.tail_start :]:
        try:
            msg = from_record(qlog.read(pos))
        except Exception:  # unreadable: the queue drops it when it gets there
            continue
        yield (pos, msg, pos in redelivered)


def _peeked(q: Queue, msg: Message, redelivered: bool, state: str) -> PeekedMessage:
    return PeekedMessage(
        queue=q.name,
        body=bytes(msg.body),
        exchange=msg.exchange,
        routing_key=msg.routing_key,
        redelivered=bool(redelivered),
        properties=_properties(msg.header),
        state=state,
    )


def _properties(header: bytes) -> dict[str, Any]:
    from leveret.protocol import properties as P

    if header[12:14] == b"\x00\x00":
        return {}
    try:
        props = P.decode_properties(header)
    except Exception:  # malformed: the broker passes it through, we show nothing
        return {}
    out: dict[str, Any] = {}
    for attr, name in _PROPERTY_NAMES:
        value = getattr(props, attr, None)
        if value is not None:
            out[name] = value
    return out
