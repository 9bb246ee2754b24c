"""Quorum queues, as RabbitMQ 3.10 runs them on one node.

A :class:`QuorumQueue` is a :class:`~leveret.broker.core.queue.Queue` with the quorum
type's behaviour (``queuetype.QUORUM``); what it changes is off the publish hot path:

* every message is written to the queue's log, whatever its delivery mode
  (``persist_all``), so a publisher's confirm waits for the fsync;
* the delivery count: a consumer's first delivery carries no ``x-delivery-count``; each
  return (nack or reject with requeue, the consumer's channel or connection closing,
  basic.recover) counts one, and the message is delivered with ``x-delivery-count`` (a
  long) set to the count; basic.get sets it on a first delivery too (0).  The count is
  kept in the message's header, which a return writes to the log as a new record (the
  old one acked), so it survives a restart; the redelivered flag of a message read back
  from the log is "count above 0", and one that was delivered and unacknowledged when
  the broker was killed counts that lost delivery as a return (``_read_back``, as
  rabbit_fifo returns the messages of a consumer that is gone);
* where a returned message goes: behind the ready messages (RabbitMQ 3.10 re-enqueues
  it) or, on a queue with ``x-delivery-limit``, ahead of them, after the returns still
  waiting (rabbit_fifo's returns queue);
* the delivery limit: a return that takes the count past ``x-delivery-limit`` drops the
  message, or dead-letters it with reason ``delivery_limit`` (the dead-lettered copy
  carries no ``x-delivery-count``);
* the consumer count (queue.declare-ok, the management API) is rabbit_fifo's: the
  consumers, the cancelled ones still holding unacknowledged deliveries, and one per
  unacknowledged basic.get;
* ``x-overflow``: ``reject-publish`` refuses a publish only once the queue is *over*
  its limit (so it admits one message past ``x-max-length``), and
  ``reject-publish-dlx`` acts as ``drop-head``, as 3.10 does.

Leveret is one node: there is no Raft log, no replication and no leader election; the
queue's log is its durable store, as a durable classic queue's is.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from leveret.broker.core.backing import SEQ_MASK, Entry
from leveret.broker.core.consumer import Consumer
from leveret.broker.core.message import Message
from leveret.broker.core.queue import Queue, _int_arg
from leveret.broker.core.queuetype import QUORUM
from leveret.protocol import properties as P

if TYPE_CHECKING:
    from leveret.broker.core.vhost import VHost

COUNT_KEY = b"x-delivery-count"


def delivery_count(msg: Message) -> int | None:
    """The ``x-delivery-count`` in the message's headers (None: none)."""
    if not msg.has_headers or COUNT_KEY not in msg.header:
        return None
    at = msg.props.get("_headers_at")
    if at is None:
        return None
    raw = P.table_fields(msg.header, at).get(COUNT_KEY)
    if raw is None:
        return None
    v = P.field_value(raw)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def with_delivery_count(msg: Message, count: int | None) -> Message:
    """A copy of ``msg`` whose headers carry ``x-delivery-count`` = ``count`` (a long),
    or none (``count`` None); the table sorted by key, as RabbitMQ writes it."""
    at = msg.props.get("_headers_at") if msg.has_headers else None
    fields = P.table_fields(msg.header, at) if at is not None else {}
    if count is None:
        if fields.pop(COUNT_KEY, None) is None:
            return msg
    else:
        fields[COUNT_KEY] = P.long_value(count)
    header = P.rewrite(msg.header, {P.F_HEADERS: P.table_bytes(sorted(fields.items())) if fields else None})
    out = Message(msg.ex_rk, msg.exchange, msg.routing_key, header, msg.body)
    out.ts = msg.ts
    out.bcc = msg.bcc
    return out


