"""A virtual host: its exchanges, queues and bindings, and the routing between them.

Declare/delete/bind operations raise :class:`AMQPError` with RabbitMQ's codes and texts;
the channel turns them into channel.close or connection.close.
"""

from __future__ import annotations

import base64
import logging
import os
from typing import TYPE_CHECKING, Any

from leveret.broker.core.deadletter import cc_keys, cycle_detected, dead_lettered_copy
from leveret.broker.core.errors import AMQPError, rs
from leveret.broker.core.exchange import EXCHANGE_CLASSES, Exchange, freeze, make_exchange
from leveret.broker.core.message import Message
from leveret.broker.core.queue import Queue
from leveret.protocol.constants import (
    ACCESS_REFUSED,
    COMMAND_INVALID,
    NOT_FOUND,
    PRECONDITION_FAILED,
    RESOURCE_LOCKED,
)

if TYPE_CHECKING:
    from leveret.broker.server import Broker

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


class DefaultExchange(Exchange):
    """The nameless direct exchange: routing key = queue name."""

    type = "direct"

    def __init__(self, vhost: VHost) -> None:
        super().__init__("", durable=True)
        self._queues = vhost.queues

    def _clear(self) -> None:
        pass

    def _add(self, dest: Any, routing_key: str, args: dict[str, Any]) -> None:
        pass

    def route(self, routing_key: str, msg: Any) -> tuple[Any, ...]:
        q = self._queues.get(routing_key)
        return (q,) if q is not None else ()


def _bool_text(v: bool) -> str:
    return "true" if v else "false"


def amqp_type_name(v: Any) -> str:
    """The AMQP table type RabbitMQ would report for a decoded value."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        if -128 <= v <= 127:
            return "byte"
        if -32768 <= v <= 32767:
            return "short"
        if -(2**31) <= v < 2**31:
            return "signedint"
        return "long"
    if isinstance(v, str | bytes):
        return "longstr"
    if isinstance(v, float):
        return "double"
    if isinstance(v, dict):
        return "table"
    if isinstance(v, list):
        return "array"
    return type(v).__name__


def _arg_text(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        v = "true" if v else "false"
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return f"the value '{v}' of type '{amqp_type_name(v) if not isinstance(v, str) else 'longstr'}'"


def _val(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def validate_queue_arguments(args: dict[str, Any], name: str, vhost: str, durable: bool, exclusive: bool, auto_delete: bool) -> None:
    """RabbitMQ's x-argument validation for queue.declare (406 with its texts)."""
    where = rs("queue", name, vhost)

    def bad(arg: str, why: str) -> AMQPError:
        return AMQPError(PRECONDITION_FAILED, f"invalid arg '{arg}' for {where}: {why}", 50, 10)

    def integer(arg: str, zero_ok: bool = True) -> None:
        if arg not in args:
            return
        v = args[arg]
        if not isinstance(v, int) or isinstance(v, bool):
            raise bad(arg, f'"expected integer, got {amqp_type_name(v)}"')
        if v < 0:
            raise bad(arg, f"{{value_negative,{v}}}")
        if v == 0 and not zero_ok:
            raise bad(arg, f"{{value_zero,{v}}}")

    integer("x-message-ttl")
    integer("x-expires", zero_ok=False)
    integer("x-max-length")
    integer("x-max-length-bytes")
    integer("x-max-priority")
    if "x-max-priority" in args and args["x-max-priority"] > 255:
        raise bad("x-max-priority", f"{{max_value_exceeded,{args['x-max-priority']}}}")
    if "x-overflow" in args and _val(args["x-overflow"]) not in ("drop-head", "reject-publish", "reject-publish-dlx"):
        raise bad("x-overflow", "invalid_overflow")
    if "x-single-active-consumer" in args and not isinstance(args["x-single-active-consumer"], bool):
        raise bad("x-single-active-consumer", f"{{unacceptable_type,{amqp_type_name(args['x-single-active-consumer'])}}}")
    for arg in ("x-dead-letter-exchange", "x-dead-letter-routing-key"):
        if arg in args and not isinstance(args[arg], str | bytes):
            raise AMQPError(
                PRECONDITION_FAILED,
                f"invalid type '{amqp_type_name(args[arg])}' for arg '{arg}' in {where}",
                50,
                10,
            )
    if "x-dead-letter-routing-key" in args and "x-dead-letter-exchange" not in args:
        raise bad("x-dead-letter-routing-key", "routing_key_but_no_dlx_defined")
    qtype = args.get("x-queue-type")
    if qtype is not None:
        qt = _val(qtype)
        if qt not in ("classic", "quorum", "stream"):
            raise bad("x-queue-type", f"\"unsupported queue type '{qt}'\"")
        if qt in ("quorum", "stream"):
            # accepted as a durable classic queue (documented), with RabbitMQ's checks
            for prop, on in (("auto-delete", auto_delete), ("exclusive", exclusive), ("non-durable", not durable)):
                if on:
                    raise AMQPError(PRECONDITION_FAILED, f"invalid property '{prop}' for {where}", 50, 10)
            log.warning("queue %r declared with x-queue-type=%s: served as a durable classic queue", name, qt)


