"""Queue types, as RabbitMQ's ``rabbit_queue_type``: classic, quorum and stream.

A :class:`QueueType` holds what is decided per type at declare time and never changes
for the queue's life: the ``x-queue-type`` name, the Erlang module RabbitMQ names in its
texts, the x-arguments the type accepts (RabbitMQ refuses the ones it knows but the type
does not support, with 406), the declaration rules (quorum and stream queues are durable
only, never exclusive or auto-delete, never server-named), the arguments a redeclare must
match, and the behaviour the queue's class implements:

* ``classic`` (:class:`leveret.broker.core.queue.Queue`): requeued messages go back to
  their original place; only persistent messages in durable queues are written to disk;
  no delivery count.
* ``quorum`` (:class:`leveret.broker.core.quorum.QuorumQueue`): every message is written
  to disk; a return (nack/reject with requeue, a consumer's channel closing) counts one
  delivery (``x-delivery-count``) and goes behind the ready messages, or ahead of them,
  in return order, when the queue has an ``x-delivery-limit``; past the limit the
  message is dropped or dead-lettered (``delivery_limit``).  No global qos, no
  ``if-unused``/``if-empty`` delete (540).
* ``stream`` (:class:`leveret.broker.core.stream.StreamQueue`): an append-only log
  every consumer reads from an offset of its choice; no basic.get, queue.purge,
  basic.nack/reject or auto-ack consumers (540), exclusive consumers are not exclusive.

:func:`queue_type` reads the type from a declaration's arguments (406 for an unknown
one); the queue's class carries it as ``Queue.qtype``.
"""

from __future__ import annotations

from typing import Any

from leveret.broker.core.errors import AMQPError, rs
from leveret.protocol.constants import NOT_IMPLEMENTED, PRECONDITION_FAILED, Method

#: the queue x-arguments RabbitMQ 3.10 knows (rabbit_amqqueue's declare arguments and the
#: queue types' capabilities); one it does not know is ignored by every type
KNOWN_ARGS = frozenset(
    {
        "x-expires",
        "x-message-ttl",
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-max-length",
        "x-max-length-bytes",
        "x-max-in-memory-length",
        "x-max-in-memory-bytes",
        "x-max-priority",
        "x-overflow",
        "x-queue-mode",
        "x-queue-version",
        "x-single-active-consumer",
        "x-queue-type",
        "x-queue-master-locator",
        "x-quorum-initial-group-size",
        "x-delivery-limit",
        "x-dead-letter-strategy",
        "x-queue-leader-locator",
        "x-max-age",
        "x-stream-max-segment-size-bytes",
        "x-initial-cluster-size",
    }
)


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes | bytearray) else str(v)


