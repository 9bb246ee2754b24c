"""Queues: RabbitMQ's queue semantics over a backing store.

A :class:`Queue` decides what happens to a message: which consumer gets it (round robin
among the highest-priority consumers with credit, single active consumer), message TTL
(per queue and per message, expired at the head, with a timer when no consumer takes
them), queue TTL (``x-expires``), length limits with the three overflow modes and dead
lettering.  Where its ready messages live (RAM, paged out to the log) and their seqs are
the :class:`~leveret.broker.core.backing.BackingQueue`'s business.

Dispatch is synchronous: publishing to a queue with a ready consumer delivers at once
through the consumer's :class:`~leveret.broker.core.consumer.DeliverySink`; acks, qos
changes and a consumer's socket draining call :meth:`Queue.dispatch` again.  A consumer is
*ready* when its channel has prefetch credit and can take output: this is the
backpressure that keeps a slow consumer from growing the broker's memory.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from leveret.broker.core import backing
from leveret.broker.core.backing import PAGING, BackingQueue, Entry
from leveret.broker.core.consumer import Consumer
from leveret.broker.core.flow import CREDIT_SHIFT, FlowGate
from leveret.broker.core.message import Message
from leveret.broker.core.queuetype import CLASSIC
from leveret.protocol.properties import FLAGS_HI, HI_DELIVERY_MODE, HI_EXPIRATION

if TYPE_CHECKING:
    import asyncio

    from leveret.broker.core.vhost import VHost

log = logging.getLogger("leveret.queue")


class Enqueued:
    """What :meth:`Queue.publish` did with a message: bit flags, OR-ed over the queues a
    message was routed to (plain ints: this is the hot path)."""

    ACCEPTED = 0  # delivered, or kept ready
    PERSISTED = 1  # ... and written to the queue's log: confirm it after the next fsync
    REFUSED = 2  # not taken: x-overflow reject-publish(-dlx), or the log write failed
    FLOW = 4  # kept ready in a queue in flow (see leveret.broker.core.flow): costs credit


ACCEPTED = Enqueued.ACCEPTED
PERSISTED = Enqueued.PERSISTED
REFUSED = Enqueued.REFUSED
FLOW = Enqueued.FLOW


def _int_arg(args: dict[str, Any], name: str) -> int | None:
    v = args.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str_arg(args: dict[str, Any], name: str) -> str | None:
    v = args.get(name)
    if isinstance(v, bytes | bytearray):
        return bytes(v).decode("utf-8", "replace")
    return v if isinstance(v, str) else None


class Queue:
    """A classic queue (the quorum queue's class, ``quorum.QuorumQueue``, builds on it)."""

    #: the queue's type (``leveret.broker.core.queuetype``), fixed by its class
    qtype = CLASSIC
    #: every message goes to the queue's log, whatever its delivery mode (quorum)
    persist_all = False

    def __init__(
        self,
        vhost: VHost,
        name: str,
        *,
        durable: bool = False,
        exclusive_owner: Any = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        effective: dict[str, Any] | None = None,
    ) -> None:
        """``arguments``: the declared x-arguments; ``effective``: those with the
        vhost's policies applied (``policy.effective_arguments``; None: the same)."""
        self.vhost = vhost
        self.node = vhost.node
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments: dict[str, Any] = dict(arguments or {})
        self.consumers: list[Consumer] = []
        self._rr = 0
        self.had_consumers = False
        self.deleted = False
        self.unacked_count = 0
        # (CPython keeps an instance's attributes in a compact, fast dict only up to 30
        # of them: new per-queue state goes to the backing store, as its counters did)
        args = self.arguments
        self.max_priority = _int_arg(args, "x-max-priority")
        self.single_active = args.get("x-single-active-consumer") is True
        persistence = self.node.persistence
        self.store = BackingQueue(
            self.node, self.max_priority, persistence.open_overflow if persistence is not None else None
        )
        self.configure(effective if effective is not None else args)
        self.prio_consumers = False
        self.has_ttl_msgs = self.ttl is not None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expires_timer: asyncio.TimerHandle | None = None
        self.flow = FlowGate()  # publishers waiting for this queue's consumers to catch up
        self.touch()

    def configure(self, args: dict[str, Any]) -> None:
        """The settings a policy may change, from the queue's effective arguments (its
        x-arguments with its policy and operator policy applied: the vhost computes them
        with ``policy.effective_arguments``).  Called at declare and after every policy
        change (:meth:`policy_changed`); never per message.  A queue type reads its own
        keys here (e.g. ``x-delivery-limit``, ``x-dead-letter-strategy``)."""
        ttl = _int_arg(args, "x-message-ttl")
        self.ttl: float | None = ttl / 1000.0 if ttl is not None else None
        self.max_length = _int_arg(args, "x-max-length")
        self.max_bytes = _int_arg(args, "x-max-length-bytes")
        self.overflow = _str_arg(args, "x-overflow") or "drop-head"
        self.dlx = _str_arg(args, "x-dead-letter-exchange")
        self.dlrk = _str_arg(args, "x-dead-letter-routing-key")
        expires = _int_arg(args, "x-expires")
        self.expires: float | None = expires / 1000.0 if expires is not None else None
        # the fast path skips every feature check when none is configured
        self.plain = (
            self.ttl is None and self.max_length is None and self.max_bytes is None and not self.max_priority
        )
        self.has_limits = self.max_length is not None or self.max_bytes is not None

    def policy_changed(self, args: dict[str, Any]) -> None:
        """A policy now applies differently: new effective arguments.  As RabbitMQ: a new
        message TTL applies to messages enqueued from now on (those already in the queue
        keep their expiry); a lower length limit drops (dead-letters) from the head at once
        under ``drop-head``; a new queue TTL restarts the countdown."""
        self.configure(args)
        if self.ttl is not None:
            self.has_ttl_msgs = True
        if self._expires_timer is not None:
            self._expires_timer.cancel()
            self._expires_timer = None
        self.touch()
        if self.has_limits and self.overflow == "drop-head":
            self._enforce_limits()
        if self.flow.waiters and not self.in_flow():
            self.flow.release()

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def log(self) -> Any:
        """The durable queue's ``storage.QueueLog`` (None: nothing on disk)."""
        return self.store.log

    def __repr__(self) -> str:
        return f"<Queue {self.name!r}>"

    # ---------------------------------------------------------------- publishing

    def publish(self, msg: Message) -> int:
        """Enqueue a routed message, delivering it at once if a consumer is ready.
        Returns an :class:`Enqueued` value."""
        store = self.store
        store.stats_publish += 1
        if self.plain and store.log is None and not msg.header[FLAGS_HI] & HI_EXPIRATION:
            # no limits, no TTL, nothing to persist
            length = store.length()
            if length != PAGING:
                # all in RAM: the hot path.  SHORT: delivered now if a consumer is ready,
                # else kept ready; LONG: kept behind the backlog, in flow with consumers
                msgs = store.messages
                seq = store.next_seq
                store.next_seq = seq + 1
                if self.consumers and not msgs:
                    c = self._next_ready()
                    if c is not None:
                        c.sink.deliver(c, self, seq, msg, False)
                        return ACCEPTED
                msgs.append((seq, msg, False, 0.0))
                size = msg.size
                store.ready_bytes += size
                self.node.queued_bytes += size
                return FLOW if length and self.consumers else ACCEPTED
        return self._publish_slow(msg)

    def in_flow(self) -> bool:
        """Consumers and a backlog: publishers into this queue are held to their pace."""
        return bool(self.consumers) and self.store.backlogged()

    def _publish_slow(self, msg: Message) -> int:
        store = self.store
        if self.has_limits and self.overflow != "drop-head" and self._would_overflow(msg):
            if self.overflow == "reject-publish-dlx":
                self.dead_letter(msg, "maxlen")
            return REFUSED
        ttl = self.ttl_of(msg)
        persist = store.log is not None and (
            (msg.header[FLAGS_HI] & HI_DELIVERY_MODE and msg.persistent) or self.persist_all
        )
        if (ttl is not None or persist) and not msg.ts:
            msg.ts = time.time()
        expires_at = 0.0
        if ttl is not None:
            expires_at = msg.ts + ttl
            self.has_ttl_msgs = True
        c = None
        if self.consumers and store.empty():
            c = self._next_ready()
        if c is None and ttl is not None and ttl <= 0:
            # TTL 0: only delivered if a consumer could take it right away
            self.dead_letter(msg, "expired")
            return ACCEPTED
        page = c is None and store.wants_page()
        if persist or page:
            try:
                seq = store.write(msg, bool(persist))
            except OSError as exc:
                self.node.disk_error(exc)
                return REFUSED
        else:
            seq = store.take_seq()
        outcome = PERSISTED if persist else ACCEPTED
        if c is not None:
            c.sink.deliver(c, self, seq, msg, False)
            return outcome
        if page:
            store.page(seq, msg, bool(persist))
        else:
            if store.max_priority and store.tail_start < len(store.tail):
                # a priority queue never pages new messages, but a recovered durable one
                # starts with its messages paged out: they go into RAM first, or this one
                # would be delivered ahead of older messages of its priority and above
                self._refill()
            store.append(seq, msg, expires_at)
        if self.has_limits:
            self._enforce_limits()
        if expires_at:
            self._schedule_expiry()
        if self.consumers and store.backlogged():
            return outcome | FLOW
        return outcome

    def _would_overflow(self, msg: Message) -> bool:
        if self.max_length is not None and self.store.total() >= self.max_length:
            return True
        return self.max_bytes is not None and self.store.total_bytes() + msg.size > self.max_bytes

    def _enforce_limits(self) -> None:
        store = self.store
        while (self.max_length is not None and store.total() > self.max_length) or (
            self.max_bytes is not None and store.total_bytes() > self.max_bytes and store.total()
        ):
            if not store.messages and not self._refill():
                return
            seq, m, _, _ = store.pop()
            store.discard(seq, m)
            self.dead_letter(m, "maxlen")

    def total(self) -> int:
        """Ready messages, in RAM and paged out."""
        return self.store.total()

    # ---------------------------------------------------------------- TTL: one home

    def ttl_of(self, msg: Message) -> float | None:
        """The TTL that applies to ``msg`` here (seconds): the queue's x-message-ttl and the
        message's expiration, whichever is shorter; None when neither is set."""
        ttl = self.ttl
        if msg.header[FLAGS_HI] & HI_EXPIRATION:
            exp = msg.expiration_ms
            if exp is not None:
                ttl = exp / 1000.0 if ttl is None else min(ttl, exp / 1000.0)
        return ttl

    def expires_at(self, msg: Message, now: float) -> float:
        """When ``msg`` (published at ``msg.ts``, else ``now``) expires here; 0.0: never."""
        ttl = self.ttl_of(msg)
        if ttl is None:
            return 0.0
        self.has_ttl_msgs = True
        return (msg.ts or now) + ttl

    # ---------------------------------------------------------------- log and paging

    def attach_log(self, qlog: Any, positions: array[int], nbytes: int = 0) -> None:
        """Durable queue: its log, and the positions (and body bytes) of the messages
        recovered from it."""
        self.store.attach_log(qlog, positions, nbytes)
        if len(positions) and self.ttl is not None:
            # TTL kept counting while we were down: expire what is due now
            self.has_ttl_msgs = True
            self.node.loop.call_soon(self._on_expiry_timer)

    def _refill(self, batch: int = 0, max_bytes: int = 0) -> bool:
        if not self.store.refill(self.expires_at, self.ttl is not None, batch, max_bytes):
            return False
        if self.has_ttl_msgs:
            self._schedule_expiry()
        return True

    def maybe_compact(self) -> None:
        """Compact the log if it is sparse; the node moves the seqs held elsewhere."""
        remap = self.store.compact()
        if remap is not None and self.unacked_count:
            self.node.queue_compacted(self, remap)

    # ---------------------------------------------------------------- consumers

    def _next_ready(self) -> Consumer | None:
        consumers = self.consumers
        n = len(consumers)
        if n == 1 or self.single_active:
            c = consumers[0]
            return c if c.ready() else None
        if self.prio_consumers:
            # highest priority first; round robin among consumers of equal priority
            i = 0
            while i < n:
                p = consumers[i].priority
                j = i
                while j < n and consumers[j].priority == p:
                    j += 1
                group = j - i
                start = self._rr % group
                for k in range(group):
                    c = consumers[i + (start + k) % group]
                    if c.ready():
                        self._rr = start + k + 1
                        return c
                i = j
            return None
        start = self._rr
        for i in range(n):
            c = consumers[(start + i) % n]
            if c.ready():
                self._rr = (start + i + 1) % n
                return c
        return None

    def check_consume(self, global_prefetch: int, prefetch: int, no_ack: bool, args: dict[str, Any], where: str) -> None:
        """basic.consume's checks of the queue's type (a stream has more: ``stream.py``)."""
        self.qtype.check_consume(global_prefetch, where)

    def dispatch(self) -> None:
        """Deliver ready messages while some consumer has credit."""
        if not self.consumers or self.deleted:
            return
        store = self.store
        if not store.messages and not self._refill():
            return
        n = 0
        if self.has_ttl_msgs:
            self.drop_expired()
        elif len(self.consumers) == 1:
            # one consumer and no TTL (the common case): no choice to make per message
            only = self.consumers[0]
            sink = only.sink
            while only.ready():
                # (a batch read back may be the first to carry expirations: a durable
                # queue after a restart.  The loop below then checks each message)
                if not store.messages and (not self._refill() or self.has_ttl_msgs):
                    break
                seq, msg, redelivered, _ = store.pop()
                sink.deliver(only, self, seq, msg, redelivered)
                n += 1 + (msg.size >> CREDIT_SHIFT)
        while True:
            if not store.messages and not self._refill():
                break
            c = self._next_ready()
            if c is None:
                break
            seq, msg, redelivered, expires_at = store.pop()
            if expires_at and expires_at <= time.time():
                store.discard(seq, msg)
                self.dead_letter(msg, "expired")
                continue
            c.sink.deliver(c, self, seq, msg, redelivered)
            n += 1 + (msg.size >> CREDIT_SHIFT)
        if self.flow.waiters:
            if not self.in_flow():
                self.flow.release()
            elif n:
                self.flow.delivered(n)
        if (store.tail_start < len(store.tail) and len(store.messages) < backing.READ_AHEAD
                and store.ready_bytes < backing.READ_AHEAD_BYTES and not store.reading_ahead):
            store.reading_ahead = True
            self.node.loop.call_soon(self._read_ahead)

    def _read_ahead(self) -> None:
        """Read the next paged-out messages back while the consumers are busy with what
        they were sent (see READ_AHEAD), then dispatch (which may read ahead again)."""
        store = self.store
        store.reading_ahead = False
        if (not self.deleted and len(store.messages) < backing.READ_AHEAD
                and store.ready_bytes < backing.READ_AHEAD_BYTES
                and self._refill(backing.READ_AHEAD_CHUNK, backing.READ_AHEAD_CHUNK_BYTES)):
            self.dispatch()

    def get(self, no_ack: bool = False) -> Entry | None:
        """basic.get: the head entry, taken out of the queue (None: empty), counted (get,
        get without ack, get-empty).  Whoever takes it hands it out (:meth:`handed_out`)
        or settles it (:meth:`got_settled`)."""
        self.touch()
        store = self.store
        if not store.messages:
            self._refill()
        if self.has_ttl_msgs:
            self.drop_expired()
        if not store.messages:
            store.stats_get_empty += 1
            return None
        store.stats_get += 1
        if no_ack:
            store.stats_get_noack += 1
        entry = store.pop()
        if self.has_ttl_msgs:
            # as RabbitMQ: expired messages now at the head go too, so get-ok's
            # message_count does not count them
            self.drop_expired()
        return entry

    def requeue(self, entries: list[tuple[int, Message]]) -> None:
        """Put unacked messages back at their original place, marked redelivered."""
        if self.deleted or not entries:
            return
        entries.sort(key=lambda e: e[0])
        now = time.time()
        if self.has_ttl_msgs:
            back: list[Entry] = [(s, m, True, self.expires_at(m, now) if m.ts else 0.0) for s, m in entries]
        else:
            back = [(s, m, True, 0.0) for s, m in entries]
        self.store.put_back(back)
        if self.has_ttl_msgs:
            self.drop_expired(now)
        self.dispatch()
        if self.has_limits and self.overflow == "drop-head":
            # (RabbitMQ: reject-publish* queues never drop a requeued message)
            self._enforce_limits()

    # ---------------------------------------------------------------- the queue's books
    # (what was handed out and how it was settled: the counters and the log's marks are
    # written here only, whoever hands a message out -- a channel, the management API)

    def handed_out(self, seq: int, msg: Message, redelivered: bool, no_ack: bool) -> None:
        """A delivery or basic.get-ok left the queue: counted; with an ack to come it is
        unacked (and, the first time, marked delivered in the log: recovery redelivers
        it); without one (no-ack) its log record is acked now."""
        store = self.store
        store.stats_deliver += 1
        if redelivered:
            store.stats_redeliver += 1
        if not no_ack:
            store.stats_deliver_manual += 1  # (not on the no-ack path, the fastest one)
            self.unacked_count += 1
            if (not redelivered or self.persist_all) and store.log is not None:  # (durable: recovery marks)
                store.mark_delivered(seq)
        elif store.log is not None:
            store.discard(seq, msg)

    def got_settled(self, seq: int, msg: Message, redelivered: bool, requeue: bool, reject: bool) -> None:
        """A basic.get settled at once (the management API's get): counted as a delivery,
        then acked, or rejected (dead-lettered), unless it goes back (``requeue``: the
        caller returns those together, :meth:`requeue`)."""
        store = self.store
        store.stats_deliver += 1
        if redelivered:
            store.stats_redeliver += 1
        if not requeue:
            self.unacked_count += 1
            self.settle(seq, msg, reject)

    def returned(self, entries: list[tuple[int, Message]]) -> None:
        """Unacked deliveries come back (nack/reject with requeue, recover, their channel
        closed): no longer unacked, requeued (:meth:`requeue`)."""
        self.unacked_count -= len(entries)
        self.requeue(entries)

    def counters(self) -> dict[str, int]:
        """The queue's message counters by name (``deliver``, ``ack`` and those of
        ``backing.GONE_STATS``), for the totals kept of a queue that goes."""
        store = self.store
        out = {k: getattr(store, "stats_" + k) for k in backing.GONE_STATS}
        out["deliver"] = store.stats_deliver
        out["ack"] = store.stats_ack
        return out

    def settle(self, seq: int, msg: Message, reject: bool) -> None:
        """A delivery was acked (or rejected without requeue: dead-lettered)."""
        self.unacked_count -= 1
        store = self.store
        if not reject:
            store.stats_ack += 1
        if store.log is not None:
            store.discard(seq, msg)
        if reject and self.dlx is not None and not self.deleted:
            self.dead_letter(msg, "rejected")

    def purge(self) -> int:
        n = self.store.purge()
        if self.flow.waiters:
            self.flow.release()
        return n

    # ---------------------------------------------------------------- TTL / expiry

    def drop_expired(self, now: float | None = None) -> None:
        """Dead-letter expired messages at the head of the queue."""
        store = self.store
        if not store.messages and not self._refill():
            return
        now = now or time.time()
        while store.messages or self._refill():  # on into the paged-out tail
            head = store.head()
            if head is None or not head[3] or head[3] > now:
                break
            seq, m, _, _ = store.pop()
            store.discard(seq, m)
            self.dead_letter(m, "expired")
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        if self._expiry_timer is not None or self.deleted:
            return
        head = self.store.head()
        if head is None or not head[3]:
            return
        delay = max(0.0, head[3] - time.time())
        self._expiry_timer = self.node.loop.call_later(delay + 0.001, self._on_expiry_timer)

    def _on_expiry_timer(self) -> None:
        self._expiry_timer = None
        self.drop_expired()
        self.node.flush_all()

    def touch(self) -> None:
        """The queue was used: restart its x-expires countdown."""
        if self.expires is None or self.deleted:
            return
        if self._expires_timer is not None:
            self._expires_timer.cancel()
            self._expires_timer = None
        if self.consumers:
            return
        loop = self.node.loop
        if loop is None:
            return
        self._expires_timer = loop.call_later(self.expires, self._on_expires)

    def _on_expires(self) -> None:
        self._expires_timer = None
        if not self.consumers and not self.deleted:
            log.info("queue %r in vhost %r expired (x-expires)", self.name, self.vhost.name)
            self.vhost.delete_queue(self)
            self.node.flush_all()

    def cancel_timers(self) -> None:
        for t in (self._expiry_timer, self._expires_timer):
            if t is not None:
                t.cancel()
        self._expiry_timer = self._expires_timer = None

    # ---------------------------------------------------------------- dead letters

    def dead_letter(self, msg: Message, reason: str) -> None:
        """Republish to the dead-letter exchange, or drop when there is none."""
        if self.dlx is None:
            return
        self.vhost.dead_letter(self, msg, reason)

    # ---------------------------------------------------------------- consumers

    def add_consumer(self, consumer: Consumer) -> None:
        hook = self.node.delivery_hook
        if hook is not None:
            consumer.sink = hook(consumer)
        if consumer.priority or self.prio_consumers:
            self.prio_consumers = True
            # keep consumers ordered by priority (stable for equal priorities)
            i = len(self.consumers)
            while i > 0 and self.consumers[i - 1].priority < consumer.priority:
                i -= 1
            self.consumers.insert(i, consumer)
        else:
            self.consumers.append(consumer)
        self.had_consumers = True
        if self._expires_timer is not None:
            self._expires_timer.cancel()
            self._expires_timer = None
        self.dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if self._rr >= len(self.consumers):
            self._rr = 0
        if self.auto_delete and not self.consumers and self.had_consumers and not self.deleted:
            self.vhost.delete_queue(self)
            return
        if not self.consumers:
            if self.flow.waiters:
                self.flow.release()
            self.touch()
        elif self.single_active:
            self.dispatch()

    @property
    def message_count(self) -> int:
        if self.has_ttl_msgs:
            self.drop_expired()
        return self.store.total()

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    def reported_counts(self) -> tuple[int, int]:
        """(ready, unacknowledged) as the management API and Prometheus report them (a
        stream: the messages in it, none unacknowledged)."""
        return self.message_count, self.unacked_count

    def entries(self) -> Iterable[Entry]:
        """Ready messages in RAM, in delivery order (for inspection)."""
        return iter(self.store)