# x-arguments whose values must match on redeclare (RabbitMQ's equivalence check)
QUEUE_EQUIV_ARGS = (
    "x-expires",
    "x-message-ttl",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
)


class VHost:
    def __init__(self, broker: Broker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.queues: dict[str, Queue] = {}
        self.exchanges: dict[str, Exchange] = {}
        self.default_exchange = DefaultExchange(self)
        self.exchanges[""] = self.default_exchange
        for xname, xtype in DEFAULT_EXCHANGES:
            self.exchanges[xname] = make_exchange(xtype, xname, durable=True)

    # ------------------------------------------------------------------ routing

    def route(self, exchange: Exchange, routing_key: str, msg: Message) -> list[Queue] | tuple[Any, ...]:
        """Every queue the message reaches from ``exchange`` (e2e bindings and
        alternate exchanges followed, each exchange visited once)."""
        dests = exchange.route(routing_key, msg)
        if dests:
            for d in dests:
                if type(d) is not Queue:
                    break
            else:
                return dests
        elif exchange.alternate is None:
            return dests
        out: dict[Queue, None] = {}
        self._route_into(exchange, routing_key, msg, out, set())
        return list(out)

    def _route_into(self, x: Exchange, rk: str, msg: Message, out: dict[Queue, None], seen: set[str]) -> None:
        seen.add(x.name)
        # RabbitMQ: the AE is used only when the exchange itself matched no binding
        # (a match to an exchange that routes nowhere does not count as unroutable)
        dests = x.route(rk, msg)
        for d in dests:
            if type(d) is Queue:
                out[d] = None
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
            if name == "":  # RabbitMQ 3.10 refuses a passive declare of "" too
                raise AMQPError(ACCESS_REFUSED, "operation not permitted on the default exchange")
            return self.get_exchange(name)
        if type_ not in EXCHANGE_CLASSES:
            # x-* plugin types are not available here either
            raise AMQPError(COMMAND_INVALID, f"unknown exchange type '{type_}'")
        if name == "":
            raise AMQPError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        x = self.exchanges.get(name)
        if x is None:
            if name.startswith("amq."):
                raise AMQPError(
                    ACCESS_REFUSED, f"exchange name '{name}' contains reserved prefix 'amq.*'"
                )
            x = make_exchange(
                type_, name, durable=durable, auto_delete=auto_delete, internal=internal, arguments=arguments
            )
            self.exchanges[name] = x
            self.broker.definitions_changed(x if durable else None)
            return x
        where = rs("exchange", name, self.name)
        if x.type != type_:
            raise AMQPError(
                PRECONDITION_FAILED,
                f"inequivalent arg 'type' for {where}: received '{type_}' but current is '{x.type}'",
            )
        for arg, new, cur in (
            ("durable", durable, x.durable),
            ("auto_delete", auto_delete, x.auto_delete),
            ("internal", internal, x.internal),
        ):
            if new != cur:
                raise AMQPError(
                    PRECONDITION_FAILED,
                    f"inequivalent arg '{arg}' for {where}: received '{_bool_text(new)}' but current is '{_bool_text(cur)}'",
                )
        new_ae, cur_ae = arguments.get("alternate-exchange"), x.arguments.get("alternate-exchange")
        if freeze(new_ae) != freeze(cur_ae):
            raise AMQPError(
                PRECONDITION_FAILED,
                f"inequivalent arg 'alternate-exchange' for {where}: received {_arg_text(new_ae)} but current is {_arg_text(cur_ae)}",
            )
        return x

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        if name == "":
            raise AMQPError(ACCESS_REFUSED, "operation not permitted on the default exchange")
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
        self.exchanges.pop(x.name, None)
        x.bindings.clear()
        x._rebuild()
        for other in list(self.exchanges.values()):
            if other.unbind_all(x):
                self._maybe_auto_delete(other)
        self.broker.definitions_changed(x if x.durable else None)

    def _maybe_auto_delete(self, x: Exchange) -> None:
        if x.auto_delete and not x.bindings and not x.deleted and x.name in self.exchanges:
            self._remove_exchange(x)

    def bind_exchange(self, dest_name: str, source_name: str, routing_key: str, arguments: dict[str, Any]) -> None:
        if dest_name == "" or source_name == "":
            raise AMQPError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        dest = self.get_exchange(dest_name)
        source = self.get_exchange(source_name)
        if source.bind(dest, routing_key, arguments):
            self.broker.definitions_changed(source if source.durable and dest.durable else None)

    def unbind_exchange(self, dest_name: str, source_name: str, routing_key: str, arguments: dict[str, Any]) -> None:
        if dest_name == "" or source_name == "":
            raise AMQPError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        dest = self.exchanges.get(dest_name)
        source = self.exchanges.get(source_name)
        if dest is None or source is None:
            return
        if source.unbind(dest, routing_key, arguments):
            self.broker.definitions_changed(source if source.durable and dest.durable else None)
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
    ) -> Queue:
        if passive:
            return self.get_queue(name, owner)
        durable = durable and not exclusive  # RabbitMQ: exclusive queues are never durable
        if name == "":
            name = generated_name("amq.gen-")
        elif name.startswith("amq.") and not recovering:  # (a durable server-named queue)
            raise AMQPError(ACCESS_REFUSED, f"queue name '{name}' contains reserved prefix 'amq.*'")
        q = self.queues.get(name)
        if q is not None:
            self.check_exclusive(q, owner if exclusive else None, strict=True)
            where = rs("queue", name, self.name)
            for arg, new, cur in (("durable", durable, q.durable), ("auto_delete", auto_delete, q.auto_delete)):
                if new != cur:
                    raise AMQPError(
                        PRECONDITION_FAILED,
                        f"inequivalent arg '{arg}' for {where}: received '{_bool_text(new)}' but current is '{_bool_text(cur)}'",
                    )
            for arg in QUEUE_EQUIV_ARGS:
                new_v, cur_v = arguments.get(arg), q.arguments.get(arg)
                if freeze(new_v) != freeze(cur_v):
                    if isinstance(new_v, int) and isinstance(cur_v, int) and new_v == cur_v:
                        continue
                    if new_v is not None and cur_v is not None:
                        text = f"received '{_val(new_v)}' but current is '{_val(cur_v)}'"
                    else:
                        text = f"received {_arg_text(new_v)} but current is {_arg_text(cur_v)}"
                    raise AMQPError(PRECONDITION_FAILED, f"inequivalent arg '{arg}' for {where}: {text}")
            q.touch()
            return q
        validate_queue_arguments(arguments, name, self.name, durable, exclusive, auto_delete)
        q = Queue(self, name, durable, owner if exclusive else None, auto_delete, arguments)
        self.queues[name] = q
        if exclusive and owner is not None:
            owner.exclusive_queues.append(q)
        self.broker.queue_created(q)
        return q

    def delete_queue(self, q: Queue) -> int:
        """Remove a queue, its bindings and consumers; return its ready message count."""
        if q.deleted:
            return 0
        q.deleted = True
        q.cancel_timers()
        self.queues.pop(q.name, None)
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
        self.broker.queue_deleted(q)
        return count

    def bind_queue(self, q: Queue, exchange_name: str, routing_key: str, arguments: dict[str, Any]) -> None:
        if exchange_name == "":
            raise AMQPError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        x = self.get_exchange(exchange_name)
        if x.bind(q, routing_key, arguments):
            self.broker.definitions_changed(x if x.durable and q.durable else None)

    def unbind_queue(self, queue_name: str, exchange_name: str, routing_key: str, arguments: dict[str, Any], owner: Any) -> None:
        if exchange_name == "":
            raise AMQPError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        q = self.queues.get(queue_name)
        x = self.exchanges.get(exchange_name)
        if q is None or x is None:
            return
        self.check_exclusive(q, owner)
        if x.unbind(q, routing_key, arguments):
            self.broker.definitions_changed(x if x.durable and q.durable else None)
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
            keys = [msg.routing_key, *cc_keys(msg.headers, "CC")] if msg.header[12] & 0x20 else [msg.routing_key]
            if msg.bcc:
                keys += msg.bcc
        targets: dict[Queue, None] = {}
        for rk in keys:
            for t in self.route(x, rk, dl):
                targets[t] = None
        for t in targets:
            if cycle_detected(dl, t):
                log.debug("dead-letter cycle: dropping message for %r", t.name)
                continue
            t.publish(dl)
        self.broker.message_dead_lettered(dl, list(targets))
