"""The core operations: the one home of every rule of a declare, delete, bind, unbind,
purge, publish and get, whoever asks.

A :class:`Session` is a user acting in one vhost.  The AMQP channel holds one for its
connection's user (and owns the exclusive queues it declares); the management HTTP API
makes one per request for the user it authenticated; definitions import and the test
tooling act as the node itself (``user=None``: no permission checks, every other rule
kept).  Each operation checks, in RabbitMQ 3.10's order, the permissions
(:class:`~leveret.broker.core.access.AccessControl`), the vhost's limits
(:meth:`VHost.check_queue_limit`), the arguments, exclusivity and the conditions
(if-unused, if-empty), then changes the vhost; a refusal is an :class:`AMQPError` with
RabbitMQ's code and text, which the channel turns into channel.close and the HTTP API into
its error body.

Publishing has two halves.  The checks (:meth:`Session.publish_exchange`: write permission,
the exchange, internal, topic permission; :meth:`Session.check_properties`: user-id,
expiration, direct reply-to, CC/BCC) are here; the channel keeps its own one-step fast
path around them (a cached ``write_ok`` exchange, property checks only when the header's
flags call for them) and its wire-only parts (mandatory returns, confirms, flow credit).
:meth:`Session.publish` is the whole of it for callers without a channel (HTTP, tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from leveret.broker.core.access import CONFIGURE, READ, WRITE
from leveret.broker.core.deadletter import cc_keys
from leveret.broker.core.errors import AMQPError, rs
from leveret.broker.core.exchange import EXCHANGE_CLASSES, Exchange
from leveret.broker.core.message import Message
from leveret.broker.core.queue import Queue
from leveret.broker.core.vhost import not_default
from leveret.protocol import properties as P
from leveret.protocol.constants import ACCESS_REFUSED, NOT_FOUND, PRECONDITION_FAILED, Method
from leveret.protocol.methods import shortstr

if TYPE_CHECKING:
    from leveret.broker.core.queue import Entry
    from leveret.broker.core.vhost import VHost

#: direct reply-to's pseudo-queue (RabbitMQ's amq.rabbitmq.reply-to)
REPLY_TO = "amq.rabbitmq.reply-to"

_AUTHZ_CACHE_MAX = 4096
_WRITE_CACHE_MAX = 1024


def validate_expiration(exp: str) -> None:
    """RabbitMQ's check of the expiration property (a non-negative integer string)."""
    digits = exp[1:] if exp[:1] in "+-" else exp
    n = 0
    while n < len(digits) and digits[n].isdigit():
        n += 1
    if n == 0:
        raise AMQPError(PRECONDITION_FAILED, f"invalid expiration '{exp}': no_integer", *Method.BASIC_PUBLISH)
    if n < len(digits):
        raise AMQPError(PRECONDITION_FAILED, f"invalid expiration '{exp}': {{leftover_string,\"{digits[n:]}\"}}", *Method.BASIC_PUBLISH)
    if exp.startswith("-") and int(digits):
        raise AMQPError(PRECONDITION_FAILED, f"invalid expiration '{exp}': {{value_negative,{int(exp)}}}", *Method.BASIC_PUBLISH)


