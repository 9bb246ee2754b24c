"""Transactions of one channel (tx.select).

Publishes and acks are held until tx.commit (or dropped / given back by tx.rollback).  A
commit whose publishes reached a queue's log is answered with commit-ok only after the
fsync that covers them (group commit); commit-oks keep their order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leveret.broker.core.message import Message
    from leveret.broker.core.queue import Queue
    from leveret.broker.wire.unacked import Unacked

HeldPublish = tuple["Message", bool, "list[str] | None"]  # message, mandatory, CC/BCC keys
HeldAcks = tuple["list[tuple[int, Unacked]]", str, bool]  # (tag, entry) pairs, kind, requeue


class Transaction:
    __slots__ = ("publishes", "acks", "commit_pending", "commit_snapshot")

    def __init__(self) -> None:
        self.publishes: list[HeldPublish] = []
        self.acks: list[HeldAcks] = []
        self.commit_pending = 0  # commit-oks waiting for an fsync
        self.commit_snapshot = 0  # ... of which the running fsync covers this many

    def take(self) -> tuple[list[HeldPublish], list[HeldAcks]]:
        """tx.commit: what was held, now to be carried out."""
        publishes, acks = self.publishes, self.acks
        self.publishes, self.acks = [], []
        return publishes, acks

    def rollback(self) -> list[HeldAcks]:
        """tx.rollback: held publishes are dropped; the held acks are returned (their
        deliveries go back to the unacked set)."""
        self.publishes = []
        acks, self.acks = self.acks, []
        return acks

    def held_unacked(self) -> list[Unacked]:
        """The channel closes: deliveries whose acks were held, to requeue."""
        entries = [e for pairs, _, _ in self.acks for _, e in pairs]
        self.publishes, self.acks = [], []
        return entries

    def remap(self, queue: Queue, remap: Callable[[int], int]) -> None:
        for pairs, _, _ in self.acks:
            for i, (tag, (q, seq, msg, consumer)) in enumerate(pairs):
                if q is queue:
                    pairs[i] = (tag, (q, remap(seq), msg, consumer))

    def sync_started(self) -> None:
        self.commit_snapshot = self.commit_pending

    def synced(self) -> int:
        """How many commit-oks the finished fsync releases."""
        n, self.commit_snapshot = self.commit_snapshot, 0
        self.commit_pending -= n
        return n
