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
from leveret.broker.core.backing import GONE_STATS
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
from leveret.broker.core.policy import (
    NONE,
    Applied,
    Policy,
    best_match,
    effective_arguments,
    merged_definition,
)
from leveret.broker.core.queue import ACCEPTED, Queue
from leveret.broker.core.queuetype import QUORUM, STREAM, queue_type
from leveret.broker.core.quorum import QuorumQueue
from leveret.broker.core.stream import StreamQueue
from leveret.protocol.constants import (
    ACCESS_REFUSED,
    COMMAND_INVALID,
    NOT_ALLOWED,
    NOT_FOUND,
    PRECONDITION_FAILED,
    RESOURCE_LOCKED,
    Method,
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



def check_queue_name(name: str) -> None:
    """403: a client may not name a queue ``amq.*`` (RabbitMQ reserves the prefix)."""
    if name.startswith("amq."):
        raise AMQPError(ACCESS_REFUSED, f"queue name '{name}' contains reserved prefix 'amq.*'")

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
        # policies and operator policies by name, and what applies to each queue and
        # exchange (absent: nothing); see core/policy.py
        self.policies: dict[str, Policy] = {}
        self.operator_policies: dict[str, Policy] = {}
        self.applied: dict[Any, Applied] = {}
        self.stats_queue_gone = dict.fromkeys(GONE_STATS, 0)  # their other counters
        for xname, xtype in DEFAULT_EXCHANGES:
            self.exchanges[xname] = make_exchange(xtype, xname, durable=True)

    # ------------------------------------------------------------------ routing

    def route(self, exchange: Exchange, routing_key: str, msg: Message) -> list[Queue] | tuple[Any, ...]:
        """Every queue the message reaches from ``exchange`` (e2e bindings and
        alternate exchanges followed, each exchange visited once)."""
        dests = exchange.route(routing_key, msg)
        if dests:
            for d in dests:
                if type(d) is not Queue and type(d) is not QuorumQueue and type(d) is not StreamQueue and type(d) is not DelayedHold:  # (classic: one test)
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

    def unroutable(self, x: Exchange, *, mandatory: bool) -> None:
        """Count a publish that reached no queue (returned if ``mandatory``, else dropped)."""
        x.stats_unroutable += 1
        if mandatory:
            self.stats_return_unroutable += 1
        else:
            self.stats_drop_unroutable += 1

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
            if isinstance(d, Queue) or type(d) is DelayedHold:
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
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> Exchange:
        """The vhost's checks of exchange.declare (permissions are the caller's:
        :class:`~leveret.broker.core.operations.Session`)."""
        arguments = arguments or {}
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
            if self.policies or self.operator_policies:
                self._apply_to_exchange(x, self._match("exchange", name))
            self.node.definitions_changed(x if durable else None)
            return x
        self.check_exchange_equivalent(
            x, type_, durable=durable, auto_delete=auto_delete, internal=internal, arguments=arguments
        )
        return x

    def check_exchange_equivalent(
        self, x: Exchange, type_: str, *, durable: bool, auto_delete: bool, internal: bool, arguments: dict[str, Any]
    ) -> None:
        """406 unless a redeclare of ``x`` with these properties is equivalent."""
        where = rs("exchange", x.name, self.name)
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

    def queue_stat(self, name: str) -> int:
        """One of the queue counters in ``GONE_STATS`` summed over this vhost's queues,
        deleted queues included."""
        attr = "stats_" + name
        return self.stats_queue_gone[name] + sum(getattr(q.store, attr) for q in self.queues.values())

    @property
    def stats_acked(self) -> int:
        """Acks of those (``BackingQueue.stats_ack``), deleted queues included."""
        return self.stats_ack_gone + sum(q.store.stats_ack for q in self.queues.values())

    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
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
        self.applied.pop(x, None)
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
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        owner: Any = None,
        recovering: bool = False,
        authorize: Callable[[str, dict[str, Any], bool], None] | None = None,
    ) -> Queue:
        """Declare (or, ``passive``, look up) a queue.  ``authorize(name, arguments,
        new)`` is the caller's check (the session's permissions and, for a new queue,
        :meth:`check_queue_limit`), called once the name is known (a server-generated
        one too) and before the equivalence checks; only recovery passes none."""
        arguments = arguments or {}
        if passive:
            return self.get_queue(name, owner)
        durable = durable and not exclusive  # RabbitMQ: exclusive queues are never durable
        if name == "":
            queue_type(arguments, name, self.name).check_server_named()
            name = generated_name("amq.gen-")
        elif not recovering:  # (recovery: a durable server-named queue is amq.gen-...)
            check_queue_name(name)
        q = self.queues.get(name)
        if authorize is not None:
            authorize(name, arguments, q is None)
        if q is not None:
            self.check_redeclare(q, owner if exclusive else None, durable=durable, auto_delete=auto_delete, arguments=arguments)
            q.touch()
            return q
        validate_queue_arguments(arguments, name, self.name, durable=durable, exclusive=exclusive, auto_delete=auto_delete)
        applied = self._match("queue", name) if self.policies or self.operator_policies else NONE
        effective = effective_arguments("queue", arguments, applied.definition) if applied.definition else None
        qtype = queue_type(arguments, name, self.name)
        cls = QuorumQueue if qtype is QUORUM else StreamQueue if qtype is STREAM else Queue
        q = cls(self, name, durable=durable, exclusive_owner=owner if exclusive else None, auto_delete=auto_delete,
                arguments=arguments, effective=effective)
        if applied is not NONE:
            self.applied[q] = applied
        self.queues[name] = q
        if exclusive and owner is not None:
            owner.exclusive_queues.append(q)
        self.node.queue_created(q)
        return q

    def check_redeclare(self, q: Queue, owner: Any, *, durable: bool, auto_delete: bool, arguments: dict[str, Any]) -> None:
        """405 unless ``owner`` (None: not exclusive) may redeclare ``q``, 406 unless the
        redeclare is equivalent."""
        self.check_exclusive(q, owner, strict=True)
        where = rs("queue", q.name, self.name)
        check_equivalent(where, (("durable", durable, q.durable), ("auto_delete", auto_delete, q.auto_delete)))
        check_equivalent_queue_arguments(where, arguments, q.arguments, q.qtype)

    def check_new_queue(self, name: str, *, durable: bool, auto_delete: bool, arguments: dict[str, Any], adding: int = 0) -> None:
        """What a declare of a new, non-exclusive queue ``name`` would refuse (with
        ``adding`` other new queues before it): a reserved name, the vhost's queue limit,
        the arguments (a dry run: definitions import checks everything before it applies
        anything)."""
        check_queue_name(name)
        self.check_queue_limit(name, adding)
        validate_queue_arguments(arguments, name, self.name, durable=durable, exclusive=False, auto_delete=auto_delete)

    # ------------------------------------------------------------------ limits

    def limit(self, name: str) -> int | None:
        """This vhost's ``max-queues`` / ``max-connections`` (None: no limit); set through
        :meth:`AccessControl.set_vhost_limits`, which keeps them with the definitions."""
        return self.node.access.limit(self.name, name)

    def check_queue_limit(self, name: str, adding: int = 0) -> None:
        """406 if a new queue ``name`` (after ``adding`` others) would take the vhost over
        its ``max-queues``."""
        limit = self.limit("max-queues")
        if limit is not None and len(self.queues) + adding >= limit:
            raise AMQPError(
                PRECONDITION_FAILED, f"cannot declare queue '{name}': queue limit in vhost '{self.name}' ({limit}) is reached"
            )

    def check_connection_limit(self, user: str, opened: int) -> None:
        """530 (connection.open) if one more connection, with ``opened`` open already,
        would take the vhost over its ``max-connections``."""
        limit = self.limit("max-connections")
        if limit is not None and opened >= limit:
            raise AMQPError(
                NOT_ALLOWED,
                f"access to vhost '{self.name}' refused for user '{user}': connection limit ({limit}) is reached",
                *Method.CONNECTION_OPEN,
            )

    def delete_queue(self, q: Queue) -> int:
        """Remove a queue, its bindings and consumers; return its ready message count."""
        if q.deleted:
            return 0
        q.deleted = True
        q.cancel_timers()
        self.queues.pop(q.name, None)
        self.applied.pop(q, None)
        self.stats_deliver_gone += q.store.stats_deliver
        self.stats_ack_gone += q.store.stats_ack
        for k in GONE_STATS:
            self.stats_queue_gone[k] += getattr(q.store, "stats_" + k)
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

    # ------------------------------------------------------------------ policies

    def set_policy(self, policy: Policy) -> bool:
        """Add or replace a policy (or an operator policy: ``policy.operator``) and apply
        it at once to every queue and exchange; True if it is new."""
        table = self.operator_policies if policy.operator else self.policies
        new = policy.name not in table
        table[policy.name] = policy
        self.apply_policies()
        self.node.definitions_changed(policy)
        return new

    def delete_policy(self, name: str, operator: bool = False) -> bool:
        """Remove a policy; what it set is undone at once.  False: no such policy."""
        table = self.operator_policies if operator else self.policies
        policy = table.pop(name, None)
        if policy is None:
            return False
        self.apply_policies()
        self.node.definitions_changed(policy)
        return True

    def _match(self, kind: str, name: str) -> Applied:
        """What applies to the queue or exchange ``name``: the policy and operator policy
        with the highest priority among those that match."""
        p = best_match(self.policies, kind, name)
        op = best_match(self.operator_policies, kind, name)
        if p is None and op is None:
            return NONE
        return Applied(p, op, merged_definition(p, op))

    def applied_to(self, obj: Any) -> Applied:
        """What applies to a queue or exchange of this vhost (for the management API)."""
        return self.applied.get(obj, NONE)

    def apply_policies(self) -> None:
        """After a policy change: every queue and exchange whose policy or operator policy
        changed gets its new effective arguments (policy.effective_arguments)."""
        for q in list(self.queues.values()):
            new = self._match("queue", q.name)
            old = self.applied.get(q, NONE)
            if new.policy is old.policy and new.operator_policy is old.operator_policy:
                continue
            if new is NONE:
                self.applied.pop(q, None)
            else:
                self.applied[q] = new
            q.policy_changed(effective_arguments("queue", q.arguments, new.definition))
        for x in list(self.exchanges.values()):
            if x.name:
                new = self._match("exchange", x.name)
                old = self.applied.get(x, NONE)
                if new.policy is not old.policy or new.operator_policy is not old.operator_policy:
                    self._apply_to_exchange(x, new)

    def _apply_to_exchange(self, x: Exchange, applied: Applied) -> None:
        if applied is NONE:
            self.applied.pop(x, None)
        else:
            self.applied[x] = applied
        ae = effective_arguments("exchange", x.arguments, applied.definition).get("alternate-exchange")
        if isinstance(ae, bytes):
            ae = ae.decode("utf-8", "replace")
        x.alternate = ae if isinstance(ae, str) else None

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
