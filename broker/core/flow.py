"""Flow control, the queue's side: RabbitMQ's credit flow, on one event loop.

Everything runs on one thread, so a publisher that outruns its consumers does not just
grow a queue: it takes the CPU the consumers need to be served.  (Under uvloop a readable
socket is read up to 32 times per loop iteration: a firehose publisher got ~2 MiB of
input handled per iteration while a manual-ack consumer got one round trip of acks.)

The rule is split in two homes:

* the queue (here) says when it is *in flow*: it has consumers and a backlog of at least
  ``FLOW_LEN`` ready messages or half its share of the node's memory budget
  (``core.memory``; at most ``FLOW_BYTES``) in RAM, or messages paged out
  (``BackingQueue.backlogged``; below the thresholds where a queue pages, so that a
  publisher held to its consumers' pace keeps the backlog in RAM).  :meth:`Queue.publish` then returns the ``FLOW`` bit of
  its outcome, and a :class:`FlowGate` per queue counts the messages it hands to
  consumers and gives credit back to the publishers that wait on it;
* the publishing connection (``leveret.broker.wire.connection``) holds the credit: each
  publish into a queue in flow costs one (and one more per 64 KiB of body), and at zero it stops reading its socket and
  waits on the gates of those queues.  A gate grants ``CREDIT_MORE`` per ``CREDIT_MORE``
  messages delivered, and everything at once when the queue
  leaves flow (no longer backlogged, no consumer, deleted, purged).

So a publisher is held to its consumers' pace, never more than about ``CREDIT_INITIAL``
messages ahead, and only while a backlog exists: a burst into an empty system runs at
full speed until ``FLOW_LEN`` messages are waiting.
"""

from __future__ import annotations

from typing import Protocol

# a queue with consumers is in flow when it is backlogged (BackingQueue.backlogged)
from leveret.broker.core.backing import FLOW_BYTES, FLOW_LEN

__all__ = ["FLOW_BYTES", "FLOW_LEN", "CREDIT_INITIAL", "CREDIT_MORE", "CREDIT_SHIFT", "FlowGate", "FlowWaiter"]
CREDIT_INITIAL = 400  # publishes into queues in flow before a connection must wait
#: credit given back per this many messages delivered.  RabbitMQ's credit flow is
#: {400, 200}; here it is smaller than a consumer's usual prefetch window, so that a held
#: publisher is let go within one round trip of its consumers' acks: then the loop has
#: publishes to handle while the consumers work through their deliveries, instead of
#: waiting idle for their acks (with 200 and a prefetch of 100 the broker idled ~12 % of a
#: firehose, its consumer capped by the round trips: see docs/architecture.md)
CREDIT_MORE = 50
#: a message costs 1 + size >> CREDIT_SHIFT credits (large messages: one per 64 KiB)
CREDIT_SHIFT = 16


class FlowWaiter(Protocol):
    """A publisher waiting for credit (the wire layer's connection)."""

    def flow_granted(self, gate: FlowGate, credit: int | None) -> None:
        """``credit`` more publishes (None: the queue left flow, start afresh)."""


class FlowGate:
    """One queue's publishers in flow, and the deliveries since they started waiting."""

    __slots__ = ("waiters", "progress")

    def __init__(self) -> None:
        self.waiters: list[FlowWaiter] = []
        self.progress = 0  # messages delivered since the first waiter

    def wait(self, waiter: FlowWaiter) -> None:
        if waiter not in self.waiters:
            if not self.waiters:
                self.progress = 0
            self.waiters.append(waiter)

    def forget(self, waiter: FlowWaiter) -> None:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass

    def delivered(self, n: int) -> None:
        """The queue handed messages worth ``n`` credits to consumers."""
        self.progress += n
        if self.progress >= CREDIT_MORE:
            credit = self.progress
            self.progress = 0
            self.release(credit)

    def release(self, credit: int | None = None) -> None:
        """Give every waiter ``credit`` (None: the queue left flow, start afresh)."""
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            w.flow_granted(self, credit)
