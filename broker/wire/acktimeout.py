"""RabbitMQ's ``consumer_timeout``: a delivery left unacknowledged too long closes its
channel with 406 (its unacked messages are requeued, as on any channel close).

It is checked on a timer, not per message, so the delivery path pays nothing: every
``interval`` the :class:`AckTimeout` looks at each channel holding unacked deliveries and
notes the highest delivery tag handed out so far (``UnackedTracker.delivery_tag``) with
the time, once per change.  The oldest unacked delivery (the first entry of the
tracker, in tag order) was handed out before the first of those marks that reaches its
tag, so it is overdue when that mark is older than the timeout.  The channel is thus
closed between ``timeout`` and ``timeout`` + 2 × ``interval`` after the delivery, never
before; the interval is a tenth of the timeout, at most 1 s.  RabbitMQ 3.10 checks the
oldest pending ack of a channel on its tick the same way (``channel_tick_interval``, 60 s
by default), basic.get deliveries included.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from leveret.broker.core.errors import AMQPError
from leveret.protocol.constants import PRECONDITION_FAILED

if TYPE_CHECKING:
    import asyncio

    from leveret.broker.wire.channel import Channel
    from leveret.broker.wire.node import WireNode


def timeout_text(channel: int, timeout_ms: int) -> str:
    return (
        f"delivery acknowledgement on channel {channel} timed out. Timeout value used: {timeout_ms} ms. "
        "This timeout value can be configured, see consumers doc guide to learn more"
    )


class AckTimeout:
    """The node's consumer_timeout checker (one timer for every channel)."""

    def __init__(self, broker: WireNode, timeout_ms: int) -> None:
        self.broker = broker
        self.timeout_ms = timeout_ms
        self.timeout = timeout_ms / 1000.0
        self.interval = min(1.0, max(0.005, self.timeout / 10))
        #: channel -> marks (loop time, highest delivery tag handed out by then)
        self.marks: dict[Channel, deque[tuple[float, int]]] = {}
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.timer is None:
            self.timer = self.broker.loop.call_later(self.interval, self.tick)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.marks.clear()

    def tick(self) -> None:
        self.timer = None
        now = self.broker.loop.time()
        old = self.marks
        marks: dict[Channel, deque[tuple[float, int]]] = {}
        overdue: list[Channel] = []
        for conn in self.broker.connections:
            if not conn.is_open:
                continue
            for ch in conn.channels.values():
                entries = ch.unacked.entries
                if not entries:
                    continue
                m = old.get(ch)
                if m is None:
                    m = deque()
                top = ch.unacked.delivery_tag
                if not m or m[-1][1] != top:
                    m.append((now, top))
                oldest = next(iter(entries))
                while len(m) > 1 and m[0][1] < oldest:
                    m.popleft()
                marks[ch] = m
                if now - m[0][0] >= self.timeout:
                    overdue.append(ch)
        self.marks = marks
        for ch in overdue:
            marks.pop(ch, None)
            if ch.conn.channels.get(ch.number) is ch:
                ch.conn.channel_exception(ch.number, AMQPError(PRECONDITION_FAILED, timeout_text(ch.number, self.timeout_ms)))
        if overdue:
            self.broker.flush_all()
        self.timer = self.broker.loop.call_later(self.interval, self.tick)