class QueueType:
    """One queue type: its names, accepted arguments and declaration rules."""

    __slots__ = ("name", "module", "supported", "equivalent", "durable_only", "global_qos", "delete_flags", "stream")

    def __init__(
        self,
        name: str,
        module: str,
        supported: frozenset[str] | None,
        equivalent: tuple[str, ...] = (),
        durable_only: bool = False,
        global_qos: bool = True,
        delete_flags: bool = True,
        stream: bool = False,
    ) -> None:
        self.name = name  # the x-queue-type value, and the management API's "type"
        self.module = module  # RabbitMQ's module, as its texts name the type
        #: the known arguments this type accepts (None: all of them)
        self.supported = supported
        #: arguments a redeclare must match, beyond the ones every type checks
        self.equivalent = equivalent
        self.durable_only = durable_only
        self.global_qos = global_qos  # basic.consume after basic.qos(global=true) allowed
        self.delete_flags = delete_flags  # queue.delete if-unused / if-empty supported
        #: a stream: no basic.get, queue.purge, nack/reject (540); exclusive consume ignored
        self.stream = stream

    def __repr__(self) -> str:
        return f"<QueueType {self.name}>"

    def unsupported(self, arg: str) -> bool:
        """``arg`` is one RabbitMQ knows and this type refuses."""
        return self.supported is not None and arg in KNOWN_ARGS and arg not in self.supported

    def check_declare(self, args: dict[str, Any], name: str, vhost: str, durable: bool, exclusive: bool, auto_delete: bool) -> None:
        """The type's rules for a new queue, after the arguments' own checks (406)."""
        where = rs("queue", name, vhost)
        if self.supported is not None:
            for arg in args:
                if self.unsupported(arg):
                    raise AMQPError(
                        PRECONDITION_FAILED, f"invalid arg '{arg}' for {where} of queue type {self.module}", *Method.QUEUE_DECLARE
                    )
        if self.durable_only:
            for prop, on in (("auto-delete", auto_delete), ("exclusive-owner", exclusive), ("non-durable", not durable)):
                if on:
                    raise AMQPError(PRECONDITION_FAILED, f"invalid property '{prop}' for {where}", *Method.QUEUE_DECLARE)
        seg = args.get("x-stream-max-segment-size-bytes") if self.stream else None
        if isinstance(seg, int) and seg > MAX_SEGMENT_SIZE:  # (rabbit_stream_queue:declare)
            raise AMQPError(PRECONDITION_FAILED, "Exceeded max value for x-stream-max-segment-size-bytes", *Method.QUEUE_DECLARE)

    def check_server_named(self) -> None:
        """A server-named queue (declared with the name ""): classic queues only."""
        if self.durable_only:
            raise AMQPError(PRECONDITION_FAILED, f"Cannot declare a server-named queue for type {self.module}", *Method.QUEUE_DECLARE)

    def check_consume(self, global_prefetch: int, where: str) -> None:
        """basic.consume on a channel with a global prefetch limit: 540 (connection)."""
        if global_prefetch and not self.global_qos:
            raise AMQPError(NOT_IMPLEMENTED, f"{where} does not support global qos", *Method.BASIC_CONSUME)

    def check_op(self, op: str, where: str) -> None:
        """basic.get / queue.purge on a stream: 540 (connection)."""
        if self.stream:
            raise AMQPError(NOT_IMPLEMENTED, f"{op} not supported by stream queues {where}", *_OP_IDS[op])

    def check_reject(self, where: str) -> None:
        """basic.nack / basic.reject of a stream's delivery: 540 (connection)."""
        if self.stream:
            raise AMQPError(NOT_IMPLEMENTED, f"basic.nack and basic.reject not supported by stream queues {where}", *Method.BASIC_NACK)

    def check_delete(self, if_unused: bool, if_empty: bool, where: str) -> None:
        """queue.delete with if-unused / if-empty: 540 (connection) where unsupported."""
        if self.delete_flags:
            return
        for flag, on in (("if-unused", if_unused), ("if-empty", if_empty)):
            if on:
                raise AMQPError(
                    NOT_IMPLEMENTED,
                    f"cannot delete {where}. queue.delete operations with {flag} flag set are not supported by quorum queues",
                    *Method.QUEUE_DELETE,
                )


#: RabbitMQ's ?MAX_STREAM_MAX_SEGMENT_SIZE
MAX_SEGMENT_SIZE = 3_000_000_000

_OP_IDS = {"basic.get": (60, 70), "queue.purge": (50, 30)}

CLASSIC = QueueType("classic", "rabbit_classic_queue", None)
QUORUM = QueueType(
    "quorum",
    "rabbit_quorum_queue",
    frozenset(
        {
            "x-expires",
            "x-message-ttl",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-max-length",
            "x-max-length-bytes",
            "x-max-in-memory-length",
            "x-max-in-memory-bytes",
            "x-overflow",
            "x-single-active-consumer",
            "x-queue-type",
            "x-quorum-initial-group-size",
            "x-delivery-limit",
            "x-dead-letter-strategy",
            "x-queue-leader-locator",
        }
    ),
    equivalent=(
        "x-delivery-limit",
        "x-dead-letter-strategy",
        "x-max-in-memory-length",
        "x-max-in-memory-bytes",
        "x-quorum-initial-group-size",
        "x-queue-leader-locator",
    ),
    durable_only=True,
    global_qos=False,
    delete_flags=False,
)
STREAM = QueueType(
    "stream",
    "rabbit_stream_queue",
    frozenset(
        {
            "x-queue-type",
            "x-max-length-bytes",
            "x-max-age",
            "x-stream-max-segment-size-bytes",
            "x-initial-cluster-size",
            "x-queue-leader-locator",
        }
    ),
    equivalent=("x-max-age", "x-stream-max-segment-size-bytes"),
    durable_only=True,
    global_qos=False,
    stream=True,
)
TYPES = {t.name: t for t in (CLASSIC, QUORUM, STREAM)}


def queue_type(args: dict[str, Any], name: str, vhost: str) -> QueueType:
    """The type a declaration asks for (``x-queue-type``, classic without it); 406 for
    one RabbitMQ does not have."""
    v = args.get("x-queue-type")
    if v is None:
        return CLASSIC
    qt = TYPES.get(_text(v))
    if qt is None:
        raise AMQPError(
            PRECONDITION_FAILED,
            f"invalid arg 'x-queue-type' for {rs('queue', name, vhost)}: \"unsupported queue type '{_text(v)}'\"",
            *Method.QUEUE_DECLARE,
        )
    return qt