class QuorumQueue(Queue):
    """A quorum queue (see the module's text)."""

    qtype = QUORUM
    persist_all = True

    def __init__(
        self,
        vhost: VHost,
        name: str,
        *,
        durable: bool = True,
        exclusive_owner: Any = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        effective: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(vhost, name, durable=durable, exclusive_owner=exclusive_owner, auto_delete=auto_delete,
                         arguments=arguments, effective=effective)
        self.store.recovered_hook = self._read_back
        #: consumers cancelled while holding unacked deliveries (RabbitMQ keeps counting them)
        self.cancelled: list[Consumer] = []

    def configure(self, args: dict[str, Any]) -> None:
        """Queue.configure, and the quorum keys of the effective arguments (x-arguments,
        or a ``delivery-limit`` policy: the lower wins, see ``policy.effective_arguments``)."""
        super().configure(args)
        #: returns past this many deliveries drop or dead-letter the message (None: none)
        self.delivery_limit = _int_arg(args, "x-delivery-limit")
        if self.overflow == "reject-publish-dlx":
            self.overflow = "drop-head"  # (RabbitMQ 3.10's quorum queues)

    def _read_back(self, seq: int, msg: Message, delivered: bool) -> tuple[int, Message, bool]:
        """A message read back from the log (recovered, or paged out): redelivered when
        its count is above 0; one delivered and unacknowledged when the broker was killed
        lost its consumer, which is a return: it counts one more, written to the log."""
        count = delivery_count(msg)
        if not delivered:
            return seq, msg, bool(count)
        m = with_delivery_count(msg, (count or 0) + 1)
        store = self.store
        try:
            new_seq = store.write(m, True)
        except OSError as exc:
            self.node.disk_error(exc)
            return seq, m, True
        store.discard(seq, msg)
        return new_seq, m, True

    def remove_consumer(self, consumer: Consumer) -> None:
        if consumer in self.consumers and consumer.unacked:
            self.cancelled.append(consumer)
        super().remove_consumer(consumer)

    @property
    def consumer_count(self) -> int:
        """As rabbit_fifo counts its consumers: the consumers, those cancelled that still
        hold unacknowledged deliveries, and one per unacknowledged basic.get."""
        live = [c for c in self.cancelled if c.unacked > 0]
        if len(live) != len(self.cancelled):
            self.cancelled = live
        held = sum(c.unacked for c in self.consumers) + sum(c.unacked for c in live)
        return len(self.consumers) + len(live) + max(0, self.unacked_count - held)

    def _would_overflow(self, msg: Message) -> bool:
        # rabbit_fifo refuses once the queue is over its limit, not at it
        if self.max_length is not None and self.store.total() > self.max_length:
            return True
        return self.max_bytes is not None and self.store.total_bytes() > self.max_bytes

    def _enforce_limits(self) -> None:
        if self.overflow == "drop-head":  # (reject-publish keeps the message it admitted)
            super()._enforce_limits()

    def get(self, no_ack: bool = False) -> Entry | None:
        """basic.get: as a classic queue, with ``x-delivery-count`` set even on a first
        delivery (0)."""
        entry = super().get(no_ack)
        if entry is None:
            return None
        seq, msg, redelivered, expires_at = entry
        if delivery_count(msg) is None:
            msg = with_delivery_count(msg, 0)
        return seq, msg, redelivered, expires_at

    def requeue(self, entries: list[tuple[int, Message]]) -> None:
        """Returned deliveries, in the order returned: each counts one delivery; past the
        delivery limit it goes (dead-lettered), else back, marked redelivered, behind
        the ready messages or (with a delivery limit) ahead of them."""
        if self.deleted or not entries:
            return
        store = self.store
        limit = self.delivery_limit
        now = time.time()
        back: list[Entry] = []
        for seq, msg in entries:
            count = (delivery_count(msg) or 0) + 1
            if limit is not None and count > limit:
                store.discard(seq, msg)
                self.dead_letter(msg, "delivery_limit")
                continue
            m = with_delivery_count(msg, count)
            new_seq = None
            if store.log is not None and not seq & SEQ_MASK:
                # the count goes to disk with the message: a new record, the old one acked
                try:
                    new_seq = store.write(m, True)
                except OSError as exc:
                    self.node.disk_error(exc)
                else:
                    store.discard(seq, msg)
            if new_seq is None:
                new_seq = store.take_seq() if store.log is None else seq
            back.append((new_seq, m, True, self.expires_at(m, now) if self.has_ttl_msgs and m.ts else 0.0))
        if back:
            store.put_returned(back, ahead=limit is not None)
            if self.has_ttl_msgs:
                self.drop_expired(now)
            self.dispatch()
        if self.has_limits and self.overflow == "drop-head":
            self._enforce_limits()

    def dead_letter(self, msg: Message, reason: str) -> None:
        """As a classic queue's, without the ``x-delivery-count`` this queue wrote."""
        if self.dlx is None:
            return
        if msg.has_headers and COUNT_KEY in msg.header:
            msg = with_delivery_count(msg, None)
        self.vhost.dead_letter(self, msg, reason)
