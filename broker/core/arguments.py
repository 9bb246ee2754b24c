"""x-arguments: RabbitMQ's validation of queue arguments and its equivalence checks,
with its reply texts (406 PRECONDITION_FAILED)."""

from __future__ import annotations

import logging
from typing import Any

from leveret.broker.core.errors import AMQPError, rs
from leveret.broker.core.exchange import freeze
from leveret.broker.core.policy import _MAX_AGE
from leveret.broker.core.queuetype import CLASSIC, TYPES, QueueType, queue_type
from leveret.protocol.constants import PRECONDITION_FAILED, Method

log = logging.getLogger("leveret.vhost")


def bool_text(v: bool) -> str:
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


def arg_text(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        v = "true" if v else "false"
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return f"the value '{v}' of type '{amqp_type_name(v) if not isinstance(v, str) else 'longstr'}'"


def val_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def validate_queue_arguments(
    args: dict[str, Any], name: str, vhost: str, *, durable: bool, exclusive: bool, auto_delete: bool
) -> None:
    """RabbitMQ's x-argument validation for queue.declare (406 with its texts): the
    values of the arguments the queue's type accepts, then the type's own rules
    (:meth:`QueueType.check_declare`: the arguments it refuses, durability)."""
    where = rs("queue", name, vhost)
    qtype = TYPES.get(val_text(args["x-queue-type"]), CLASSIC) if "x-queue-type" in args else CLASSIC
    all_args = args
    if qtype.supported is not None:
        # an argument the type refuses is refused as such, whatever its value
        args = {k: v for k, v in args.items() if not qtype.unsupported(k)}

    def bad(arg: str, why: str) -> AMQPError:
        return AMQPError(PRECONDITION_FAILED, f"invalid arg '{arg}' for {where}: {why}", *Method.QUEUE_DECLARE)

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
    if "x-overflow" in args and val_text(args["x-overflow"]) not in ("drop-head", "reject-publish", "reject-publish-dlx"):
        raise bad("x-overflow", "invalid_overflow")
    if "x-single-active-consumer" in args and not isinstance(args["x-single-active-consumer"], bool):
        raise bad("x-single-active-consumer", f"{{unacceptable_type,{amqp_type_name(args['x-single-active-consumer'])}}}")
    for arg in ("x-dead-letter-exchange", "x-dead-letter-routing-key"):
        if arg in args and not isinstance(args[arg], str | bytes):
            raise AMQPError(
                PRECONDITION_FAILED,
                f"invalid type '{amqp_type_name(args[arg])}' for arg '{arg}' in {where}",
                *Method.QUEUE_DECLARE,
            )
    if "x-dead-letter-routing-key" in args and "x-dead-letter-exchange" not in args:
        raise bad("x-dead-letter-routing-key", "routing_key_but_no_dlx_defined")
    if qtype.supported is not None:  # (quorum's own arguments; classic takes them unchecked)
        integer("x-max-in-memory-length")
        integer("x-max-in-memory-bytes")
        integer("x-quorum-initial-group-size", zero_ok=False)
        if "x-queue-leader-locator" in args:
            v = args["x-queue-leader-locator"]
            if not isinstance(v, str | bytes):
                raise bad("x-queue-leader-locator", f"{{unacceptable_type,{amqp_type_name(v)}}}")
            if val_text(v) not in ("client-local", "balanced", "random", "least-leaders"):
                raise bad("x-queue-leader-locator", "invalid_queue_locator_arg")
        if "x-dead-letter-strategy" in args:
            v = args["x-dead-letter-strategy"]
            if not isinstance(v, str | bytes):
                raise bad("x-dead-letter-strategy", f"{{unacceptable_type,{amqp_type_name(v)}}}")
            if val_text(v) not in ("at-most-once", "at-least-once"):
                raise bad("x-dead-letter-strategy", "invalid_dlx_strategy")
        integer("x-stream-max-segment-size-bytes")
        integer("x-initial-cluster-size", zero_ok=False)
        if "x-max-age" in args:
            v = args["x-max-age"]
            if not isinstance(v, str | bytes):
                raise bad("x-max-age", f"{{unacceptable_type,{amqp_type_name(v)}}}")
            if not _MAX_AGE.fullmatch(val_text(v)) or not int(val_text(v)[:-1]):
                raise bad("x-max-age", "invalid_max_age")
    queue_type(args, name, vhost).check_declare(all_args, name, vhost, durable, exclusive, auto_delete)


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


def check_equivalent(
    where: str, checks: tuple[tuple[str, bool, bool], ...]
) -> None:
    """406 ``inequivalent arg`` for the first boolean property that differs."""
    for arg, new, cur in checks:
        if new != cur:
            raise AMQPError(
                PRECONDITION_FAILED,
                f"inequivalent arg '{arg}' for {where}: received '{bool_text(new)}' but current is '{bool_text(cur)}'",
            )


def check_equivalent_queue_arguments(
    where: str, new: dict[str, Any], cur: dict[str, Any], qtype: QueueType = CLASSIC
) -> None:
    """RabbitMQ's equivalence check of a redeclared queue's x-arguments (and those its
    type adds, ``QueueType.equivalent``)."""
    for arg in (*QUEUE_EQUIV_ARGS, *qtype.equivalent) if qtype.equivalent else QUEUE_EQUIV_ARGS:
        new_v, cur_v = new.get(arg), cur.get(arg)
        if freeze(new_v) != freeze(cur_v):
            if isinstance(new_v, int) and isinstance(cur_v, int) and new_v == cur_v:
                continue
            if new_v is not None and cur_v is not None:
                text = f"received '{val_text(new_v)}' but current is '{val_text(cur_v)}'"
            else:
                text = f"received {arg_text(new_v)} but current is {arg_text(cur_v)}"
            raise AMQPError(PRECONDITION_FAILED, f"inequivalent arg '{arg}' for {where}: {text}")


def check_equivalent_alternate_exchange(where: str, new: dict[str, Any], cur: dict[str, Any]) -> None:
    new_ae, cur_ae = new.get("alternate-exchange"), cur.get("alternate-exchange")
    if freeze(new_ae) != freeze(cur_ae):
        raise AMQPError(
            PRECONDITION_FAILED,
            f"inequivalent arg 'alternate-exchange' for {where}: received {arg_text(new_ae)} but current is {arg_text(cur_ae)}",
        )
