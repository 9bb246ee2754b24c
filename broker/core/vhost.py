"""A virtual host: its exchanges, queues and bindings, and the routing between them.

Declare/delete/bind operations raise :class:`AMQPError` with RabbitMQ's codes and texts;
the wire layer turns them into channel.close or connection.close.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from leveret.broker.core.arguments import (
    check_equivalent,
    check_equivalent_alternate_exchange,
    check_equivalent_queue_arguments,
    validate_queue_arguments,
)
from leveret.broker.core.deadletter import cc_keys, cycle_detected, dead_lettered_copy
from leveret.broker.core.delayed import DelayedStore
from leveret.broker.core.errors import AMQPError, rs
from leveret.broker.core.exchange import (
    EXCHANGE_CLASSES,
    DefaultExchange,
    DelayedExchange,
    DelayedHold,
    Exchange,
    make_exchange,
)
from leveret.broker.core.message import Message
from leveret.broker.core.queue import ACCEPTED, Queue
from leveret.protocol.constants import (
    ACCESS_REFUSED,
    COMMAND_INVALID,
    NOT_FOUND,
    PRECONDITION_FAILED,
    RESOURCE_LOCKED,
)

if TYPE_CHECKING:
    from leveret.broker.core.node import Node

log = logging.getLogger("leveret.vhost")

DEFAULT_EXCHANGES = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)


def generated_name(prefix: str) -> str:
    """RabbitMQ-style server-generated name: prefix + URL-safe base64 of 16 random bytes."""
    return prefix + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


def not_default(*names: str) -> None:
    """403 for an operation the default exchange does not allow (declare, delete, bind)."""
    if "" in names:
        raise AMQPError(ACCESS_REFUSED, "operation not permitted on the default exchange")


#: the message counters a vhost keeps (``VHost.stats_<name>``), named as in message_stats
VHOST_COUNTERS = ("confirm", "return_unroutable", "drop_unroutable")


class VHost:
    def __init__(self, node: Node, name: str) -> None:
        self.node = node
        self.name = name
        self.queues: dict[str, Queue] = {}
        self.exchanges: dict[str, Exchange] = {}
        self.default_exchange = DefaultExchange(self.queues)
        self.exchanges[""] = self.default_exchange
        # message counters (the management API's message_stats, Prometheus' global
        # counters); off the per-message path: confirms are counted once per flush of a
        # channel's confirms, unroutable publishes only when one happens.  The node's
        # totals add those of deleted vhosts (Broker.message_totals).
        self.stats_confirm = 0  # publishes confirmed (basic.ack) to confirm-mode publishers
        self.stats_return_unroutable = 0  # mandatory publishes that reached no queue (basic.return)
        self.stats_drop_unroutable = 0  # other publishes that reached no queue (dropped)
        self.stats_publish_gone = 0  # publish_in of exchanges since deleted
        self.stats_deliver_gone = 0  # deliveries (and gets) from queues since deleted
        self.stats_ack_gone = 0  # ... and their acks
        for xname, xtype in DEFAULT_EXCHANGES:
            self.exchanges[xname] = make_exchange(xtype, xname, durable=True)

    # ------------------------------------------------------------------ routing

    def route(self, exchange: Exchange, routing_key: str, msg: Message) -> list[Queue] | tuple[Any, ...]:
        """Every queue the message reaches from ``exchange`` (e2e bindings and
        alternate exchanges followed, each exchange visited once)."""
        dests = exchange.route(routing_key, msg)
        if dests:
            for d in dests:
                if type(d) is not Queue and type(d) is not DelayedHold:
                    break
            else:
                return dests
        elif exchange.alternate is None:
            return dests
        out: dict[Queue, None] = {}
        self._route_into(exchange, routing_key, msg, out, set())
        return list(out)

    def route_keys(self, exchange: Exchange, keys: Iterable[str], msg: Message) -> list[Queue]:
        """Every queue the message reaches by any of ``keys`` (CC/BCC, dead lettering),
        each queue once, in first-reached order."""
        found: dict[Queue, None] = {}
        for rk in keys:
            for q in self.route(exchange, rk, msg):
                found[q] = None
        return list(found)

    @staticmethod
    def enqueue(queues: Iterable[Queue], msg: Message) -> int:
        """Hand a routed message to its queues; the OR of their :class:`Enqueued` outcomes."""
        outcome = ACCEPTED
        for q in queues:
            outcome |= q.publish(msg)
        return outcome

    def _route_into(self, x: Exchange, rk: str, msg: Message, out: dict[Queue, None], seen: set[str]) -> None:
        seen.add(x.name)
        # RabbitMQ: the AE is used only when the exchange itself matched no binding
        # (a match to an exchange that routes nowhere does not count as unroutable)
        dests = x.route(rk, msg)
        for d in dests:
            if type(d) is Queue or type(d) is DelayedHold:
                out[d] = None  # type: ignore[index]
            elif d.name not in seen:
                self._route_into(d, rk, msg, out, seen)
        if not dests and x.alternate is not None and x.alternate not in seen:
            ae = self.exchanges.get(x.alternate)
            if ae is not None:
                self._route_into(ae, rk, msg, out, seen)

    # ------------------------------------------------------------------ exchanges

    def get_exchange(self, name: str) -> Exchange:
        x = self.exchanges.get(name)
        if x is None:
            raise AMQPError(NOT_FOUND, f"no {rs('exchange', name, self.name)}")
        return x

    def declare_exchange(
        self,
        name: str,
        type_: str,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: dict[str, Any],
    ) -> Exchange:
        if passive:
            not_default(name)  # RabbitMQ 3.10 refuses a passive declare of "" too
            return self.get_exchange(name)
        if type_ not in EXCHANGE_CLASSES:
            raise AMQPError(COMMAND_INVALID, f"unknown exchange type '{type_}'")
        not_default(name)
        x = self.exchanges.get(name)
        if x is None:
            if name.startswith("amq."):
                raise AMQPError(
                    ACCESS_REFUSED, f"exchange name '{name}' contains reserved prefix 'amq.*'"
                )
            EXCHANGE_CLASSES[type_].validate(arguments)
            x = make_exchange(
                type_, name, durable=durable, auto_delete=auto_delete, internal=internal, arguments=arguments
            )
            if type(x) is DelayedExchange:
                x.store = DelayedStore(self, x)  # (a durable one recovers what its log holds)
            self.exchanges[name] = x
            self.node.definitions_changed(x if durable else None)
            return x
        where = rs("exchange", name, self.name)
        if x.type != type_:
            raise AMQPError(
                PRECONDITION_FAILED,
                f"inequivalent arg 'type' for {where}: received '{type_}' but current is '{x.type}'",
            )
        check_equivalent(
            where,
            (("durable", durable, x.durable), ("auto_delete", auto_delete, x.auto_delete), ("internal", internal, x.internal)),
        )
        check_equivalent_alternate_exchange(where, arguments, x.arguments)
        return x

    @property
    def stats_published(self) -> int:
        """Messages published in this vhost: its exchanges' ``publish_in``, deleted
        exchanges included."""
        return self.stats_publish_gone + sum(x.stats_publish_in for x in self.exchanges.values())

    @property
    def stats_delivered(self) -> int:
        """Deliveries and basic.get-oks from this vhost's queues (``BackingQueue.stats_deliver``,
        the one place a delivery is counted), deleted queues included."""
        return self.stats_deliver_gone + sum(q.store.stats_deliver for q in self.queues.values())

    @property
    def stats_acked(self) -> int:
        """Acks of those (``BackingQueue.stats_ack``), deleted queues included."""
        return self.stats_ack_gone + sum(q.store.stats_ack for q in self.queues.values())

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        not_default(name)
        if name.startswith("amq."):
            raise AMQPError(ACCESS_REFUSED, f"deletion of system {rs('exchange', name, self.name)} not allowed")
        x = self.exchanges.get(name)
        if x is None:
            return
        if if_unused and x.bindings:
            raise AMQPError(PRECONDITION_FAILED, f"{rs('exchange', name, self.name)} in use")
        self._remove_exchange(x)

    def _remove_exchange(self, x: Exchange) -> None:
        x.deleted = True
        x.removed()
        self.stats_publish_gone += x.stats_publish_in
        self.exchanges.pop(x.name, None)
        x.bindings.clear()
        x._rebuild()
        for other in list(self.exchanges.values()):
            if other.unbind_all(x):
                self._maybe_auto_delete(other)
        self.node.definitions_changed(x if x.durable else None)

    def _maybe_auto_delete(self, x: Exchange) -> None:
        if x.auto_delete and not x.bindings and not x.deleted and x.name in self.exchanges:
            self._remove_exchange(x)

    def bind_exchange(self, dest_name: str, source_name: str, routing_key: str, arguments: dict[str, Any]) -> None:
        not_default(dest_name, source_name)
        dest = self.get_exchange(dest_name)
        source = self.get_exchange(source_name)
        if source.bind(dest, routing_key, arguments):
            self.node.definitions_changed(source if source.durable and dest.durable else None)

    def unbind_exchange(self, dest_name: str, source_name: str, routing_key: str, arguments: dict[str, Any]) -> None:
        not_default(dest_name, source_name)
        dest = self.exchanges.get(dest_name)
        source = self.exchanges.get(source_name)
        if dest is None or source is None:
            return
        if source.unbind(dest, routing_key, arguments):
            self.node.definitions_changed(source if source.durable and dest.durable else None)
            self._maybe_auto_delete(source)

    # ------------------------------------------------------------------ queues

    def get_queue(self, name: str, owner: Any) -> Queue:
        q = self.queues.get(name)
        if q is None:
            raise AMQPError(NOT_FOUND, f"no {rs('queue', name, self.name)}")
        self.check_exclusive(q, owner)
        return q

    def check_exclusive(self, q: Queue, owner: Any, strict: bool = False) -> None:
        """405 unless ``owner`` may use ``q``; ``strict`` (redeclare, as RabbitMQ): the
        queue's owner must be exactly ``owner`` (None for a non-exclusive declare)."""
        if q.exclusive_owner is not owner and (strict or q.exclusive_owner is not None):
            raise AMQPError(
                RESOURCE_LOCKED,
                f"cannot obtain exclusive access to locked {rs('queue', q.name, self.name)}. "
                "It could be originally declared on another connection or the exclusive "
                "property value does not match that of the original declaration.",
            )

    def declare_queue(
        self,
        name: str,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
        owner: Any,
        recovering: bool = False,
        authorize: Callable[[str, dict[str, Any], bool], None] | None = None,
    ) -> Queue:
        """Declare (or, ``passive``, look up) a queue.  ``authorize(name, arguments,
        new)`` is the caller's permission check, called once the name is known (a
        server-generated one too) and before the equivalence checks."""
        if passive:
            return self.get_queue(name, owner)
        durable = durable and not exclusive  # RabbitMQ: exclusive queues are never durable
        if name == "":
            name = generated_name("amq.gen-")
        elif name.startswith("amq.") and not recovering:  # (a durable server-named queue)
            raise AMQPError(ACCESS_REFUSED, f"queue name '{name}' contains reserved prefix 'amq.*'")
        q = self.queues.get(name)
        if authorize is not None:
            authorize(name, arguments, q is None)
        if q is not None:
            self.check_exclusive(q, owner if exclusive else None, strict=True)
            where = rs("queue", name, self.name)
            check_equivalent(where, (("durable", durable, q.durable), ("auto_delete", auto_delete, q.auto_delete)))
            check_equivalent_queue_arguments(where, arguments, q.arguments)
            q.touch()
            return q
        validate_queue_arguments(arguments, name, self.name, durable, exclusive, auto_delete)
        q = Queue(self, name, durable, owner if exclusive else None, auto_delete, arguments)
        self.queues[name] = q
        if exclusive and owner is not None:
            owner.exclusive_queues.append(q)
        self.node.queue_created(q)
        return q

    def delete_queue(self, q: Queue) -> int:
        """Remove a queue, its bindings and consumers; return its ready message count."""
        if q.deleted:
            return 0
        q.deleted = True
        q.cancel_timers()
        self.queues.pop(q.name, None)
        self.stats_deliver_gone += q.store.stats_deliver
        self.stats_ack_gone += q.store.stats_ack
        owner = q.exclusive_owner
        if owner is not None and q in owner.exclusive_queues:
            owner.exclusive_queues.remove(q)
        for x in list(self.exchanges.values()):
            if x.bindings and x.unbind_all(q):
                self._maybe_auto_delete(x)
        for c in list(q.consumers):
            c.channel.consumer_cancelled_by_server(c)
        q.consumers.clear()
        count = q.purge()
        q.store.drop_overflow()
        self.node.queue_deleted(q)
        return count

    def bind_queue(self, q: Queue, exchange_name: str, routing_key: str, arguments: dict[str, Any]) -> None:
        not_default(exchange_name)
        x = self.get_exchange(exchange_name)
        if x.bind(q, routing_key, arguments):
            self.node.definitions_changed(x if x.durable and q.durable else None)

    def unbind_queue(self, queue_name: str, exchange_name: str, routing_key: str, arguments: dict[str, Any], owner: Any) -> None:
        not_default(exchange_name)
        q = self.queues.get(queue_name)
        x = self.exchanges.get(exchange_name)
        if q is None or x is None:
            return
        self.check_exclusive(q, owner)
        if x.unbind(q, routing_key, arguments):
            self.node.definitions_changed(x if x.durable and q.durable else None)
            self._maybe_auto_delete(x)

    # ------------------------------------------------------------------ dead letters

    def dead_letter(self, q: Queue, msg: Message, reason: str) -> None:
        """Republish ``msg`` leaving ``q`` to the queue's dead-letter exchange."""
        assert q.dlx is not None
        x = self.exchanges.get(q.dlx)
        if x is None:
            return  # RabbitMQ drops the message when the DLX does not exist
        dl = dead_lettered_copy(msg, q, reason, q.dlx, q.dlrk)
        if q.dlrk is not None:
            keys = [q.dlrk]
        else:
            keys = [msg.routing_key, *cc_keys(msg.headers, "CC")] if msg.has_headers else [msg.routing_key]
            if msg.bcc:
                keys += msg.bcc
        for t in self.route_keys(x, keys, dl):
            if cycle_detected(dl, t):
                log.debug("dead-letter cycle: dropping message for %r", t.name)
                continue
            t.publish(dl)
