"""Deliveries awaiting an ack on one channel.

:class:`UnackedTracker` gives every delivery (and basic.get-ok) its delivery tag, keeps
the ones that need an ack (``tag -> (queue, seq, message, consumer)``), counts them
against the consumers' and the channel's prefetch, and settles them on basic.ack /
nack / reject (and on channel close, recover, tx).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from leveret.broker.core.errors import AMQPError
from leveret.protocol.constants import PRECONDITION_FAILED, Method

if TYPE_CHECKING:
    from collections.abc import Callable

    from leveret.broker.core.consumer import Consumer
    from leveret.broker.core.message import Message
    from leveret.broker.core.queue import Queue

Unacked = tuple["Queue", int, "Message", "Consumer | None"]
ACK_METHODS = {"ack": Method.BASIC_ACK, "nack": Method.BASIC_NACK, "reject": Method.BASIC_REJECT}


class UnackedTracker:
    __slots__ = ("entries", "delivery_tag", "global_unacked")

    def __init__(self) -> None:
        self.entries: dict[int, Unacked] = {}
        self.delivery_tag = 0
        self.global_unacked = 0  # deliveries to consumers awaiting an ack (global qos)

    def __len__(self) -> int:
        return len(self.entries)

    def hand_out(
        self, queue: Queue, seq: int, msg: Message, redelivered: bool, consumer: Consumer | None, no_ack: bool
    ) -> int:
        """Give a message a delivery tag: track it as unacked, or let it go (no-ack)."""
        tag = self.delivery_tag = self.delivery_tag + 1
        queue.handed_out(seq, msg, redelivered, no_ack)  # (the queue's books)
        if not no_ack:
            self.entries[tag] = (queue, seq, msg, consumer)
            if consumer is not None:
                consumer.unacked += 1
                self.global_unacked += 1
        return tag

    def ack_one(self, tag: int) -> bool:
        """The hot path: one plain basic.ack.  False for an unknown tag."""
        entry = self.entries.pop(tag, None)
        if entry is None:
            return False
        q, seq, msg, consumer = entry
        if consumer is not None:
            consumer.unacked -= 1
            self.global_unacked -= 1
        q.settle(seq, msg, False)
        return True

    def take(self, tag: int, multiple: bool, kind: str) -> list[tuple[int, Unacked]]:
        """Remove and return the entries an ack/nack/reject of ``tag`` covers (406 for an
        unknown tag)."""
        entries = self.entries
        if multiple and tag == 0:
            pairs = list(entries.items())
            entries.clear()
            return pairs
        if tag not in entries:
            raise AMQPError(PRECONDITION_FAILED, f"unknown delivery tag {tag}", *ACK_METHODS[kind])
        if not multiple:
            return [(tag, entries.pop(tag))]
        pairs = []
        for t, e in entries.items():
            if t > tag:
                break
            pairs.append((t, e))
        for t, _ in pairs:
            del entries[t]
        return pairs

    def settle(self, entries: list[Unacked], requeue: bool, reject: bool = False) -> None:
        """Release taken entries: requeue them, dead-letter them (reject without requeue)
        or drop them (ack)."""
        if not entries:
            return
        back: dict[Queue, list[tuple[int, Message]]] = {}
        for q, seq, msg, consumer in entries:
            if consumer is not None:
                consumer.unacked -= 1
                self.global_unacked -= 1
            if requeue:
                back.setdefault(q, []).append((seq, msg))
            else:
                q.settle(seq, msg, reject)
        for q, items in back.items():
            q.returned(items)

    def restore(self, pairs: list[tuple[int, Unacked]]) -> None:
        """tx.rollback: acked deliveries go back to the unacked set under their tags."""
        self.entries.update(pairs)
        self.entries = dict(sorted(self.entries.items()))

    def take_all(self) -> list[Unacked]:
        entries = list(self.entries.values())
        self.entries.clear()
        return entries

    def remap(self, queue: Queue, remap: Callable[[int], int]) -> None:
        """The queue's log was compacted: update the seqs of our deliveries from it."""
        for tag, (q, seq, msg, consumer) in list(self.entries.items()):
            if q is queue:
                self.entries[tag] = (q, remap(seq), msg, consumer)
