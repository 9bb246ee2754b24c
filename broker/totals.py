"""The node's counters and totals: what deleted vhosts, closed channels and direct reply-to
pseudo-queues leave behind (so the node's totals never go down), the churn counters and
login attempts (Prometheus), and the sums over the live vhosts (``stats_published``,
``stats_delivered``, ``stats_acked``, ``queue_stat``, ``message_totals``).  Every message is
counted once, where it happens (the exchange, the queue, the vhost); this only sums.

:class:`Totals` is composed by :class:`leveret.broker.server.Broker`, which keeps the
public names (``stats_published``, ``message_totals``, ``count_auth``...) as thin
delegations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from leveret.broker.core.backing import GONE_STATS
from leveret.broker.core.queue import Queue
from leveret.broker.core.vhost import VHOST_COUNTERS, VHost

if TYPE_CHECKING:
    from leveret.broker.server import Broker


class Totals:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.stats_published_gone = 0  # messages published in vhosts since deleted
        self.stats_delivered_gone = 0  # ... delivered from them, and from direct reply-to
        self.stats_acked_gone = 0  # ... acked in them
        # churn, for the Prometheus endpoint (counted off the hot path)
        self.stats_connections_opened = 0
        self.stats_queues_created = 0
        self.stats_queues_deleted = 0
        self.stats_channels_opened = 0  # (closed: opened minus those open)
        self.stats_received_confirm_gone = 0  # publishes in confirm mode on channels since closed
        # queue counters (backing.GONE_STATS) of deleted vhosts and direct reply-to
        self.stats_queue_gone = dict.fromkeys(GONE_STATS, 0)
        # login attempts per protocol ("amqp091", "http"): [attempts, failed]
        self.stats_auth: dict[str, list[int]] = {"amqp091": [0, 0], "http": [0, 0]}
        # the message counters of deleted vhosts (VHost.stats_*), kept in the node's totals
        self.stats_deleted_vhosts = dict.fromkeys(VHOST_COUNTERS, 0)

    def vhost_deleted(self, v: VHost) -> None:
        """A vhost goes: its counters stay in the node's totals."""
        for k in VHOST_COUNTERS:
            self.stats_deleted_vhosts[k] += getattr(v, "stats_" + k)
        self.stats_published_gone += v.stats_published
        self.stats_delivered_gone += v.stats_delivered
        self.stats_acked_gone += v.stats_acked
        for k in GONE_STATS:
            self.stats_queue_gone[k] += v.queue_stat(k)

    @property
    def stats_published(self) -> int:
        """Messages published on the node: the exchanges' ``publish_in`` counters summed
        (``VHost.stats_published``), deleted vhosts included.  Counted once per publish,
        on the exchange, not again here."""
        return self.stats_published_gone + sum(v.stats_published for v in self.broker.vhosts.values())

    @property
    def stats_delivered(self) -> int:
        """Deliveries and basic.get-oks on the node: the queues' counters summed
        (``VHost.stats_delivered``) and the direct reply-to pseudo-queues', deleted vhosts and
        closed reply consumers included.  Counted once per delivery, on the queue."""
        b = self.broker
        live = sum(ch.reply_queue.store.stats_deliver for ch in b.reply_channels.values() if ch.reply_queue is not None)
        return self.stats_delivered_gone + live + sum(v.stats_delivered for v in b.vhosts.values())

    def queue_stat(self, name: str) -> int:
        """A queue counter of ``backing.GONE_STATS`` for the node (``VHost.queue_stat``
        summed, deleted vhosts and direct reply-to included)."""
        b = self.broker
        attr = "stats_" + name
        live = sum(getattr(ch.reply_queue.store, attr) for ch in b.reply_channels.values() if ch.reply_queue is not None)
        return self.stats_queue_gone[name] + live + sum(v.queue_stat(name) for v in b.vhosts.values())

    @property
    def stats_received_confirm(self) -> int:
        """Publishes received on channels in confirm mode (each channel's confirm
        numbering, ``Confirms.publish_seq``), closed channels included."""
        live = sum(ch.confirms.publish_seq - ch.confirms.counted
                   for c in self.broker.connections for ch in c.channels.values() if ch.confirms is not None)
        return self.stats_received_confirm_gone + live

    def reply_queue_gone(self, q: Queue) -> None:
        """A direct reply-to consumer's pseudo-queue goes: its counters stay in the node's
        totals (as a deleted vhost's do)."""
        counts = q.counters()
        self.stats_delivered_gone += counts["deliver"]
        for k in GONE_STATS:
            self.stats_queue_gone[k] += counts[k]

    def count_auth(self, protocol: str, ok: bool) -> None:
        """A login attempt (AMQP connection.start-ok, an HTTP request's Basic credentials)."""
        counts = self.stats_auth[protocol]
        counts[0] += 1
        if not ok:
            counts[1] += 1

    @property
    def stats_acked(self) -> int:
        """Acks on the node (``VHost.stats_acked`` summed, deleted vhosts included)."""
        return self.stats_acked_gone + sum(v.stats_acked for v in self.broker.vhosts.values())

    def message_totals(self) -> dict[str, int]:
        """The vhosts' message counters (``VHost.stats_*``: ``confirm``,
        ``return_unroutable``, ``drop_unroutable``) summed over the node, deleted vhosts
        included."""
        out = dict(self.stats_deleted_vhosts)
        for v in self.broker.vhosts.values():
            for k in VHOST_COUNTERS:
                out[k] += getattr(v, "stats_" + k)
        return out
