"""Consumers, and the interface through which a queue hands them messages.

A queue knows nothing of channels: it calls ``consumer.sink.deliver(...)`` on a
:class:`DeliverySink`.  The wire layer's channel is the sink of the consumers it created
(``consumer.channel``); the test tooling may put a wrapper in between through the one test
hook, :meth:`leveret.broker.server.Broker.intercept_deliveries`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from leveret.broker.core.message import Message
    from leveret.broker.core.queue import Queue
    from leveret.broker.core.vhost import VHost


class DeliverySink(Protocol):
    """Where a queue hands messages: implemented by the wire layer's channel."""

    @property
    def vhost(self) -> VHost:
        """The vhost the sink's channel is open on."""

    @property
    def global_prefetch(self) -> int:
        """Channel-wide prefetch (basic.qos global; 0: none)."""

    @property
    def global_unacked(self) -> int:
        """What counts against ``global_prefetch``."""

    def can_deliver(self) -> bool:
        """False while the sink cannot take output (flow, a full socket buffer)."""

    def deliver(self, consumer: Consumer, queue: Queue, seq: int, msg: Message, redelivered: bool) -> None:
        """Send ``msg`` to ``consumer``; track it as unacked unless the consumer is no-ack."""

    def consumer_cancelled_by_server(self, consumer: Consumer) -> None:
        """The consumer's queue went away."""


class Consumer:
    __slots__ = (
        "tag",
        "wire_tag",
        "channel",
        "sink",
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
        channel: DeliverySink,
        queue: Queue,
        *,
        no_ack: bool,
        exclusive: bool,
        prefetch: int,
        arguments: dict[str, Any],
    ) -> None:
        self.tag = tag
        raw = tag.encode()
        self.wire_tag = bytes((len(raw),)) + raw  # the tag as a short string, for basic.deliver
        self.channel = channel  # the channel that created it
        self.sink = channel  # where deliveries go (the channel, unless a test hook wraps it)
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0
        self.arguments = arguments
        prio = arguments.get("x-priority", 0)
        self.priority = prio if isinstance(prio, int) and not isinstance(prio, bool) else 0

    def ready(self) -> bool:
        """The consumer can take one more message now (sink writable, prefetch credit)."""
        ch = self.channel
        if not ch.can_deliver():
            return False
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        gp = ch.global_prefetch
        return not gp or ch.global_unacked < gp