class Session:
    """``user`` acting in ``vhost``; ``owner`` is what exclusive queues belong to (the
    AMQP connection; None for the HTTP API, which may use no exclusive queue).

    ``user=None`` is the node itself (definitions import, test tooling): no permission
    checks.  Permission decisions are cached (``authz_ok``; ``write_ok``: exchange name
    -> the exchange a publish may go to without any check, so a redeclared exchange is
    checked again); :meth:`forget_decisions` drops them when permissions change."""

    __slots__ = ("vhost", "user", "owner", "access", "authz_ok", "write_ok")

    def __init__(self, vhost: VHost, user: str | None, owner: Any = None) -> None:
        self.vhost = vhost
        self.user = user
        self.owner = owner
        self.access = vhost.node.access
        self.authz_ok: set[tuple[str, str, str]] = set()
        self.write_ok: dict[str, Exchange] = {}

    # ------------------------------------------------------------------ permissions

    def forget_decisions(self) -> None:
        """Permissions changed: decide everything again (the dicts are cleared in place:
        the channel's fast path holds ``write_ok`` itself)."""
        self.authz_ok.clear()
        self.write_ok.clear()

    def authz(self, perm: str, kind: str, name: str) -> None:
        """403 unless the user has ``perm`` on the resource (cached)."""
        if self.user is None:
            return
        key = (perm, kind, name)
        if key in self.authz_ok:
            return
        self.access.check(self.user, self.vhost.name, perm, kind, name)
        if len(self.authz_ok) >= _AUTHZ_CACHE_MAX:
            self.authz_ok.clear()
        self.authz_ok.add(key)

    def topic_authz(self, perm: str, x: Exchange | None, routing_key: str) -> bool:
        """403 unless the routing key is allowed on topic exchange ``x``; False when
        the exchange has no topic permission for this user (nothing to check)."""
        if x is None or x.type != "topic" or self.user is None:
            return False
        access, user, vhost = self.access, self.user, self.vhost.name
        if access.topic_rule(user, vhost, x.name) is None:
            return False
        access.check_topic(user, vhost, perm, x.name, routing_key)
        return True

    # ------------------------------------------------------------------ exchanges

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
        """exchange.declare: configure on the exchange; with an alternate exchange on a
        new one, read on it and write on the AE; then the vhost's checks."""
        arguments = arguments or {}
        if not passive and name and type_ in EXCHANGE_CLASSES:
            # (an unknown type and the default exchange are refused first, as RabbitMQ)
            self.authz(CONFIGURE, "exchange", name)
            ae = arguments.get("alternate-exchange")
            if isinstance(ae, str) and name not in self.vhost.exchanges and not name.startswith("amq."):
                self.authz(READ, "exchange", name)
                self.authz(WRITE, "exchange", ae)
        return self.vhost.declare_exchange(
            name, type_, passive=passive, durable=durable, auto_delete=auto_delete, internal=internal,
            arguments=arguments,
        )

    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        """exchange.delete (a missing exchange is no error, as AMQP; the HTTP API looks
        first and answers 404)."""
        if name and not name.startswith("amq."):
            self.authz(CONFIGURE, "exchange", name)
        self.vhost.delete_exchange(name, if_unused=if_unused)

    # ------------------------------------------------------------------ bindings

    def _binding_authz(self, kind: str, dest: str, source: str, routing_key: str) -> None:
        """RabbitMQ's binding_action: write on the destination, then (the default
        exchange refused) read on the source and the topic read permission."""
        self.authz(WRITE, kind, dest)
        not_default(source, *([dest] if kind == "exchange" else []))
        self.authz(READ, "exchange", source)
        self.topic_authz(READ, self.vhost.exchanges.get(source), routing_key)

    def bind(self, source: str, destination: str, *, kind: str, routing_key: str = "",
             arguments: dict[str, Any] | None = None) -> None:
        """queue.bind (``kind="queue"``) or exchange.bind (``kind="exchange"``)."""
        self._binding_authz(kind, destination, source, routing_key)
        v = self.vhost
        if kind == "queue":
            v.bind_queue(v.get_queue(destination, self.owner), source, routing_key, arguments or {})
        else:
            v.bind_exchange(destination, source, routing_key, arguments or {})

    def unbind(self, source: str, destination: str, *, kind: str, routing_key: str = "",
               arguments: dict[str, Any] | None = None) -> None:
        """queue.unbind / exchange.unbind (a binding that is not there is no error)."""
        self._binding_authz(kind, destination, source, routing_key)
        if kind == "queue":
            self.vhost.unbind_queue(destination, source, routing_key, arguments or {}, self.owner)
        else:
            self.vhost.unbind_exchange(destination, source, routing_key, arguments or {})

    # ------------------------------------------------------------------ queues

    def declare_queue(
        self,
        name: str,
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> Queue:
        """queue.declare: configure on the queue once its name is known; for a new queue
        the vhost's queue limit, then with a dead-letter exchange read on the queue and
        write on the DLX (RabbitMQ 3.10's order); then the arguments and, for an existing
        queue, exclusivity and equivalence."""
        return self.vhost.declare_queue(
            name,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments or {},
            owner=self.owner,
            authorize=None if passive else self._queue_declare_authz,
        )

    def _queue_declare_authz(self, name: str, arguments: dict[str, Any], new: bool) -> None:
        self.authz(CONFIGURE, "queue", name)
        if not new:
            return
        self.vhost.check_queue_limit(name)
        dlx = arguments.get("x-dead-letter-exchange")
        if isinstance(dlx, str):
            self.authz(READ, "queue", name)
            self.authz(WRITE, "exchange", dlx)

    def delete_queue(self, name: str, *, if_unused: bool = False, if_empty: bool = False) -> int | None:
        """queue.delete: the ready messages it had, None if there was no such queue (no
        error in AMQP; the HTTP API answers 404)."""
        self.authz(CONFIGURE, "queue", name)
        v = self.vhost
        q = v.queues.get(name)
        if q is None:
            return None
        v.check_exclusive(q, self.owner)
        q.qtype.check_delete(if_unused, if_empty, rs("queue", name, v.name))  # (quorum: 540)
        if if_unused and q.consumers:
            raise AMQPError(PRECONDITION_FAILED, f"{rs('queue', name, v.name)} in use", *Method.QUEUE_DELETE)
        if if_empty and q.total():
            raise AMQPError(PRECONDITION_FAILED, f"{rs('queue', name, v.name)} not empty", *Method.QUEUE_DELETE)
        return v.delete_queue(q)

    def purge(self, name: str) -> int:
        """queue.purge: the number of messages dropped."""
        self.authz(READ, "queue", name)
        q = self.vhost.get_queue(name, self.owner)
        q.qtype.check_op("queue.purge", rs("queue", name, self.vhost.name))  # (a stream: 540)
        return q.purge()

    # ------------------------------------------------------------------ publish

    def publish_exchange(self, name: str, x: Exchange | None, routing_key: str) -> Exchange:
        """The checks of a publish to ``name`` (``x``: the exchange under that name, or
        None): write on it (before looking it up, as RabbitMQ), that it exists, is not
        internal, then the topic permission on the routing key.  An exchange that needs
        no check next time goes into ``write_ok``."""
        self.authz(WRITE, "exchange", name)
        if x is None:
            raise AMQPError(NOT_FOUND, f"no exchange '{name}' in vhost '{self.vhost.name}'", *Method.BASIC_PUBLISH)
        if x.internal:
            raise AMQPError(
                ACCESS_REFUSED, f"cannot publish to internal exchange '{name}' in vhost '{self.vhost.name}'", *Method.BASIC_PUBLISH
            )
        if not self.topic_authz(WRITE, x, routing_key):
            if len(self.write_ok) >= _WRITE_CACHE_MAX:
                self.write_ok.clear()
            self.write_ok[name] = x  # the next publishes to it skip all of this
        return x

    def check_properties(self, msg: Message, reply_to: Callable[[], bytes] | None = None) -> list[str] | None:
        """The checks of a message whose properties the broker must look at: user-id
        (the authenticated user's), expiration, direct reply-to (``reply_to()`` gives
        the property's new value; None: this publisher has no reply consumer), CC/BCC
        (the BCC header removed).  Returns the extra routing keys (CC + BCC)."""
        props = msg.props
        uid = props.get("user_id")
        if uid is not None and self.user is not None and uid != self.user:
            raise AMQPError(
                PRECONDITION_FAILED, f"user_id property set to '{uid}' but authenticated user was '{self.user}'", *Method.BASIC_PUBLISH
            )
        exp = props.get("expiration")
        if exp is not None:
            validate_expiration(exp)
        rewrite: dict[int, bytes | None] = {}
        if props.get("reply_to") == REPLY_TO:
            if reply_to is None:
                raise AMQPError(PRECONDITION_FAILED, "fast reply consumer does not exist", *Method.BASIC_PUBLISH)
            rewrite[P.F_REPLY_TO] = reply_to()
        extra: list[str] | None = None
        if msg.has_headers:
            headers = msg.headers
            cc = cc_keys(headers, "CC")
            bcc = cc_keys(headers, "BCC")
            if cc or bcc:
                extra = cc + bcc
            if bcc:
                msg.bcc = bcc  # dead lettering routes by them again, as RabbitMQ does
            if "BCC" in headers:
                # only the BCC field goes: the others keep their bytes (and field types)
                fields = P.table_fields(msg.header, props["_headers_at"])
                del fields[b"BCC"]
                rewrite[P.F_HEADERS] = P.table_bytes(fields)
        if rewrite:
            msg.set_header(P.rewrite(msg.header, rewrite))
        return extra

    def route(self, x: Exchange, msg: Message, extra_keys: list[str] | None) -> list[Queue] | tuple[Any, ...]:
        """The queues a checked message reaches: by its routing key, and its CC/BCC keys."""
        if extra_keys:
            return self.vhost.route_keys(x, (msg.routing_key, *extra_keys), msg)
        return self.vhost.route(x, msg.routing_key, msg)

    def publish(self, exchange: str, routing_key: str, header: bytes, body: bytes, *, mandatory: bool = False) -> bool:
        """basic.publish without a channel (no confirm; ``mandatory``: an unroutable
        message counts as returned, as the management plugin's publish): every check,
        route, enqueue.  True if the message reached a queue."""
        v = self.vhost
        x = self.publish_exchange(exchange, v.exchanges.get(exchange), routing_key)
        msg = Message(shortstr(exchange) + shortstr(routing_key), exchange, routing_key, header, body)
        extra = self.check_properties(msg)
        x.stats_publish_in += 1  # (the one place a publish is counted)
        queues = self.route(x, msg, extra)
        if queues:
            v.enqueue(queues, msg)
        else:
            v.unroutable(x, mandatory=mandatory)
        return bool(queues)

    # ------------------------------------------------------------------ get

    def get(self, name: str, *, no_ack: bool = False) -> tuple[Queue, Entry | None]:
        """basic.get: read on the queue, the queue (exclusivity), its head entry (None:
        empty), counted on the queue (get, get without ack, get-empty).  The caller hands
        the entry out (a channel's unacked tracking) or settles it (:meth:`get_messages`)."""
        self.authz(READ, "queue", name)
        q = self.vhost.get_queue(name, self.owner)
        q.qtype.check_op("basic.get", rs("queue", name, self.vhost.name))  # (a stream: 540)
        return q, q.get(no_ack)

    def get_messages(self, name: str, count: int, *, requeue: bool, reject: bool = False) -> list[tuple[Message, bool, int]]:
        """basic.get up to ``count`` messages, then requeue them (``requeue``),
        dead-letter them (``reject``) or drop them (acked): the management API's get.
        Returns (message, redelivered, messages left) for each."""
        out: list[tuple[Message, bool, int]] = []
        back: list[tuple[int, Message]] = []
        q: Queue | None = None
        for _ in range(count):
            q, entry = self.get(name)
            if entry is None:
                break
            seq, msg, redelivered, _ = entry
            q.got_settled(seq, msg, redelivered, requeue, reject)
            if requeue:
                back.append((seq, msg))
            out.append((msg, redelivered, q.total()))
        if back and q is not None:
            q.requeue(back)
        return out


__all__ = ["REPLY_TO", "Session", "validate_expiration"]
