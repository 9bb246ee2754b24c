"""Queues and consumers.

A queue holds its ready messages in a deque of ``(seq, message, redelivered)`` tuples,
``seq`` increasing per queue, so a requeued message goes back to its original place.
Dispatch is synchronous: publishing to a queue with a ready consumer delivers at once
(round robin among consumers with credit); acks, qos changes and a consumer's socket
draining call :meth:`Queue.dispatch` again.  A consumer is *ready* when its channel has
prefetch credit and its connection's output is below the high-water mark: this is the
backpressure that keeps a slow consumer from growing the broker's memory.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from broker.message import Message

if TYPE_CHECKING:
    from broker.channel import Channel
    from broker.vhost import VHost

Entry = tuple[int, Message, bool]


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
        self.messages: deque[Entry] = deque()
        self.consumers: list[Consumer] = []
        self.next_seq = 0
        self._rr = 0
        self.had_consumers = False
        self.deleted = False
        self.ready_bytes = 0
        self.unacked_count = 0

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    def __repr__(self) -> str:
        return f"<Queue {self.name!r}>"

    # ---------------------------------------------------------------- publishing

    def publish(self, msg: Message) -> None:
        """Enqueue a routed message, delivering it at once if a consumer is ready."""
        seq = self.next_seq
        self.next_seq = seq + 1
        if self.consumers and not self.messages:
            c = self._next_ready()
            if c is not None:
                c.channel.deliver(c, self, seq, msg, False)
                return
        self.messages.append((seq, msg, False))
        self.ready_bytes += msg.size
        self.vhost.broker.queued_bytes += msg.size

    def _next_ready(self) -> Consumer | None:
        consumers = self.consumers
        n = len(consumers)
        if n == 1:
            c = consumers[0]
            return c if c.ready() else None
        start = self._rr
        for i in range(n):
            c = consumers[(start + i) % n]
            if c.ready():
                self._rr = (start + i + 1) % n
                return c
        return None

    def dispatch(self) -> None:
        """Deliver ready messages while some consumer has credit."""
        msgs = self.messages
        if not msgs or not self.consumers or self.deleted:
            return
        broker = self.vhost.broker
        while msgs:
            c = self._next_ready()
            if c is None:
                return
            seq, msg, redelivered = msgs.popleft()
            self.ready_bytes -= msg.size
            broker.queued_bytes -= msg.size
            c.channel.deliver(c, self, seq, msg, redelivered)

    def get(self) -> Entry | None:
        if not self.messages:
            return None
        entry = self.messages.popleft()
        self.ready_bytes -= entry[1].size
        self.vhost.broker.queued_bytes -= entry[1].size
        return entry

    def requeue(self, entries: list[tuple[int, Message]]) -> None:
        """Put unacked messages back at their original place, marked redelivered."""
        if self.deleted or not entries:
            return
        entries.sort(key=lambda e: e[0])
        msgs = self.messages
        added = 0
        for _, m in entries:
            added += m.size
        self.ready_bytes += added
        self.vhost.broker.queued_bytes += added
        if not msgs or entries[-1][0] < msgs[0][0]:
            msgs.extendleft((s, m, True) for s, m in reversed(entries))
        else:
            merged = sorted(list(msgs) + [(s, m, True) for s, m in entries], key=lambda e: e[0])
            self.messages = deque(merged)
        self.dispatch()

    def purge(self) -> int:
        n = len(self.messages)
        self.vhost.broker.queued_bytes -= self.ready_bytes
        self.messages.clear()
        self.ready_bytes = 0
        return n

    # ---------------------------------------------------------------- consumers

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)
        self.had_consumers = True
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

    @property
    def message_count(self) -> int:
        return len(self.messages)

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)
