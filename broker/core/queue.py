"""Queues and consumers.

A queue holds its ready messages as ``(seq, message, redelivered, expires_at)`` entries,
``seq`` increasing per queue so a requeued message goes back to its original place.
Priority queues (``x-max-priority``) keep one deque per priority level behind the same
interface.  Dispatch is synchronous: publishing to a queue with a ready consumer
delivers at once (round robin among the highest-priority consumers with credit); acks,
qos changes and a consumer's socket draining call :meth:`Queue.dispatch` again.  A
consumer is *ready* when its channel has prefetch credit and its connection's output is
below the high-water mark: this is the backpressure that keeps a slow consumer from
growing the broker's memory.

RabbitMQ's queue features live here too: message TTL (per queue and per message, expired
at the head, with a timer when no consumer takes them), queue TTL (``x-expires``),
length limits with the three overflow modes, dead lettering, single active consumer and
consumer priorities.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from leveret.broker.core.message import Message
from leveret.broker.core.persistence import decode_record, encode_record

if TYPE_CHECKING:
    from leveret.broker.core.vhost import VHost
    from leveret.broker.wire.channel import Channel

log = logging.getLogger("leveret.queue")

Entry = tuple[int, Message, bool, float]

# Durable queues: a message with a log record has seq = position << SEQ_SHIFT; messages
# without one get the following integers, so seq order is queue order either way.
SEQ_SHIFT = 32
SEQ_MASK = (1 << SEQ_SHIFT) - 1
PAGE_MAX = 20000  # ready messages kept in RAM before a durable queue pages to its log
PAGE_BATCH = 2000  # messages loaded back from the log at a time


class Consumer:
    __slots__ = (
        "tag",
        "wire_tag",
        "channel",
        "queue",
        "no_ack",
        "exclusive",
        "prefetch",
        "unacked",
        "arguments",
        "priority",
    )

    def __init__(
        self,
        tag: str,
        channel: Channel,
        queue: Queue,
        no_ack: bool,
        exclusive: bool,
        prefetch: int,
        arguments: dict[str, Any],
    ) -> None:
        self.tag = tag
        raw = tag.encode()
        self.wire_tag = bytes((len(raw),)) + raw
        self.channel = channel
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0
        self.arguments = arguments
        prio = arguments.get("x-priority", 0)
        self.priority = prio if isinstance(prio, int) and not isinstance(prio, bool) else 0

    def ready(self) -> bool:
        ch = self.channel
        if not ch.can_deliver():
            return False
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        gp = ch.global_prefetch
        return not gp or ch.global_unacked < gp


class PriorityDeque:
    """The deque interface the queue uses, over one deque per priority level."""

    def __init__(self, max_priority: int) -> None:
        self.max = max_priority
        self.levels: list[deque[Entry]] = [deque() for _ in range(max_priority + 1)]
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def __iter__(self) -> Iterator[Entry]:
        for d in reversed(self.levels):
            yield from d

    def _level(self, e: Entry) -> deque[Entry]:
        p = e[1].priority
        return self.levels[p if p <= self.max else self.max]

    def append(self, e: Entry) -> None:
        self._level(e).append(e)
        self.n += 1

    def popleft(self) -> Entry:
        for d in reversed(self.levels):
            if d:
                self.n -= 1
                return d.popleft()
        raise IndexError("pop from an empty queue")

    def peek(self) -> Entry:
        for d in reversed(self.levels):
            if d:
                return d[0]
        raise IndexError("empty")

    def pop(self) -> Entry:
        """Remove the entry that would be delivered last (lowest priority, newest)."""
        for d in self.levels:
            if d:
                self.n -= 1
                return d.pop()
        raise IndexError("empty")

    def clear(self) -> None:
        for d in self.levels:
            d.clear()
        self.n = 0

    def put_back(self, entries: list[Entry]) -> None:
        by_level: dict[int, list[Entry]] = {}
        for e in entries:
            p = e[1].priority
            by_level.setdefault(p if p <= self.max else self.max, []).append(e)
        for p, es in by_level.items():
            self.levels[p] = _merge(self.levels[p], es)
        self.n += len(entries)


def _merge(d: deque[Entry], entries: list[Entry]) -> deque[Entry]:
    """Put ``entries`` (sorted by seq) back into ``d`` at their original places."""
    if not d or entries[-1][0] < d[0][0]:
        d.extendleft(reversed(entries))
        return d
    return deque(sorted([*d, *entries], key=lambda e: e[0]))


def _int_arg(args: dict[str, Any], name: str) -> int | None:
    v = args.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str_arg(args: dict[str, Any], name: str) -> str | None:
    v = args.get(name)
    if isinstance(v, bytes | bytearray):
        return bytes(v).decode("utf-8", "replace")
    return v if isinstance(v, str) else None


class Queue:
    def __init__(
        self,
        vhost: VHost,
        name: str,
        durable: bool = False,
        exclusive_owner: Any = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments: dict[str, Any] = dict(arguments or {})
        self.consumers: list[Consumer] = []
        self.next_seq = 0
        self._rr = 0
        self.had_consumers = False
        self.deleted = False
        self.ready_bytes = 0
        self.unacked_count = 0
        args = self.arguments
        ttl = _int_arg(args, "x-message-ttl")
        self.ttl: float | None = ttl / 1000.0 if ttl is not None else None
        self.max_length = _int_arg(args, "x-max-length")
        self.max_bytes = _int_arg(args, "x-max-length-bytes")
        self.overflow = _str_arg(args, "x-overflow") or "drop-head"
        self.dlx = _str_arg(args, "x-dead-letter-exchange")
        self.dlrk = _str_arg(args, "x-dead-letter-routing-key")
        self.max_priority = _int_arg(args, "x-max-priority")
        self.single_active = args.get("x-single-active-consumer") is True
        expires = _int_arg(args, "x-expires")
        self.expires: float | None = expires / 1000.0 if expires is not None else None
        self.messages: deque[Entry] | PriorityDeque = (
            PriorityDeque(self.max_priority) if self.max_priority else deque()
        )
        # the fast path skips every feature check when none is configured
        self.plain = (
            self.ttl is None and self.max_length is None and self.max_bytes is None and not self.max_priority
        )
        self.has_limits = self.max_length is not None or self.max_bytes is not None
        self.prio_consumers = False
        self.has_ttl_msgs = self.ttl is not None
        # durable queues: the log, and the positions of messages paged out to it
        self.log: Any = None
        self.tail: array[int] = array("Q")
        self.tail_start = 0
        self.tail_bytes = 0  # body bytes of the paged-out messages (x-max-length-bytes)
        self.recovered_delivered: set[int] | frozenset[int] = frozenset()
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expires_timer: asyncio.TimerHandle | None = None
        self.touch()

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    def __repr__(self) -> str:
        return f"<Queue {self.name!r}>"

    # ---------------------------------------------------------------- publishing

    def publish(self, msg: Message) -> bool:
        """Enqueue a routed message, delivering it at once if a consumer is ready.

        Returns False when the queue refused it (x-overflow reject-publish*, disk error).
        """
        if self.plain and self.log is None and msg.header[12] & 0x01 == 0:
            # no limits, no TTL, nothing to persist: the hot path
            seq = self.next_seq
            self.next_seq = seq + 1
            if self.consumers and not self.messages:
                c = self._next_ready()
                if c is not None:
                    c.channel.deliver(c, self, seq, msg, False)
                    return True
            self.messages.append((seq, msg, False, 0.0))
            self.ready_bytes += msg.size
            self.vhost.broker.queued_bytes += msg.size
            return True
        return self._publish_slow(msg)

    def _publish_slow(self, msg: Message) -> bool:
        if self.has_limits and self.overflow != "drop-head" and self._would_overflow(msg):
            if self.overflow == "reject-publish-dlx":
                self.dead_letter(msg, "maxlen")
            return False
        ttl = self.ttl
        exp = msg.expiration_ms
        if exp is not None:
            ttl = exp / 1000.0 if ttl is None else min(ttl, exp / 1000.0)
        qlog = self.log
        persist = qlog is not None and msg.header[12] & 0x10 and msg.persistent
        if (ttl is not None or persist) and not msg.ts:
            msg.ts = time.time()
        expires_at = 0.0
        if ttl is not None:
            expires_at = msg.ts + ttl
            self.has_ttl_msgs = True
        c = None
        if self.consumers and not self.messages and not self.tail:
            c = self._next_ready()
        if c is None and ttl is not None and ttl <= 0:
            # TTL 0: only delivered if a consumer could take it right away
            self.dead_letter(msg, "expired")
            return True
        page = (
            qlog is not None
            and c is None
            and not self.max_priority
            and (self.tail or len(self.messages) >= PAGE_MAX)
        )
        if persist or page:
            assert qlog is not None
            try:
                pos = qlog.append(encode_record(msg, transient=not persist))
            except OSError as exc:
                self.vhost.broker.disk_error(exc)
                return False
            seq = pos << SEQ_SHIFT
            if persist:
                self.vhost.broker.persisted = True
        else:
            seq = self.next_seq
        self.next_seq = seq + 1
        if c is not None:
            c.channel.deliver(c, self, seq, msg, False)
            return True
        if page:
            self.tail.append(pos)
            self.tail_bytes += msg.size
        else:
            self.messages.append((seq, msg, False, expires_at))
            self.ready_bytes += msg.size
            self.vhost.broker.queued_bytes += msg.size
        if self.has_limits:
            self._enforce_limits()
        if expires_at:
            self._schedule_expiry()
        return True

    def _would_overflow(self, msg: Message) -> bool:
        if self.max_length is not None and self.total() >= self.max_length:
            return True
        return self.max_bytes is not None and self.ready_bytes + self.tail_bytes + msg.size > self.max_bytes

    def _enforce_limits(self) -> None:
        while (self.max_length is not None and self.total() > self.max_length) or (
            self.max_bytes is not None and self.ready_bytes + self.tail_bytes > self.max_bytes and self.total()
        ):
            if not self.messages and not self._refill():
                return
            seq, m, _, _ = self._pop()
            self.discard(seq)
            self.dead_letter(m, "maxlen")

    def total(self) -> int:
        """Ready messages, in RAM and paged out."""
        return len(self.messages) + len(self.tail) - self.tail_start

    def _pop(self) -> Entry:
        e = self.messages.popleft()
        size = e[1].size
        self.ready_bytes -= size
        self.vhost.broker.queued_bytes -= size
        return e

    def discard(self, seq: int) -> None:
        """A message left the queue for good: ack its log record, if it has one."""
        if self.log is not None and not seq & SEQ_MASK:
            self.log.ack(seq >> SEQ_SHIFT)

    # ---------------------------------------------------------------- log and paging

    def attach_log(self, qlog: Any, positions: Any, nbytes: int = 0) -> None:
        """Durable queue: its log, and the positions (and body bytes) of the messages
        recovered from it."""
        self.log = qlog
        self.recovered_delivered = qlog.delivered
        self.tail = positions
        self.tail_start = 0
        self.tail_bytes = nbytes
        if len(positions):
            self.next_seq = (positions[-1] << SEQ_SHIFT) + 1
            if self.ttl is not None:
                # TTL kept counting while we were down: expire what is due now
                self.has_ttl_msgs = True
                loop = self.vhost.broker.loop
                if loop is not None:
                    loop.call_soon(self._on_expiry_timer)

    def _refill(self) -> bool:
        """Load the next batch of paged-out messages from the log into RAM."""
        tail = self.tail
        start = self.tail_start
        n = len(tail)
        if start >= n or self.log is None:
            return False
        # a priority queue loads everything: delivery order depends on all of it
        end = n if self.max_priority else min(n, start + PAGE_BATCH)
        read = self.log.read
        now = time.time()
        redelivered_set = self.recovered_delivered
        for i in range(start, end):
            pos = tail[i]
            try:
                msg = decode_record(read(pos))
            except Exception as exc:  # CorruptRecord, or a record we cannot decode
                log.error("queue %r: dropping unreadable record %#x: %s", self.name, pos, exc)
                self.log.ack(pos)
                continue
            exp = 0.0
            ttl = self.ttl
            if msg.header[12] & 0x01 and msg.expiration_ms is not None:
                ttl = msg.expiration_ms / 1000.0 if ttl is None else min(ttl, msg.expiration_ms / 1000.0)
            if ttl is not None:
                exp = (msg.ts or now) + ttl
                self.has_ttl_msgs = True
            self.messages.append((pos << SEQ_SHIFT, msg, pos in redelivered_set, exp))
            self.ready_bytes += msg.size
            self.tail_bytes -= msg.size
            self.vhost.broker.queued_bytes += msg.size
        if end >= n:
            self.tail = array("Q")
            self.tail_start = 0
            self.tail_bytes = 0
        elif end > 65536 and end > n // 2:
            self.tail = tail[end:]
            self.tail_start = 0
        else:
            self.tail_start = end
        if self.has_ttl_msgs:
            self._schedule_expiry()
        return True

    def maybe_compact(self) -> None:
        """Compact the log when it holds much more than the live data (for example one
        old unacked message pinning a segment), and move every reference to a moved
        record: ready entries, paged-out positions and deliveries awaiting an ack."""
        if self.log is None or self.max_priority:
            return
        moved = self.log.maybe_compact()
        if not moved:
            return

        def remap(seq: int) -> int:
            # a transient message's seq counts on from the record before it: move it along
            base = seq >> SEQ_SHIFT
            return (moved.get(base, base) << SEQ_SHIFT) | (seq & SEQ_MASK)

        self.messages = deque((remap(s), m, r, e) for s, m, r, e in self.messages)
        if len(self.tail) - self.tail_start:
            self.tail = array("Q", (moved.get(p, p) for p in self.tail[self.tail_start :]))
            self.tail_start = 0
        if self.recovered_delivered:
            self.recovered_delivered = {moved.get(p, p) for p in self.recovered_delivered}
        if self.unacked_count:
            for conn in self.vhost.broker.connections:
                for ch in conn.channels.values():
                    ch.remap_unacked(self, remap)

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

    def dispatch(self) -> None:
        """Deliver ready messages while some consumer has credit."""
        if not self.consumers or self.deleted:
            return
        if not self.messages and not self._refill():
            return
        if self.has_ttl_msgs:
            self.drop_expired()
        while True:
            msgs = self.messages
            if not msgs and not self._refill():
                return
            c = self._next_ready()
            if c is None:
                return
            seq, msg, redelivered, expires_at = self._pop()
            if expires_at and expires_at <= time.time():
                self.discard(seq)
                self.dead_letter(msg, "expired")
                continue
            c.channel.deliver(c, self, seq, msg, redelivered)

    def get(self) -> Entry | None:
        self.touch()
        if not self.messages:
            self._refill()
        if self.has_ttl_msgs:
            self.drop_expired()
        if not self.messages:
            return None
        return self._pop()

    def requeue(self, entries: list[tuple[int, Message]]) -> None:
        """Put unacked messages back at their original place, marked redelivered."""
        if self.deleted or not entries:
            return
        entries.sort(key=lambda e: e[0])
        added = 0
        for _, m in entries:
            added += m.size
        self.ready_bytes += added
        self.vhost.broker.queued_bytes += added
        now = time.time()
        back: list[Entry] = []
        for s, m in entries:
            exp = 0.0
            if self.has_ttl_msgs and m.ts:
                ttl = self.ttl
                if m.expiration_ms is not None:
                    ttl = m.expiration_ms / 1000.0 if ttl is None else min(ttl, m.expiration_ms / 1000.0)
                if ttl is not None:
                    exp = m.ts + ttl
            back.append((s, m, True, exp))
        msgs = self.messages
        if isinstance(msgs, PriorityDeque):
            msgs.put_back(back)
        else:
            self.messages = _merge(msgs, back)
        if self.has_ttl_msgs:
            self.drop_expired(now)
        self.dispatch()
        if self.has_limits and self.overflow == "drop-head":
            # (RabbitMQ: reject-publish* queues never drop a requeued message)
            self._enforce_limits()

    def purge(self) -> int:
        n = self.total()
        if self.log is not None:
            for e in self.messages:
                self.discard(e[0])
            for i in range(self.tail_start, len(self.tail)):
                self.log.ack(self.tail[i])
        self.tail = array("Q")
        self.tail_start = 0
        self.tail_bytes = 0
        self.vhost.broker.queued_bytes -= self.ready_bytes
        self.messages.clear()
        self.ready_bytes = 0
        return n

    # ---------------------------------------------------------------- TTL / expiry

    def drop_expired(self, now: float | None = None) -> None:
        """Dead-letter expired messages at the head of the queue."""
        msgs = self.messages
        if not msgs and not self._refill():
            return
        msgs = self.messages
        now = now or time.time()
        while msgs or self._refill():  # on into the paged-out tail
            msgs = self.messages
            head = msgs.peek() if isinstance(msgs, PriorityDeque) else msgs[0]
            if not head[3] or head[3] > now:
                break
            seq, m, _, _ = self._pop()
            self.discard(seq)
            self.dead_letter(m, "expired")
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        if self._expiry_timer is not None or self.deleted:
            return
        msgs = self.messages
        if not msgs:
            return
        head = msgs.peek() if isinstance(msgs, PriorityDeque) else msgs[0]
        if not head[3]:
            return
        loop = self.vhost.broker.loop
        delay = max(0.0, head[3] - time.time())
        self._expiry_timer = loop.call_later(delay + 0.001, self._on_expiry_timer)

    def _on_expiry_timer(self) -> None:
        self._expiry_timer = None
        self.drop_expired()
        self.vhost.broker.flush_all()

    def touch(self) -> None:
        """The queue was used: restart its x-expires countdown."""
        if self.expires is None or self.deleted:
            return
        if self._expires_timer is not None:
            self._expires_timer.cancel()
            self._expires_timer = None
        if self.consumers:
            return
        loop = self.vhost.broker.loop
        if loop is None:
            return
        self._expires_timer = loop.call_later(self.expires, self._on_expires)

    def _on_expires(self) -> None:
        self._expires_timer = None
        if not self.consumers and not self.deleted:
            log.info("queue %r in vhost %r expired (x-expires)", self.name, self.vhost.name)
            self.vhost.delete_queue(self)
            self.vhost.broker.flush_all()

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
            self.touch()
        elif self.single_active:
            self.dispatch()

    @property
    def message_count(self) -> int:
        if self.has_ttl_msgs:
            self.drop_expired()
        return self.total()

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    def entries(self) -> Iterable[Entry]:
        """Ready messages in delivery order (for inspection)."""
        return iter(self.messages)
